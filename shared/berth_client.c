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
#include <openssl/rand.h>

#include "client.h"
#include "frame.h"
#include "hb_msg.h"
#include "hex.h"
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
    [BERTH_E_IN_HANDLER] = "not allowed from inside a handler",
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

/* An ACK taken off the ring, waiting for its turn at the handler; the
 * strings are copies, so a failover meanwhile cannot pull them away. */
struct bc_ack {
    uint64_t message_id;
    size_t bytes;
    uint8_t sha256[FRAME_SHA256_LEN];
    uint64_t seq;
    char node_id[LOOKUP_ID_MAX + 1];
    char node_addr[LOOKUP_ADDR_MAX + 3];
};

/* Which handler is running now: what it may call depends on it (berth.h). */
enum bc_callout { BC_CALLOUT_NONE, BC_CALLOUT_ACK, BC_CALLOUT_NOTICE };

struct bc_node {
    char id[LOOKUP_ID_MAX + 1];
    char addr[LOOKUP_ADDR_MAX + 1];
    char cert_sha256[65]; /* the registered certificate digest, or "" */
    bool cached;          /* chosen from the cached list: no balancer answered */
};

struct berth_client {
    struct berth_options o;         /* strings below are our copies */
    char *node, *ca_file, *name, *key, *cert_file, *key_file;
    char producer[FRAME_PRODUCER_MAX + 1]; /* the option's, or random hex */
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
    struct bc_ack *acks;            /* ACKs not yet given to the handler, a FIFO ring */
    size_t acks_head, acks_count, acks_cap;
    enum bc_callout callout;        /* the handler running now */
    enum bc_callout free_refused_in; /* the handler that called berth_client_free, or NONE */
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

const char *berth_producer_id(const berth_client *c) { return c->producer; }

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
    /* The producer id rule is the node id's: one validator for both. */
    if (o->producer_id && !hb_node_id_valid(o->producer_id))
        return BERTH_E_INVALID;
    char e[512];
    if (lookup_global_init(e, sizeof(e)) != 0)
        return BERTH_E_SETUP;
    berth_client *c = calloc(1, sizeof(*c));
    if (!c)
        return BERTH_E_NOMEM;
    if (o->producer_id) {
        snprintf(c->producer, sizeof(c->producer), "%s", o->producer_id);
    } else {
        /* 128 random bits: two clients never share one. */
        uint8_t r[16];
        if (RAND_bytes(r, sizeof(r)) != 1) {
            free(c);
            return BERTH_E_SETUP;
        }
        hex_encode(c->producer, r, sizeof(r));
    }
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
    c->o.producer_id = NULL; /* c->producer */
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

/* Called from a handler, berth_client_free would pull the client from
 * under the call that runs the handler: it is refused, and that call
 * returns BERTH_E_IN_HANDLER once the handler is back (bc_leave). */
static void bc_refuse_free(berth_client *c)
{
    c->free_refused_in = c->callout;
    bc_errf(c, "berth_client_free was called from inside the %s handler and refused; "
               "the client is still open: free it after the berth_* call returns",
            c->callout == BC_CALLOUT_ACK ? "ACK" : "notice");
}

void berth_client_free(berth_client *c)
{
    if (!c)
        return;
    if (c->callout != BC_CALLOUT_NONE) {
        bc_refuse_free(c);
        return;
    }
    if (c->s) {
        if (client_in_flight(c->s) == 0)
            (void)client_bye(c->s);
        client_free(c->s);
    }
    for (size_t i = 0; i < c->count; i++)
        free(c->ring[(c->head + i) % CLIENT_WINDOW_MAX].data);
    free(c->acks);
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
    /* A notice comes from the middle of a connection attempt: the handler
     * may look, not act (every berth_* call that acts refuses). */
    enum bc_callout outer = c->callout;
    c->callout = BC_CALLOUT_NOTICE;
    c->notice_fn(c->notice_arg, text);
    c->callout = outer;
}

/* The start of every public call that acts: nothing may act from inside
 * a notice handler. BERTH_OK to go on. */
static berth_err bc_enter(berth_client *c)
{
    if (c->callout != BC_CALLOUT_NOTICE)
        return BERTH_OK;
    bc_errf(c, "berth_* calls that act are not allowed from inside the notice handler");
    return BERTH_E_IN_HANDLER;
}

/* The end of every public call that acts: once no handler runs any more, a
 * refused berth_client_free is reported (over a success; beside a failure). */
static berth_err bc_leave(berth_client *c, berth_err r)
{
    if (c->callout != BC_CALLOUT_NONE || c->free_refused_in == BC_CALLOUT_NONE)
        return r;
    const char *which = c->free_refused_in == BC_CALLOUT_ACK ? "ACK" : "notice";
    c->free_refused_in = BC_CALLOUT_NONE;
    if (r == BERTH_OK) {
        bc_errf(c, "berth_client_free was called from inside the %s handler and refused; "
                   "the client is still open: free it after the berth_* call returns", which);
        return BERTH_E_IN_HANDLER;
    }
    size_t used = strlen(c->err);
    snprintf(c->err + used, sizeof(c->err) - used,
             "; and berth_client_free from inside the %s handler was refused", which);
    return r;
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
        enum lookup_status st = lookup_pick(c->lookups[i], c->key, ex, nex, &n, e, sizeof(e));
        if (st == LOOKUP_OK) {
            c->good_lookup = i;
            c->epoch = n.epoch;
            memset(out, 0, sizeof(*out));
            snprintf(out->id, sizeof(out->id), "%s", n.id);
            snprintf(out->addr, sizeof(out->addr), "%s", n.addr);
            snprintf(out->cert_sha256, sizeof(out->cert_sha256), "%s", n.cert_sha256);
            return BERTH_OK;
        }
        /* A balancer that answered "no node" is not a lookup failure. */
        if (st == LOOKUP_E_NO_NODE)
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
    enum lookup_report_reason why = fail == CLIENT_FAIL_TLS       ? LOOKUP_REPORT_TLS
                                    : fail == CLIENT_FAIL_TIMEOUT ? LOOKUP_REPORT_TIMEOUT
                                                                  : LOOKUP_REPORT_CONNECT;
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
        .producer = c->producer,
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
        if (fail == CLIENT_FAIL_CONNECT || fail == CLIENT_FAIL_TLS || fail == CLIENT_FAIL_TIMEOUT)
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
    berth_err r = bc_enter(c);
    if (r != BERTH_OK)
        return r;
    return bc_leave(c, c->s ? BERTH_OK : bc_connect_any(c));
}

/* Room for one more ACK in the handler's queue. 0 or -1 (out of memory). */
static int bc_acks_reserve(berth_client *c)
{
    if (c->acks_count < c->acks_cap)
        return 0;
    size_t cap = c->acks_cap ? 2 * c->acks_cap : 16;
    struct bc_ack *a = malloc(cap * sizeof(*a));
    if (!a)
        return -1;
    for (size_t i = 0; i < c->acks_count; i++)
        a[i] = c->acks[(c->acks_head + i) % c->acks_cap];
    free(c->acks);
    c->acks = a;
    c->acks_cap = cap;
    c->acks_head = 0;
    return 0;
}

/* Gives the queued ACKs to the handler, oldest first, one call at a time.
 * A handler that sends or flushes collects further ACKs into the queue;
 * this loop, not a nested call, hands them over once it has returned, so
 * the handler is never re-entered and the stack does not grow with a
 * stream that is sent from the handler. */
static void bc_deliver(berth_client *c)
{
    if (c->callout != BC_CALLOUT_NONE)
        return; /* the outermost call delivers */
    while (c->acks_count > 0) {
        /* Off the queue before the call: the handler may add to it. */
        struct bc_ack a = c->acks[c->acks_head];
        c->acks_head = (c->acks_head + 1) % c->acks_cap;
        c->acks_count--;
        if (!c->ack_handler)
            continue; /* the handler was removed meanwhile */
        struct berth_ack pub = {
            .message_id = a.message_id,
            .bytes = a.bytes,
            .sha256 = a.sha256,
            .node_id = a.node_id,
            .node_addr = a.node_addr,
            .seq = a.seq,
        };
        c->callout = BC_CALLOUT_ACK;
        c->ack_handler(c->ack_arg, &pub);
        c->callout = BC_CALLOUT_NONE;
    }
}

/* Waits for the oldest message's ACK, failing over as needed, and tells
 * the handler (unless a handler is running: then the outer call does). */
static berth_err bc_collect(berth_client *c)
{
    for (;;) {
        if (!c->s) {
            berth_err r = bc_connect_any(c);
            if (r != BERTH_OK)
                return r;
        }
        if (c->ack_handler && bc_acks_reserve(c) != 0) {
            bc_errf(c, "out of memory queueing an ACK for the handler");
            return BERTH_E_NOMEM;
        }
        struct frame_ack ack;
        if (client_send_finish(c->s, &ack) == 0) {
            /* Finish the change before anyone hears of it: the message
             * leaves the ring and the counters are right before the
             * handler runs, whatever it then calls. */
            struct bc_msg m = c->ring[c->head];
            c->ring[c->head].data = NULL;
            c->head = (c->head + 1) % CLIENT_WINDOW_MAX;
            c->count--;
            c->episode = 0;
            if (c->ack_handler) {
                struct bc_ack *a = &c->acks[(c->acks_head + c->acks_count) % c->acks_cap];
                memset(a, 0, sizeof(*a));
                a->message_id = m.id;
                a->bytes = m.len;
                memcpy(a->sha256, ack.sha256, sizeof(a->sha256));
                a->seq = ack.seq;
                snprintf(a->node_id, sizeof(a->node_id), "%s", client_node_id(c->s));
                snprintf(a->node_addr, sizeof(a->node_addr), "%s", client_addr(c->s));
                c->acks_count++;
            }
            free(m.data);
            bc_deliver(c);
            return BERTH_OK;
        }
        berth_err r = bc_failover(c);
        if (r != BERTH_OK)
            return r;
    }
}

/* berth_send without the entry and exit checks. */
static berth_err bc_send(berth_client *c, uint64_t message_id, const void *data, size_t len)
{
    /* A loop, not an if: the ACK handler that bc_collect calls may take
     * the slot it freed. */
    while (c->count == CLIENT_WINDOW_MAX) {
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
    if (!m->data) {
        bc_errf(c, "out of memory copying message %" PRIu64, message_id);
        return BERTH_E_NOMEM;
    }
    if (len)
        memcpy(m->data, data, len);
    m->id = message_id;
    m->len = len;
    c->count++;
    if (client_send_start(c->s, m->id, m->data, m->len) == 0)
        return BERTH_OK;
    /* The failover re-sends the ring, this message with it. */
    berth_err r = bc_failover(c);
    if (r != BERTH_OK) {
        /* No node took it: take it back, so that an error from berth_send
         * always means "not queued" and the caller still holds it. No ACK
         * was collected meanwhile, so it is still the newest entry. */
        c->count--;
        struct bc_msg *last = &c->ring[(c->head + c->count) % CLIENT_WINDOW_MAX];
        free(last->data);
        last->data = NULL;
    }
    return r;
}

berth_err berth_send(berth_client *c, uint64_t message_id, const void *data, size_t len)
{
    if (!c || (!data && len))
        return BERTH_E_INVALID;
    berth_err r = bc_enter(c);
    if (r != BERTH_OK)
        return r;
    return bc_leave(c, bc_send(c, message_id, data, len));
}

static berth_err bc_flush(berth_client *c)
{
    while (c->count > 0) {
        berth_err r = bc_collect(c);
        if (r != BERTH_OK)
            return r;
    }
    return BERTH_OK;
}

berth_err berth_flush(berth_client *c)
{
    if (!c)
        return BERTH_E_INVALID;
    berth_err r = bc_enter(c);
    if (r != BERTH_OK)
        return r;
    return bc_leave(c, bc_flush(c));
}

static berth_err bc_ping(berth_client *c, double *rtt_ms)
{
    berth_err r = bc_flush(c);
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

berth_err berth_ping(berth_client *c, double *rtt_ms)
{
    if (!c)
        return BERTH_E_INVALID;
    berth_err r = bc_enter(c);
    if (r != BERTH_OK)
        return r;
    return bc_leave(c, bc_ping(c, rtt_ms));
}

static berth_err bc_info(berth_client *c, char **json)
{
    berth_err r = bc_flush(c);
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

berth_err berth_info(berth_client *c, char **json)
{
    if (!c || !json)
        return BERTH_E_INVALID;
    *json = NULL;
    berth_err r = bc_enter(c);
    if (r != BERTH_OK)
        return r;
    r = bc_leave(c, bc_info(c, json));
    if (r != BERTH_OK) {
        /* A refused free turns a success into an error: nothing to free then. */
        free(*json);
        *json = NULL;
    }
    return r;
}
