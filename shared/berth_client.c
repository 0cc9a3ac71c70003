/* berth_client: the public client API (include/berth/berth.h): discovery
 * over a list of balancers with a short-lived node cache, connection with
 * retries (backoff with jitter, just-failed nodes excluded), and
 * at-least-once SEND with failover that re-sends unacknowledged messages
 * with their ids. Built on lookup (HTTP), client (session) and retry. */
#include "berth/berth.h"

#include <errno.h>
#include <stdbool.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "client.h"
#include "lookup.h"
#include "mono.h"
#include "retry.h"

#define BC_ERR_MAX 1024
#define BC_NODES_MAX 256

static const char *const berth_err_texts[] = {
    [BERTH_OK] = "success",
    [BERTH_E_INVALID] = "invalid argument",
    [BERTH_E_NOMEM] = "out of memory",
    [BERTH_E_SETUP] = "local TLS setup failed",
    [BERTH_E_LOOKUP] = "no balancer answered",
    [BERTH_E_NO_NODE] = "no node in rotation",
    [BERTH_E_CONNECT] = "no node could be reached",
    [BERTH_E_NODE] = "the node failed and the retries are spent",
    [BERTH_E_TOO_LARGE] = "message above the node's limit",
};

const char *berth_strerror(berth_err e)
{
    return (unsigned)e < BERTH_E_COUNT ? berth_err_texts[e] : "unknown error";
}

void berth_options_init(struct berth_options *o)
{
    static const char *const def_balancers[] = {"http://127.0.0.1:8080"};
    memset(o, 0, sizeof(*o));
    o->balancers = def_balancers;
    o->nbalancers = 1;
    o->name = "libberth";
    o->timeout_ms = 5000;
    o->max_retries = 5;
    o->backoff_base_ms = 50;
    o->backoff_max_ms = 2000;
    o->cache_ttl_ms = 1000;
    o->exclude_ms = 5000;
    o->no_reports = 0;
}

/* A message kept until its ACK. */
struct bc_msg {
    uint64_t id;
    uint8_t *data;
    size_t len;
};

struct bc_node {
    char id[LOOKUP_ID_MAX + 1];
    char addr[LOOKUP_ADDR_MAX + 1];
    char cert_sha256[65]; /* the registered certificate digest, or "" */
    bool cached;          /* chosen from the cached list: no balancer answered */
};

struct berth_client {
    struct berth_options o;         /* strings below are our copies */
    char *node, *ca_file, *name, *key, *cert_file, *key_file;
    struct lookup **lookups;        /* one per balancer URL */
    size_t nlookups;
    size_t good_lookup;             /* the balancer that answered last */
    struct bc_node nodes[BC_NODES_MAX]; /* cached /v1/nodes */
    size_t nnodes;
    uint64_t nodes_at_ms;           /* when fetched; 0 = never */
    uint64_t epoch;                 /* the balancers' membership epoch seen last */
    uint64_t nodes_epoch;           /* the epoch the cached node list was taken at */
    struct retry_exclude excluded;  /* nodes that just failed */
    struct client *s;               /* the session, or NULL */
    struct bc_msg ring[CLIENT_WINDOW_MAX]; /* unacknowledged, oldest at head */
    size_t head, count;
    unsigned episode;               /* failovers since the last ACK */
    unsigned long failovers;
    unsigned int seed;              /* for jitter */
    berth_ack_handler ack_handler;
    void *ack_arg;
    berth_notice_handler notice_fn;
    void *notice_arg;
    char err[BC_ERR_MAX];
    char cause[BC_ERR_MAX];         /* why the last session broke, "" if none */
};

static void bc_errf(berth_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void bc_errf(berth_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
}

static char *bc_dup(const char *s, int *fail)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *fail = 1;
    return d;
}

berth_err berth_client_new(const struct berth_options *o, berth_client **out)
{
    if (!out)
        return BERTH_E_INVALID;
    *out = NULL;
    if (!o || o->timeout_ms <= 0 || (!o->node && (!o->balancers || o->nbalancers == 0)))
        return BERTH_E_INVALID;
    size_t nl = o->name ? strlen(o->name) : 0;
    if (nl == 0 || nl > 64 || o->backoff_base_ms < 0 || o->backoff_max_ms < 0 ||
        o->cache_ttl_ms < 0 || o->exclude_ms < 0)
        return BERTH_E_INVALID;
    char e[512];
    if (lookup_global_init(e, sizeof(e)) != 0)
        return BERTH_E_SETUP;
    berth_client *c = calloc(1, sizeof(*c));
    if (!c)
        return BERTH_E_NOMEM;
    c->o = *o;
    int fail = 0;
    c->node = bc_dup(o->node && *o->node ? o->node : NULL, &fail);
    c->ca_file = bc_dup(o->ca_file, &fail);
    c->name = bc_dup(o->name, &fail);
    c->key = bc_dup(o->key && *o->key ? o->key : NULL, &fail);
    c->cert_file = bc_dup(o->cert_file && *o->cert_file ? o->cert_file : NULL, &fail);
    c->key_file = bc_dup(o->key_file && *o->key_file ? o->key_file : NULL, &fail);
    c->o.balancers = NULL;
    c->o.node = c->o.ca_file = c->o.name = c->o.key = NULL; /* use the copies */
    c->o.cert_file = c->o.key_file = NULL;
    retry_exclude_init(&c->excluded);
    c->seed = (unsigned)(mono_now_ms() ^ ((uint64_t)getpid() << 16) ^ (uintptr_t)c);
    if (fail)
        goto nomem;
    if (!c->node) {
        c->lookups = calloc(o->nbalancers, sizeof(*c->lookups));
        if (!c->lookups)
            goto nomem;
        c->nlookups = o->nbalancers;
        for (size_t i = 0; i < o->nbalancers; i++) {
            c->lookups[i] = lookup_new(o->balancers[i], o->timeout_ms, e, sizeof(e));
            /* One CA for nodes and an https balancer: a cluster's own. */
            if (c->lookups[i] && lookup_set_ca_file(c->lookups[i], c->ca_file) != 0) {
                berth_client_free(c);
                return BERTH_E_NOMEM;
            }
            if (!c->lookups[i]) {
                berth_client_free(c);
                return BERTH_E_INVALID;
            }
        }
    }
    *out = c;
    return BERTH_OK;
nomem:
    berth_client_free(c);
    return BERTH_E_NOMEM;
}

void berth_client_free(berth_client *c)
{
    if (!c)
        return;
    if (c->s) {
        if (client_in_flight(c->s) == 0)
            (void)client_bye(c->s);
        client_free(c->s);
    }
    for (size_t i = 0; i < c->count; i++)
        free(c->ring[(c->head + i) % CLIENT_WINDOW_MAX].data);
    for (size_t i = 0; i < c->nlookups; i++)
        lookup_free(c->lookups[i]);
    free(c->lookups);
    free(c->node);
    free(c->ca_file);
    free(c->name);
    free(c->key);
    free(c->cert_file);
    free(c->key_file);
    free(c);
}

const char *berth_error(const berth_client *c) { return c ? c->err : ""; }
const char *berth_node_id(const berth_client *c) { return c && c->s ? client_node_id(c->s) : ""; }
const char *berth_node_addr(const berth_client *c) { return c && c->s ? client_addr(c->s) : ""; }

size_t berth_max_message(const berth_client *c)
{
    /* A SEND body is the 8-byte message id, then the message. */
    uint32_t max = c && c->s ? client_max_payload(c->s) : 0;
    return max >= 8 ? (size_t)max - 8 : 0;
}

long berth_idle_timeout_ms(const berth_client *c)
{
    return c && c->s ? (long)client_idle_timeout_ms(c->s) : 0;
}
size_t berth_unacked(const berth_client *c) { return c ? c->count : 0; }
unsigned long berth_failovers(const berth_client *c) { return c ? c->failovers : 0; }

void berth_set_ack_handler(berth_client *c, berth_ack_handler fn, void *arg)
{
    if (!c)
        return;
    c->ack_handler = fn;
    c->ack_arg = arg;
}

void berth_set_notice_handler(berth_client *c, berth_notice_handler fn, void *arg)
{
    if (!c)
        return;
    c->notice_fn = fn;
    c->notice_arg = arg;
}

static void bc_notice(berth_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void bc_notice(berth_client *c, const char *fmt, ...)
{
    if (!c->notice_fn)
        return;
    char text[BC_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    c->notice_fn(c->notice_arg, text);
}

static void bc_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Parses a /v1/nodes answer into the cache. 0 or -1 with c->err. */
static int bc_parse_nodes(berth_client *c, const char *body)
{
    json_error_t jerr;
    json_t *root = json_loads(body, 0, &jerr);
    json_t *nodes = root ? json_object_get(root, "nodes") : NULL;
    json_t *epoch = root ? json_object_get(root, "epoch") : NULL;
    if (!json_is_array(nodes) || !json_is_integer(epoch)) {
        bc_errf(c, "bad /v1/nodes answer: no \"nodes\" array or \"epoch\"");
        json_decref(root);
        return -1;
    }
    c->nnodes = 0;
    size_t i;
    json_t *n;
    json_array_foreach(nodes, i, n) {
        const char *id = json_string_value(json_object_get(n, "id"));
        const char *addr = json_string_value(json_object_get(n, "addr"));
        json_t *cert = json_object_get(n, "cert_sha256");
        if (!id || !addr || strlen(id) > LOOKUP_ID_MAX || strlen(addr) > LOOKUP_ADDR_MAX ||
            (cert && !(json_is_string(cert) && lookup_sha256_hex_ok(json_string_value(cert)))) ||
            c->nnodes == BC_NODES_MAX)
            continue; /* a bad entry costs that node, not the lookup */
        struct bc_node *b = &c->nodes[c->nnodes++];
        memset(b, 0, sizeof(*b));
        snprintf(b->id, sizeof(b->id), "%s", id);
        snprintf(b->addr, sizeof(b->addr), "%s", addr);
        if (cert)
            snprintf(b->cert_sha256, sizeof(b->cert_sha256), "%s", json_string_value(cert));
    }
    c->epoch = c->nodes_epoch = (uint64_t)json_integer_value(epoch);
    c->nodes_at_ms = mono_now_ms();
    json_decref(root);
    return 0;
}

/* Refreshes the node cache from the first balancer that answers, starting
 * with the one that answered last. */
static berth_err bc_refresh(berth_client *c)
{
    char e[BC_ERR_MAX] = "";
    for (size_t k = 0; k < c->nlookups; k++) {
        size_t i = (c->good_lookup + k) % c->nlookups;
        char *body = NULL;
        if (lookup_get_json(c->lookups[i], "/v1/nodes", &body, e, sizeof(e)) != 0)
            continue;
        int r = bc_parse_nodes(c, body);
        free(body);
        if (r == 0) {
            c->good_lookup = i;
            return BERTH_OK;
        }
        snprintf(e, sizeof(e), "%s", c->err);
    }
    bc_errf(c, "%s", e[0] ? e : "no balancer answered");
    return BERTH_E_LOOKUP;
}

/* Asks /v1/pick (with the affinity key, if any), skipping the nodes that
 * just failed; each balancer is asked in turn, starting with the one that
 * answered last. */
static berth_err bc_pick_excluding(berth_client *c, const char *const *ex, size_t nex,
                                   struct bc_node *out)
{
    char e[BC_ERR_MAX] = "";
    bool empty = false;
    for (size_t k = 0; k < c->nlookups; k++) {
        size_t i = (c->good_lookup + k) % c->nlookups;
        struct lookup_node n;
        if (lookup_pick(c->lookups[i], c->key, ex, nex, &n, e, sizeof(e)) == 0) {
            c->good_lookup = i;
            c->epoch = n.epoch;
            memset(out, 0, sizeof(*out));
            snprintf(out->id, sizeof(out->id), "%s", n.id);
            snprintf(out->addr, sizeof(out->addr), "%s", n.addr);
            snprintf(out->cert_sha256, sizeof(out->cert_sha256), "%s", n.cert_sha256);
            return BERTH_OK;
        }
        /* lookup_pick reports the documented 503 error code in its text:
         * a balancer that answered "no node" is not a lookup failure. */
        if (strstr(e, "no_healthy_node"))
            empty = true;
    }
    bc_errf(c, "%s", e[0] ? e : "no balancer answered");
    return empty ? BERTH_E_NO_NODE : BERTH_E_LOOKUP;
}

static berth_err bc_pick(berth_client *c, struct bc_node *out)
{
    const char *ex[RETRY_EXCLUDE_MAX];
    size_t nex = retry_exclude_list(&c->excluded, mono_now_ms(), ex, RETRY_EXCLUDE_MAX);
    berth_err r = bc_pick_excluding(c, ex, nex, out);
    /* Every node in rotation failed for us a moment ago, yet the balancers
     * still hold them healthy (a restart, a blip): try them again rather
     * than give up while the nodes are there. */
    if (r == BERTH_E_NO_NODE && nex > 0)
        r = bc_pick_excluding(c, NULL, 0, out);
    return r;
}

/* Chooses a node that did not just fail. The balancer decides first, so its
 * policy (least-loaded by default, rendezvous with a key) and its freshest
 * view of load apply; the cached /v1/nodes list is kept warm beside it and
 * is used, while its TTL lasts, only when no balancer answers. */
static berth_err bc_choose(berth_client *c, struct bc_node *out)
{
    berth_err r = bc_pick(c, out);
    uint64_t now = mono_now_ms();
    /* A newer membership epoch means the cached list is out of date at once,
     * whatever its TTL says. */
    bool fresh = c->nodes_at_ms != 0 && now - c->nodes_at_ms < (uint64_t)c->o.cache_ttl_ms &&
                 c->epoch <= c->nodes_epoch;
    if (r == BERTH_OK) {
        if (!c->key && !fresh)
            (void)bc_refresh(c); /* only warms the fallback; a failure changes nothing */
        return BERTH_OK;
    }
    if (r != BERTH_E_LOOKUP || c->key)
        return r;
    if (!fresh) {
        if (c->nodes_at_ms != 0 && c->epoch <= c->nodes_epoch) {
            char e[BC_ERR_MAX];
            snprintf(e, sizeof(e), "%s", c->err);
            bc_errf(c, "%.900s; the cached node list expired %.1f s ago", e,
                    (double)(now - c->nodes_at_ms - (uint64_t)c->o.cache_ttl_ms) / 1000.0);
        }
        return r;
    }
    size_t ok[BC_NODES_MAX], nok = 0;
    for (size_t i = 0; i < c->nnodes; i++)
        if (!retry_excluded(&c->excluded, c->nodes[i].id, now))
            ok[nok++] = i;
    if (nok == 0)
        return r;
    *out = c->nodes[ok[(size_t)rand_r(&c->seed) % nok]];
    out->cached = true;
    bc_notice(c, "no balancer answers (%s); using the cached node list from %.1f s ago "
                 "(%zu nodes, good for %.1f s more)",
              c->err, (double)(now - c->nodes_at_ms) / 1000.0, c->nnodes,
              (double)((uint64_t)c->o.cache_ttl_ms - (now - c->nodes_at_ms)) / 1000.0);
    return BERTH_OK;
}

/* The largest unacknowledged message, which the next node must take. */
static size_t bc_largest_unacked(const berth_client *c)
{
    size_t max = 0;
    for (size_t i = 0; i < c->count; i++) {
        const struct bc_msg *m = &c->ring[(c->head + i) % CLIENT_WINDOW_MAX];
        if (m->len > max)
            max = m->len;
    }
    return max;
}

/* Tells the balancer that answered last that node n could not be reached,
 * so that reports from several clients can take it out of rotation while
 * its heartbeats still arrive. Best effort: a failed report is only a
 * notice, and a node from the cached list is not reported (no balancer
 * answers then). */
static void bc_report(berth_client *c, const struct bc_node *n, enum client_fail fail,
                      const char *detail)
{
    if (c->o.no_reports || n->cached || !n->id[0] || c->nlookups == 0)
        return;
    enum lookup_report_reason why =
        fail == CLIENT_FAIL_TLS ? LOOKUP_REPORT_TLS : LOOKUP_REPORT_CONNECT;
    if (strstr(detail, "timed out"))
        why = LOOKUP_REPORT_TIMEOUT;
    char e[BC_ERR_MAX];
    if (lookup_report(c->lookups[c->good_lookup], n->id, why, detail, e, sizeof(e)) != 0)
        bc_notice(c, "could not report node %s to the balancer: %s", n->id, e);
}

/* Sends every unacknowledged message on the new session. */
static int bc_resend(berth_client *c)
{
    for (size_t i = 0; i < c->count; i++) {
        struct bc_msg *m = &c->ring[(c->head + i) % CLIENT_WINDOW_MAX];
        if (client_send_start(c->s, m->id, m->data, m->len) != 0)
            return -1;
    }
    return 0;
}

/* Connects (to c->node, or a discovered node), with up to max_retries
 * further attempts after a backoff, then re-sends what is unacknowledged.
 * On failure c->err tells the last connection failure and, when the
 * lookup failed after it, that too. */
static berth_err bc_connect_any(berth_client *c)
{
    struct client_options co = {
        .ca_file = c->ca_file,
        .verify = !c->o.insecure,
        .name = c->name,
        .timeout_ms = c->o.timeout_ms,
        .cert_file = c->cert_file,
        .key_file = c->key_file,
    };
    char conn_err[BC_ERR_MAX] = ""; /* the last node that could not be reached */
    berth_err last = BERTH_E_CONNECT;
    unsigned attempt = 0;
    for (; attempt <= c->o.max_retries; attempt++) {
        if (attempt > 0)
            bc_sleep_ms(retry_delay_ms(attempt - 1, c->o.backoff_base_ms, c->o.backoff_max_ms,
                                       (uint32_t)rand_r(&c->seed)));
        struct bc_node n = {.id = ""};
        if (c->node) {
            snprintf(n.addr, sizeof(n.addr), "%s", c->node);
        } else {
            last = bc_choose(c, &n);
            if (last != BERTH_OK) {
                if (conn_err[0]) {
                    char e[BC_ERR_MAX];
                    snprintf(e, sizeof(e), "%s", c->err);
                    bc_errf(c, "%.480s; then %.480s", conn_err, e);
                }
                continue;
            }
            co.expect_id = n.id;
            co.expect_cert_sha256 = n.cert_sha256;
        }
        enum client_fail fail = CLIENT_FAIL_NONE;
        char e[BC_ERR_MAX];
        c->s = client_connect(&co, n.addr, &fail, e, sizeof(e));
        if (c->s && bc_largest_unacked(c) > client_max_payload(c->s) - 8) {
            /* Not the node's fault: it is healthy, its limit is smaller. */
            bc_errf(c, "node %s takes messages up to %u bytes; an unacknowledged one has %zu",
                    client_node_id(c->s), client_max_payload(c->s) - 8, bc_largest_unacked(c));
            client_free(c->s);
            c->s = NULL;
            return BERTH_E_TOO_LARGE;
        }
        if (c->s && bc_resend(c) == 0)
            return BERTH_OK;
        if (c->s) {
            snprintf(e, sizeof(e), "%s", client_error(c->s));
            client_free(c->s);
            c->s = NULL;
        }
        snprintf(conn_err, sizeof(conn_err), "%s", e);
        bc_errf(c, "%s", e);
        if (fail == CLIENT_FAIL_SETUP)
            return BERTH_E_SETUP;
        if (fail == CLIENT_FAIL_CONNECT || fail == CLIENT_FAIL_TLS)
            bc_report(c, &n, fail, e);
        last = BERTH_E_CONNECT;
        if (n.id[0])
            retry_exclude_add(&c->excluded, n.id, mono_now_ms(), c->o.exclude_ms);
    }
    if (last == BERTH_E_CONNECT) {
        char e[BC_ERR_MAX];
        snprintf(e, sizeof(e), "%s", c->err);
        bc_errf(c, "%.960s (gave up after %u attempts)", e, attempt);
    }
    return last;
}

/* The session failed: leave the node and connect elsewhere, unless this
 * episode has used up its retries. */
static berth_err bc_failover(berth_client *c)
{
    snprintf(c->cause, sizeof(c->cause), "%s", client_error(c->s));
    bc_errf(c, "%s", c->cause);
    const char *id = client_node_id(c->s);
    if (!c->node && id && *id)
        retry_exclude_add(&c->excluded, id, mono_now_ms(), c->o.exclude_ms);
    client_free(c->s);
    c->s = NULL;
    if (++c->episode > c->o.max_retries) {
        c->episode = 0; /* the next failure gets its own retries */
        return BERTH_E_NODE;
    }
    c->failovers++;
    bc_sleep_ms(retry_delay_ms(c->episode - 1, c->o.backoff_base_ms, c->o.backoff_max_ms,
                               (uint32_t)rand_r(&c->seed)));
    berth_err r = bc_connect_any(c);
    if (r != BERTH_OK) {
        /* Name both: the session that broke, and why no node took over. */
        char e[BC_ERR_MAX];
        snprintf(e, sizeof(e), "%s", c->err);
        bc_errf(c, "%.400s; no other node took over: %.560s", c->cause, e);
    }
    return r;
}

berth_err berth_connect(berth_client *c)
{
    if (!c)
        return BERTH_E_INVALID;
    return c->s ? BERTH_OK : bc_connect_any(c);
}

/* Waits for the oldest message's ACK, failing over as needed. */
static berth_err bc_collect(berth_client *c)
{
    for (;;) {
        if (!c->s) {
            berth_err r = bc_connect_any(c);
            if (r != BERTH_OK)
                return r;
        }
        struct frame_ack ack;
        if (client_send_finish(c->s, &ack) == 0) {
            struct bc_msg *m = &c->ring[c->head];
            if (c->ack_handler) {
                struct berth_ack a = {
                    .message_id = m->id,
                    .bytes = m->len,
                    .sha256 = ack.sha256,
                    .node_id = client_node_id(c->s),
                    .node_addr = client_addr(c->s),
                    .seq = ack.seq,
                };
                c->ack_handler(c->ack_arg, &a);
            }
            free(m->data);
            m->data = NULL;
            c->head = (c->head + 1) % CLIENT_WINDOW_MAX;
            c->count--;
            c->episode = 0;
            return BERTH_OK;
        }
        berth_err r = bc_failover(c);
        if (r != BERTH_OK)
            return r;
    }
}

berth_err berth_send(berth_client *c, uint64_t message_id, const void *data, size_t len)
{
    if (!c || (!data && len))
        return BERTH_E_INVALID;
    if (c->count == CLIENT_WINDOW_MAX) {
        berth_err r = bc_collect(c);
        if (r != BERTH_OK)
            return r;
    }
    if (!c->s) {
        berth_err r = bc_connect_any(c);
        if (r != BERTH_OK)
            return r;
    }
    if (client_max_payload(c->s) < 8 || len > client_max_payload(c->s) - 8) {
        bc_errf(c, "message %" PRIu64 " of %zu bytes is above node %s's limit of %" PRIu32
                " bytes", message_id, len, client_node_id(c->s), client_max_payload(c->s));
        return BERTH_E_TOO_LARGE;
    }
    struct bc_msg *m = &c->ring[(c->head + c->count) % CLIENT_WINDOW_MAX];
    m->data = malloc(len ? len : 1);
    if (!m->data)
        return BERTH_E_NOMEM;
    if (len)
        memcpy(m->data, data, len);
    m->id = message_id;
    m->len = len;
    c->count++;
    if (client_send_start(c->s, m->id, m->data, m->len) == 0)
        return BERTH_OK;
    /* The message is in the ring: the failover re-sends it with the rest. */
    return bc_failover(c);
}

berth_err berth_flush(berth_client *c)
{
    if (!c)
        return BERTH_E_INVALID;
    while (c->count > 0) {
        berth_err r = bc_collect(c);
        if (r != BERTH_OK)
            return r;
    }
    return BERTH_OK;
}

berth_err berth_ping(berth_client *c, double *rtt_ms)
{
    if (!c)
        return BERTH_E_INVALID;
    berth_err r = berth_flush(c);
    if (r != BERTH_OK)
        return r;
    for (;;) {
        if (!c->s && (r = bc_connect_any(c)) != BERTH_OK)
            return r;
        double rtt = 0;
        if (client_ping(c->s, &rtt) == 0) {
            if (rtt_ms)
                *rtt_ms = rtt;
            c->episode = 0;
            return BERTH_OK;
        }
        if ((r = bc_failover(c)) != BERTH_OK)
            return r;
    }
}

berth_err berth_info(berth_client *c, char **json)
{
    if (!c || !json)
        return BERTH_E_INVALID;
    *json = NULL;
    berth_err r = berth_flush(c);
    if (r != BERTH_OK)
        return r;
    for (;;) {
        if (!c->s && (r = bc_connect_any(c)) != BERTH_OK)
            return r;
        if (client_info(c->s, json) == 0) {
            c->episode = 0;
            return BERTH_OK;
        }
        if ((r = bc_failover(c)) != BERTH_OK)
            return r;
    }
}
