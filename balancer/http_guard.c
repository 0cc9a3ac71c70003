/* http_guard: the HTTP connection table of the balancer: admission by
 * client (address, IPv6 /64) with a reserve for new clients, and the
 * request deadline that a client trickling bytes cannot push back. */
#include "http_guard.h"

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NET_TEXT_MAX (INET6_ADDRSTRLEN + 4) /* "xxxx:...::/64" */

struct http_guard_conn {
    struct http_guard_conn *prev, *next; /* the table, in no order */
    char net[NET_TEXT_MAX];              /* the client, as counted */
    int fd;                              /* the caller's */
    void *owner;                         /* the caller's */
    uint64_t deadline_ms;                /* the request must be in by then; 0 = answering */
};

struct http_guard {
    struct http_guard_config cfg;
    struct http_guard_conn *head;
    uint64_t next_due_ms; /* no deadline is earlier; UINT64_MAX = none known */
    struct http_guard_stats stats;
};

static const char *const verdict_names[HTTP_GUARD_VERDICT_COUNT] = {
    [HTTP_GUARD_OK] = "ok",
    [HTTP_GUARD_FULL] = "full",
    [HTTP_GUARD_PER_NET] = "per_address",
    [HTTP_GUARD_RESERVE] = "reserve",
};

const char *http_guard_verdict_name(enum http_guard_verdict v)
{
    return (unsigned)v < HTTP_GUARD_VERDICT_COUNT ? verdict_names[v] : "unknown";
}

struct http_guard *http_guard_new(const struct http_guard_config *cfg)
{
    struct http_guard *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->cfg = *cfg;
    if (g->cfg.limit == 0)
        g->cfg.limit = 1;
    if (g->cfg.reserve >= g->cfg.limit)
        g->cfg.reserve = g->cfg.limit - 1;
    g->next_due_ms = UINT64_MAX;
    return g;
}

void http_guard_free(struct http_guard *g)
{
    if (!g)
        return;
    while (g->head) {
        struct http_guard_conn *c = g->head;
        g->head = c->next;
        free(c);
    }
    free(g);
}

/* At most limit connections: a scan costs no more than the table holds. */
static size_t held_by(const struct http_guard *g, const char *net)
{
    size_t n = 0;
    for (const struct http_guard_conn *c = g->head; c; c = c->next)
        if (strcmp(c->net, net) == 0)
            n++;
    return n;
}

enum http_guard_verdict http_guard_admit(struct http_guard *g, const char *net)
{
    size_t total = g->stats.open;
    enum http_guard_verdict v = HTTP_GUARD_OK;
    if (total >= g->cfg.limit) {
        v = HTTP_GUARD_FULL;
    } else {
        size_t mine = held_by(g, net);
        if (g->cfg.per_net && mine >= g->cfg.per_net)
            v = HTTP_GUARD_PER_NET;
        else if (mine > 0 && total >= g->cfg.limit - g->cfg.reserve)
            v = HTTP_GUARD_RESERVE;
    }
    if (v != HTTP_GUARD_OK)
        g->stats.refused[v]++;
    return v;
}

static void set_deadline(struct http_guard *g, struct http_guard_conn *c, uint64_t at)
{
    c->deadline_ms = at;
    if (at < g->next_due_ms)
        g->next_due_ms = at;
}

struct http_guard_conn *http_guard_open(struct http_guard *g, const char *net, int fd,
                                        void *owner, uint64_t now_ms)
{
    struct http_guard_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    snprintf(c->net, sizeof c->net, "%s", net ? net : "");
    c->fd = fd;
    c->owner = owner;
    c->next = g->head;
    if (g->head)
        g->head->prev = c;
    g->head = c;
    g->stats.open++;
    set_deadline(g, c, now_ms + g->cfg.request_ms);
    return c;
}

void http_guard_close(struct http_guard *g, struct http_guard_conn *c)
{
    if (!c)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        g->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    g->stats.open--;
    free(c);
}

void http_guard_answering(struct http_guard *g, struct http_guard_conn *c)
{
    (void)g;
    if (c)
        c->deadline_ms = 0; /* next_due_ms may now be early: the next expire pass corrects it */
}

void http_guard_request_done(struct http_guard *g, struct http_guard_conn *c, uint64_t now_ms)
{
    if (c)
        set_deadline(g, c, now_ms + g->cfg.request_ms);
}

size_t http_guard_expire(struct http_guard *g, uint64_t now_ms, http_guard_expired_fn fn,
                         void *ctx)
{
    if (now_ms < g->next_due_ms)
        return 0;
    size_t n = 0;
    uint64_t next = UINT64_MAX;
    for (struct http_guard_conn *c = g->head; c; c = c->next) {
        if (c->deadline_ms == 0)
            continue;
        if (c->deadline_ms <= now_ms) {
            c->deadline_ms = 0;
            g->stats.timed_out++;
            n++;
            fn(ctx, c->fd, c->owner);
        } else if (c->deadline_ms < next) {
            next = c->deadline_ms;
        }
    }
    g->next_due_ms = next;
    return n;
}

long http_guard_next_ms(const struct http_guard *g, uint64_t now_ms)
{
    if (g->next_due_ms == UINT64_MAX)
        return -1;
    return g->next_due_ms <= now_ms ? 0 : (long)(g->next_due_ms - now_ms);
}

void http_guard_stats(const struct http_guard *g, struct http_guard_stats *out)
{
    *out = g->stats;
}
