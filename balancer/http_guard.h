/* http_guard: who may hold the balancer's HTTP connections and for how
 * long: the connection table with a per-client limit (an IPv6 client
 * counted by its /64, as for reports), slots kept for clients holding none,
 * and an absolute deadline for receiving each request. Pure bookkeeping,
 * no I/O and no clock of its own (callers pass times). Single-threaded. */
#ifndef BERTH_HTTP_GUARD_H
#define BERTH_HTTP_GUARD_H

#include <stddef.h>
#include <stdint.h>

struct http_guard_config {
    unsigned limit;      /* connections in all; at least 1 */
    unsigned per_net;    /* connections one client (address, IPv6 /64) may hold; 0: no limit */
    unsigned reserve;    /* of limit, the last slots only go to clients holding none */
    uint32_t request_ms; /* from accept (or the end of the previous request) to a complete request */
};

enum http_guard_verdict {
    HTTP_GUARD_OK,
    HTTP_GUARD_FULL,    /* limit reached */
    HTTP_GUARD_PER_NET, /* the client holds per_net already */
    HTTP_GUARD_RESERVE, /* only the reserve is left, and the client holds one already */
    HTTP_GUARD_VERDICT_COUNT
};

/* "full", "per_address", "reserve" (and "ok") from one table for logs and metrics. */
const char *http_guard_verdict_name(enum http_guard_verdict v);

struct http_guard_stats {
    size_t open;                                     /* connections held now */
    uint64_t refused[HTTP_GUARD_VERDICT_COUNT];      /* admissions refused, by verdict */
    uint64_t timed_out;                              /* connections past their request deadline */
};

struct http_guard;
struct http_guard_conn;

/* NULL on out of memory. */
struct http_guard *http_guard_new(const struct http_guard_config *cfg);
/* Frees the table and every connection still in it; NULL is a no-op. */
void http_guard_free(struct http_guard *g);

/* Whether a client at net (registry_client_net's text) may open one more
 * connection now; a refusal is counted. */
enum http_guard_verdict http_guard_admit(struct http_guard *g, const char *net);
/* Takes an admitted connection in: its request deadline starts now. fd and
 * owner are the caller's, handed back by http_guard_expire. NULL on out of
 * memory (the caller should drop the connection). */
struct http_guard_conn *http_guard_open(struct http_guard *g, const char *net, int fd,
                                        void *owner, uint64_t now_ms);
/* The connection is gone; frees c. NULL is a no-op. */
void http_guard_close(struct http_guard *g, struct http_guard_conn *c);
/* The request on c is in and being answered: no receive deadline until the
 * answer is done. */
void http_guard_answering(struct http_guard *g, struct http_guard_conn *c);
/* The answer is done; the next request on c (keep-alive) must be in by
 * now + request_ms. */
void http_guard_request_done(struct http_guard *g, struct http_guard_conn *c, uint64_t now_ms);

typedef void (*http_guard_expired_fn)(void *ctx, int fd, void *owner);
/* Calls fn for every connection whose deadline passed (once: its deadline
 * is cleared; the caller ends the connection, and closes it here when it is
 * gone). fn must not call back into the guard. Returns how many. */
size_t http_guard_expire(struct http_guard *g, uint64_t now_ms, http_guard_expired_fn fn,
                         void *ctx);
/* Milliseconds until the next deadline (0 when one is due), -1 when none. */
long http_guard_next_ms(const struct http_guard *g, uint64_t now_ms);

void http_guard_stats(const struct http_guard *g, struct http_guard_stats *out);

#endif
