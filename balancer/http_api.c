/* http_api: the balancer's HTTP endpoints on libmicrohttpd in external
 * epoll mode: routing, query validation, the JSON bodies, client reports
 * (POST /v1/reports), the admin endpoints' bearer-token check, /metrics and
 * the embedded dashboard. */
#include "http_api.h"

#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <microhttpd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <sys/socket.h>

#include "buf.h"
#include "dashboard.h"
#include "hash.h"
#include "hb_msg.h"
#include "http_guard.h"
#include "log.h"
#include "mono.h"

#define PICK_KEY_MAX 256     /* bytes in ?key= */
#define PICK_EXCLUDE_MAX 32  /* ids in ?exclude= */
#define HTTP_CONN_TIMEOUT_S 10 /* no progress at all this long closes a connection (MHD) */
/* Of the connection limit, this share (1/8) only goes to clients holding
 * none: a flood from a few addresses leaves new clients a way in. */
#define HTTP_RESERVE_DIVISOR 8
#define HTTP_CONN_MEMORY (16 * 1024) /* per connection: the request line and headers must fit */
/* GnuTLS priorities for HTTPS, the nodes' policy (shared/tls_ctx.c): TLS 1.2
 * and 1.3 only, AEAD suites with forward-secret key exchange only. */
#define HTTP_TLS_PRIORITIES                                                                    \
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:"        \
    "+CHACHA20-POLY1305:-MAC-ALL:+AEAD:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA"
#define HTTP_ALLOW "GET, HEAD"
#define HTTP_ALLOW_ADMIN "POST"
#define REPORT_PATH "/v1/reports"
#define REPORT_BODY_MAX 1024  /* a report is well under this; a larger body gets 413 */
#define REPORT_DETAIL_MAX 200 /* bytes of "detail" */
#define ADMIN_PREFIX "/v1/nodes/"
#define HTTP_LOG_PERIOD_MS 1000 /* at most one MHD warning line per period */
#define PICK_CACHE_SLOTS 64      /* /v1/pick answers kept as ready MHD responses */
#define PICK_TEXT_MAX 512        /* an id (64), an address (261), a digest (64) and the rest */

/* One /v1/pick answer ready to queue again: MHD responses are reference
 * counted and may go to many connections, so an answer whose text is the
 * same as the last one in its slot costs no allocation. The text is the
 * key, so nothing needs invalidating when a node, the epoch or the policy
 * changes: the text changes with them. */
struct pick_cache_slot {
    struct MHD_Response *resp; /* NULL = empty */
    size_t len;
    char text[PICK_TEXT_MAX];
};

struct http_api {
    struct MHD_Daemon *daemon;
    struct registry *reg;       /* borrowed */
    struct picker *picker;      /* borrowed */
    const struct hb_server *hb; /* borrowed, for the heartbeat counters */
    enum picker_policy policy;
    const char *version;        /* borrowed, static */
    struct metrics *metrics;    /* borrowed */
    const struct history *history; /* borrowed */
    bool admin_on;              /* a token is configured */
    unsigned char token_digest[32]; /* SHA-256 of the token, compared in constant time */
    char *tls_cert_pem, *tls_key_pem; /* HTTPS, or NULL; MHD reads them at start */
    uint64_t picks;             /* successful /v1/pick answers */
    uint64_t started_ms;        /* registry clock at start, for uptime_ms */
    int epoll_fd;               /* MHD's, polled by the caller */
    uint16_t port;              /* bound port */
    unsigned conn_limit;        /* connections held at most */
    unsigned per_ip_limit;      /* per client (IPv6 /64); 0: none */
    uint32_t request_ms;        /* request deadline */
    uint64_t refused_host;      /* requests refused by the Host allowlist */
    char **hosts;               /* allowed Host values, NULL-terminated; NULL: any */
    char last_error[256];       /* MHD's latest complaint, for start-up errors */
    uint64_t log_last_ms;       /* when MHD's last complaint was logged; 0 = never */
    uint64_t log_suppressed;    /* complaints not logged since */
    struct pick_cache_slot pick_cache[PICK_CACHE_SLOTS];
    struct http_guard *guard;   /* who holds connections, and request deadlines */
};

/* The guard's entry of a connection (its socket context), or NULL. */
static struct http_guard_conn *guard_conn(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? (struct http_guard_conn *)ci->socket_context : NULL;
}

/* Marks a request whose headers were seen on MHD's first call. */
static char request_seen;

/* The body of a POST /v1/reports as it arrives (the connection's con_cls). */
struct report_upload {
    char data[REPORT_BODY_MAX];
    size_t len;
    bool too_big; /* more arrived than fits: answered 413 once it is all in */
};

/* Every answer leaves through here, so each one is counted by status.
 * Drops our reference to resp. */
static enum MHD_Result queue(struct http_api *a, struct MHD_Connection *conn, unsigned status,
                             struct MHD_Response *resp)
{
    enum MHD_Result ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp); /* MHD keeps its own reference until sent */
    if (ret == MHD_YES) {
        metrics_note_http(a->metrics, status);
        http_guard_answering(a->guard, guard_conn(conn)); /* the request is in */
    }
    return ret;
}

/* Takes ownership of body. Sends it with the JSON headers; on out of memory
 * a fixed 500 body goes instead. */
static enum MHD_Result respond_json(struct http_api *a, struct MHD_Connection *conn,
                                    unsigned status, json_t *body, const char *allow)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);

    struct MHD_Response *resp = NULL;
    if (text) {
        /* A trailing newline keeps curl output readable. */
        size_t len = strlen(text);
        char *nl = realloc(text, len + 2);
        if (nl) {
            text = nl;
            text[len++] = '\n';
            text[len] = '\0';
        }
        resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
        if (!resp)
            free(text); /* MHD takes the buffer only when it returns a response */
    }
    if (!resp) {
        static const char oom[] = "{\"error\":\"internal\",\"message\":\"out of memory\"}\n";
        status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        resp = MHD_create_response_from_buffer(sizeof oom - 1, (void *)oom,
                                               MHD_RESPMEM_PERSISTENT);
        if (!resp)
            return MHD_NO; /* closes the connection */
    }
    if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json") != MHD_YES ||
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store") != MHD_YES ||
        (allow && MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow) != MHD_YES)) {
        MHD_destroy_response(resp);
        return MHD_NO;
    }
    return queue(a, conn, status, resp);
}

static enum MHD_Result respond_error(struct http_api *a, struct MHD_Connection *conn,
                                     unsigned status, const char *code, const char *message,
                                     const char *allow)
{
    json_t *body = json_pack("{s:s, s:s}", "error", code, "message", message);
    return respond_json(a, conn, status, body, allow);
}

/* ---- GET /v1/pick ---- */

struct pick_query {
    const char *key; /* borrowed from the connection; NULL = none */
    char ids[PICK_EXCLUDE_MAX][HB_NODE_ID_MAX + 1];
    const char *exclude[PICK_EXCLUDE_MAX];
    size_t nexclude;
    char error[160]; /* non-empty: the query is bad */
};

/* Splits one exclude= value into ids; empty items ("a,,b", "a,") are skipped. */
static void pick_add_excludes(struct pick_query *q, const char *value, size_t len)
{
    size_t i = 0;
    while (i < len && !q->error[0]) {
        size_t start = i;
        while (i < len && value[i] != ',')
            i++;
        size_t idlen = i - start;
        i++; /* past the comma */
        if (idlen == 0)
            continue;
        if (q->nexclude == PICK_EXCLUDE_MAX) {
            snprintf(q->error, sizeof q->error, "exclude lists more than %d ids",
                     PICK_EXCLUDE_MAX);
            return;
        }
        char *id = q->ids[q->nexclude];
        if (idlen > HB_NODE_ID_MAX) {
            snprintf(q->error, sizeof q->error, "exclude: node id longer than %d bytes",
                     HB_NODE_ID_MAX);
            return;
        }
        memcpy(id, value + start, idlen);
        id[idlen] = '\0';
        if (!hb_node_id_valid(id)) {
            snprintf(q->error, sizeof q->error,
                     "exclude: node ids match [A-Za-z0-9._-]{1,64}");
            return;
        }
        q->exclude[q->nexclude] = id;
        q->nexclude++;
    }
}

static enum MHD_Result pick_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                size_t key_size, const char *value, size_t value_size)
{
    (void)kind;
    (void)key_size;
    struct pick_query *q = cls;
    /* MHD has already percent-decoded; a decoded NUL would cut the text short. */
    if (value && strlen(value) != value_size) {
        snprintf(q->error, sizeof q->error, "query value holds a NUL byte");
        return MHD_NO;
    }
    if (strcmp(key, "key") == 0) {
        if (q->key)
            snprintf(q->error, sizeof q->error, "key given more than once");
        else if (!value || value_size == 0)
            snprintf(q->error, sizeof q->error, "key must not be empty");
        else if (value_size > PICK_KEY_MAX)
            snprintf(q->error, sizeof q->error, "key longer than %d bytes", PICK_KEY_MAX);
        else
            q->key = value;
    } else if (strcmp(key, "exclude") == 0) {
        if (value)
            pick_add_excludes(q, value, value_size);
    }
    /* Other arguments (cache busters and the like) are ignored. */
    return q->error[0] ? MHD_NO : MHD_YES;
}

/* The certificate digest the node registered, for the client to check;
 * absent when the node gave none. Returns 0, or -1 on out of memory. */
static int set_cert(json_t *o, const struct registry_node *n)
{
    if (n->cert_sha256[0] == '\0')
        return 0;
    return json_object_set_new(o, "cert_sha256", json_string(n->cert_sha256));
}

/* A small fixed buffer that JSON is printed into without allocating: the
 * /v1/pick answer is built this way, not with jansson, because it is the
 * hot path (one answer per lookup). */
struct fixed_json {
    char text[PICK_TEXT_MAX];
    size_t len;
    bool overflow; /* something did not fit: the text is not to be used */
};

static void fj_mem(struct fixed_json *f, const char *s, size_t n)
{
    if (f->overflow || n >= sizeof f->text - f->len) {
        f->overflow = true;
        return;
    }
    memcpy(f->text + f->len, s, n);
    f->len += n;
    f->text[f->len] = '\0';
}

static void fj_raw(struct fixed_json *f, const char *s)
{
    fj_mem(f, s, strlen(s));
}

/* A JSON string. Ids, addresses and digests are validated printable ASCII
 * without quotes or backslashes (hb_msg), but escaping costs little and
 * keeps the answer valid whatever the registry holds: runs of plain bytes
 * are copied at once, the rest escaped one by one. */
static void fj_str(struct fixed_json *f, const char *s)
{
    fj_mem(f, "\"", 1);
    while (*s && !f->overflow) {
        size_t run = 0;
        while (s[run] && s[run] != '"' && s[run] != '\\' && (unsigned char)s[run] >= 0x20 &&
               (unsigned char)s[run] != 0x7f)
            run++;
        fj_mem(f, s, run);
        s += run;
        if (*s) {
            char esc[8];
            int n = *s == '"' || *s == '\\' ? snprintf(esc, sizeof esc, "\\%c", *s)
                                            : snprintf(esc, sizeof esc, "\\u%04x",
                                                       (unsigned)(unsigned char)*s);
            fj_mem(f, esc, (size_t)n);
            s++;
        }
    }
    fj_mem(f, "\"", 1);
}

static void fj_u64(struct fixed_json *f, uint64_t v)
{
    char num[24];
    snprintf(num, sizeof num, "%" PRIu64, v);
    fj_raw(f, num);
}

/* Sends f's text as a 200 JSON answer with the usual headers, from the
 * pick cache when its slot holds the same text. */
static enum MHD_Result respond_pick(struct http_api *a, struct MHD_Connection *conn,
                                    const struct fixed_json *f)
{
    if (f->overflow)
        return respond_json(a, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, NULL);
    uint64_t h = hash_bytes(f->text, f->len); /* the text picks the slot */
    struct pick_cache_slot *slot = &a->pick_cache[h % PICK_CACHE_SLOTS];
    if (!slot->resp || slot->len != f->len || memcmp(slot->text, f->text, f->len) != 0) {
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(f->len, (void *)f->text, MHD_RESPMEM_MUST_COPY);
        if (!resp)
            return respond_json(a, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, NULL);
        if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json") !=
                MHD_YES ||
            MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store") != MHD_YES) {
            MHD_destroy_response(resp);
            return MHD_NO;
        }
        if (slot->resp)
            MHD_destroy_response(slot->resp); /* connections still sending it hold their own */
        slot->resp = resp;
        slot->len = f->len;
        memcpy(slot->text, f->text, f->len);
    }
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, slot->resp);
    if (ret == MHD_YES)
        metrics_note_http(a->metrics, MHD_HTTP_OK);
    return ret;
}

static enum MHD_Result pick_answer(struct http_api *a, struct MHD_Connection *conn)
{
    /* On the stack and only its small fields cleared: ids[] is written
     * before it is read, and zeroing 2 KB a lookup shows in the profile. */
    struct pick_query q;
    q.key = NULL;
    q.nexclude = 0;
    q.error[0] = '\0';
    MHD_get_connection_values_n(conn, MHD_GET_ARGUMENT_KIND, pick_arg, &q);
    if (q.error[0])
        return respond_error(a, conn, MHD_HTTP_BAD_REQUEST, "bad_query", q.error, NULL);

    const struct registry_node *n = picker_pick(a->picker, a->reg, q.key, q.exclude, q.nexclude);
    if (!n)
        return respond_error(a, conn, MHD_HTTP_SERVICE_UNAVAILABLE, "no_healthy_node",
                             "no healthy node in rotation", NULL);
    registry_note_pick(a->reg, n);
    a->picks++;
    struct fixed_json f;
    f.len = 0;
    f.overflow = false;
    fj_raw(&f, "{\"id\":");
    fj_str(&f, n->id);
    fj_raw(&f, ",\"addr\":");
    fj_str(&f, n->addr);
    fj_raw(&f, ",\"epoch\":");
    fj_u64(&f, registry_epoch(a->reg));
    fj_raw(&f, ",\"policy\":");
    fj_str(&f, q.key ? "rendezvous" : picker_policy_name(a->policy));
    if (n->cert_sha256[0] != '\0') {
        fj_raw(&f, ",\"cert_sha256\":");
        fj_str(&f, n->cert_sha256);
    }
    fj_raw(&f, "}\n");
    return respond_pick(a, conn, &f);
}

static double mono_seconds(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The lookup latency covers the whole answer: query, pick and JSON. */
static enum MHD_Result serve_pick(struct http_api *a, struct MHD_Connection *conn)
{
    double t0 = mono_seconds();
    enum MHD_Result r = pick_answer(a, conn);
    metrics_note_lookup(a->metrics, mono_seconds() - t0);
    return r;
}

/* ---- GET /v1/nodes and /v1/health ---- */

static int node_cmp(const void *x, const void *y)
{
    const struct registry_node *const *a = x;
    const struct registry_node *const *b = y;
    return strcmp((*a)->id, (*b)->id);
}

/* Nodes sorted by id, so the JSON reads the same from call to call. Caller
 * frees the array (NULL with *n = 0 when empty; NULL with *n > 0 on OOM). */
static const struct registry_node **sorted_nodes(const struct registry *r, bool rotation,
                                                 size_t *n)
{
    *n = rotation ? registry_rotation_size(r) : registry_size(r);
    if (*n == 0)
        return NULL;
    const struct registry_node **v = calloc(*n, sizeof *v);
    if (!v)
        return NULL;
    for (size_t i = 0; i < *n; i++)
        v[i] = rotation ? registry_rotation_at(r, i) : registry_at(r, i);
    qsort(v, *n, sizeof *v, node_cmp);
    return v;
}

static enum MHD_Result serve_nodes(struct http_api *a, struct MHD_Connection *conn)
{
    size_t n;
    const struct registry_node **v = sorted_nodes(a->reg, true, &n);
    json_t *list = json_array();
    json_t *body = json_pack("{s:I, s:o}", "epoch", (json_int_t)registry_epoch(a->reg), "nodes",
                             list);
    bool ok = body && (n == 0 || v);
    for (size_t i = 0; ok && i < n; i++) {
        json_t *e = json_pack("{s:s, s:s, s:I, s:I}", "id", v[i]->id, "addr", v[i]->addr,
                              "sessions", (json_int_t)v[i]->sessions, "capacity",
                              (json_int_t)v[i]->capacity);
        ok = e && set_cert(e, v[i]) == 0 && json_array_append_new(list, e) == 0;
    }
    free(v);
    if (!ok) {
        json_decref(body);
        body = NULL;
    }
    return respond_json(a, conn, MHD_HTTP_OK, body, NULL);
}

static uint64_t age(uint64_t now, uint64_t then)
{
    return now > then ? now - then : 0;
}

static json_t *node_health(const struct registry *reg, const struct registry_node *n,
                           uint64_t now)
{
    json_t *workers = json_array();
    json_t *e = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:f, s:b, s:s, s:I, "
                          "s:b, s:I, s:o}",
                          "id", n->id, "addr", n->addr, "version", n->version, "state",
                          node_state_name(n->state), "state_age_ms",
                          (json_int_t)age(now, n->state_since_ms), "last_heartbeat_age_ms",
                          (json_int_t)age(now, n->last_seen_ms), "capacity",
                          (json_int_t)n->capacity, "sessions", (json_int_t)n->sessions,
                          "accepted", (json_int_t)n->accepted, "msgs_per_sec", n->msgs_per_sec,
                          "healthy", (int)n->reported_healthy, "reason", n->reason,
                          "heartbeats", (json_int_t)n->heartbeats, "admin_drained",
                          (int)n->admin_drained, "picks", (json_int_t)n->picks, "workers",
                          workers);
    json_t *balancers = json_array();
    if (!e || set_cert(e, n) != 0 || json_object_set_new(e, "balancers", balancers) != 0 ||
        json_object_set_new(e, "reporters",
                            json_integer((json_int_t)registry_reporters(reg, n))) != 0) {
        json_decref(e);
        return NULL;
    }
    if (n->forward.present) {
        const struct hb_forward *f = &n->forward;
        json_t *fo = json_pack("{s:b, s:I, s:I, s:I, s:I, s:I}", "healthy", (int)f->healthy,
                               "seq", (json_int_t)f->forwarded_seq, "lag_records",
                               (json_int_t)f->lag_records, "lag_ms", (json_int_t)f->lag_ms,
                               "errors", (json_int_t)f->errors, "duplicates",
                               (json_int_t)f->duplicates);
        if (!fo || json_object_set_new(e, "forward", fo) != 0) {
            json_decref(e);
            return NULL;
        }
    }
    for (uint32_t i = 0; i < n->nbalancers && i < HB_MAX_BALANCERS; i++) {
        json_t *b = json_pack("{s:s, s:b}", "endpoint", n->balancers[i].endpoint, "reached",
                              (int)n->balancers[i].reached);
        if (!b || json_array_append_new(balancers, b) != 0) {
            json_decref(e);
            return NULL;
        }
    }
    uint32_t nw = n->nworkers < HB_MAX_WORKERS ? n->nworkers : HB_MAX_WORKERS;
    for (uint32_t i = 0; i < nw; i++) {
        json_t *w = json_pack("{s:I, s:I, s:I}", "ticks", (json_int_t)n->workers[i].ticks,
                              "hs_ok", (json_int_t)n->workers[i].handshakes_ok, "hs_failed",
                              (json_int_t)n->workers[i].handshakes_failed);
        if (!w || json_array_append_new(workers, w) != 0) {
            json_decref(e);
            return NULL;
        }
    }
    return e;
}

static json_t *heartbeat_counters(const struct hb_server *hb)
{
    struct hb_server_stats st;
    hb_server_stats(hb, &st);
    json_t *rejected = json_object();
    json_t *o = json_pack("{s:I, s:I, s:o, s:{s:I, s:I}, s:{s:I, s:I, s:I, s:I}}", "received",
                          (json_int_t)st.received, "dropped", (json_int_t)st.dropped, "rejected",
                          rejected, "replies", "sent", (json_int_t)st.replies_sent, "dropped",
                          (json_int_t)st.replies_failed, "connections", "open",
                          (json_int_t)st.conns_open, "max", (json_int_t)st.conns_max,
                          "closed_limit", (json_int_t)st.rejected[HB_REJECT_CONN_LIMIT],
                          "closed_revoked", (json_int_t)st.refused_closed);
    for (int r = 0; o && r < HB_REJECT_COUNT; r++) {
        if (json_object_set_new(rejected, hb_reject_name((enum hb_reject)r),
                                json_integer((json_int_t)st.rejected[r])) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* Detection latency for the dashboard: counts per bucket (not cumulative,
 * the last one open-ended) and p50/p99/max over the recent window. */
static json_t *detection_json(const struct metrics *m)
{
    struct metrics_detection d;
    metrics_detection(m, &d);
    json_t *buckets = json_array();
    json_t *o = json_pack("{s:I, s:I, s:f, s:f, s:f, s:o}", "count", (json_int_t)d.count,
                          "window", (json_int_t)d.window, "p50_ms", d.p50_s * 1000.0, "p99_ms",
                          d.p99_s * 1000.0, "max_ms", d.max_s * 1000.0, "buckets", buckets);
    for (size_t i = 0; o && i <= METRICS_DETECT_BUCKETS; i++) {
        json_t *b = i < METRICS_DETECT_BUCKETS
                        ? json_pack("{s:f, s:I}", "le_ms", metrics_detect_bounds_s[i] * 1000.0,
                                    "count", (json_int_t)d.buckets[i])
                        : json_pack("{s:n, s:I}", "le_ms", "count", (json_int_t)d.buckets[i]);
        if (!b || json_array_append_new(buckets, b) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* ?state=&limit=&offset= on /v1/health: at 10,000 nodes the full list is
 * megabytes, so a caller may ask for one state and one page of it. */
#define HEALTH_LIMIT_MAX 100000

struct health_query {
    bool by_state;         /* only nodes in `state` */
    enum node_state state;
    bool limited;          /* limit given */
    size_t limit;
    size_t offset;
    char error[160];       /* non-empty: the query is bad */
};

/* A decimal in [0, max], digits only. */
static bool parse_count(const char *v, size_t max, size_t *out)
{
    if (!v || !*v || strlen(v) > 9 || strspn(v, "0123456789") != strlen(v))
        return false;
    unsigned long n = strtoul(v, NULL, 10);
    if (n > max)
        return false;
    *out = (size_t)n;
    return true;
}

static enum MHD_Result health_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
    (void)kind;
    struct health_query *q = cls;
    if (strcmp(key, "state") == 0) {
        bool found = false;
        for (int s = 0; value && s < NODE_STATE_COUNT; s++)
            if (strcmp(value, node_state_name((enum node_state)s)) == 0) {
                q->state = (enum node_state)s;
                found = true;
            }
        if (!found)
            snprintf(q->error, sizeof q->error,
                     "state must be one of joining, healthy, suspect, down, draining, "
                     "flapping, ejected");
        q->by_state = true;
    } else if (strcmp(key, "limit") == 0) {
        if (!parse_count(value, HEALTH_LIMIT_MAX, &q->limit))
            snprintf(q->error, sizeof q->error, "limit must be a whole number 0..%d",
                     HEALTH_LIMIT_MAX);
        q->limited = true;
    } else if (strcmp(key, "offset") == 0) {
        if (!parse_count(value, 999999999, &q->offset))
            snprintf(q->error, sizeof q->error, "offset must be a whole number 0..999999999");
    }
    return q->error[0] ? MHD_NO : MHD_YES;
}

/* Panic now, its bound (a silent node is held at most hold_max_ms), the
 * nodes the bound let go, and those refused by the balancer (never held). */
static json_t *panic_json(const struct registry *r, uint64_t now)
{
    bool on = registry_panic(r);
    struct registry_guard_stats g;
    registry_guard_stats(r, &g);
    return json_pack("{s:b, s:s, s:I, s:I, s:I, s:I, s:I}", "active", (int)on, "reason",
                     registry_panic_reason(r), "since_ms_ago",
                     (json_int_t)(on ? age(now, registry_panic_since(r)) : 0), "held",
                     (json_int_t)registry_panic_held(r), "hold_max_ms",
                     (json_int_t)registry_panic_hold_max(r), "expired",
                     (json_int_t)g.panic_expired, "refused", (json_int_t)g.refused);
}

/* Flap damping's settings, its floor and the holds the floor ended early. */
static json_t *flap_json(const struct registry *r)
{
    const struct registry_config *rc = registry_config(r);
    struct registry_guard_stats g;
    registry_guard_stats(r, &g);
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "count", (json_int_t)rc->flap_count,
                     "window_ms", (json_int_t)rc->flap_window_ms, "holdoff_ms",
                     (json_int_t)rc->flap_holdoff_ms, "holdoff_max_ms",
                     (json_int_t)rc->flap_holdoff_max_ms, "min_rotation_percent",
                     (json_int_t)rc->flap_min_rotation_percent, "held",
                     (json_int_t)registry_count_state(r, NODE_FLAPPING), "floor_releases",
                     (json_int_t)g.flap_floor_releases);
}

/* Client reports: the settings and what came of the reports so far. */
static json_t *reports_json(const struct registry *r)
{
    const struct registry_config *rc = registry_config(r);
    struct registry_report_stats st;
    registry_report_stats(r, &st);
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "quorum",
                     (json_int_t)rc->report_quorum, "window_ms", (json_int_t)rc->report_window_ms,
                     "eject_ms", (json_int_t)rc->report_eject_ms, "eject_max_ms",
                     (json_int_t)rc->report_eject_max_ms, "max_eject_percent",
                     (json_int_t)rc->report_max_eject_percent, "rate",
                     (json_int_t)rc->report_rate, "received", (json_int_t)st.received,
                     "unknown", (json_int_t)st.unknown, "rate_limited",
                     (json_int_t)st.rate_limited, "ejections", (json_int_t)st.ejections,
                     "capped", (json_int_t)st.capped);
}

/* The HTTP side's connection limits and what they refused. */
static json_t *http_json(const struct http_api *a)
{
    struct http_api_stats hs;
    http_api_stats(a, &hs);
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:{s:I, s:I, s:I}, s:I, s:I}", "connections",
                     (json_int_t)hs.conns_open, "max", (json_int_t)hs.conns_max,
                     "reserve", (json_int_t)(hs.conns_max / HTTP_RESERVE_DIVISOR),
                     "per_address_limit", (json_int_t)a->per_ip_limit, "request_timeout_ms",
                     (json_int_t)a->request_ms, "refused", "per_address",
                     (json_int_t)hs.refused_per_address, "reserve",
                     (json_int_t)hs.refused_reserve, "full", (json_int_t)hs.refused_full,
                     "request_timeouts", (json_int_t)hs.request_timeouts, "host_refused",
                     (json_int_t)hs.refused_host);
}

static enum MHD_Result serve_health(struct http_api *a, struct MHD_Connection *conn)
{
    const struct registry_config *rc = registry_config(a->reg);
    uint64_t now = registry_now(a->reg);
    struct health_query hq = {0};
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, health_arg, &hq);
    if (hq.error[0])
        return respond_error(a, conn, MHD_HTTP_BAD_REQUEST, "bad_query", hq.error, NULL);

    json_t *counts = json_object();
    for (int s = 0; counts && s < NODE_STATE_COUNT; s++)
        if (json_object_set_new(counts, node_state_name((enum node_state)s),
                                json_integer((json_int_t)registry_count_state(
                                    a->reg, (enum node_state)s))) != 0) {
            json_decref(counts);
            counts = NULL;
        }

    json_t *nodes = json_array();
    json_t *body = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:s, s:o, s:o, s:I, s:b, s:o, s:o}",
                             "version", a->version, "uptime_ms",
                             (json_int_t)age(now, a->started_ms), "epoch",
                             (json_int_t)registry_epoch(a->reg), "interval_ms",
                             (json_int_t)rc->interval_ms, "fall", (json_int_t)rc->fall, "rise",
                             (json_int_t)rc->rise, "policy", picker_policy_name(a->policy),
                             "counts", counts, "heartbeats", heartbeat_counters(a->hb), "picks",
                             (json_int_t)a->picks, "admin", (int)a->admin_on, "detection",
                             detection_json(a->metrics), "nodes", nodes);

    size_t n;
    const struct registry_node **v = sorted_nodes(a->reg, false, &n);
    bool ok = body && (n == 0 || v);
    /* filter in place, keeping the order */
    size_t total = 0;
    for (size_t i = 0; ok && i < n; i++)
        if (!hq.by_state || v[i]->state == hq.state)
            v[total++] = v[i];
    size_t first = hq.offset < total ? hq.offset : total;
    size_t last = hq.limited && hq.limit < total - first ? first + hq.limit : total;
    for (size_t i = first; ok && i < last; i++) {
        json_t *e = node_health(a->reg, v[i], now);
        ok = e && json_array_append_new(nodes, e) == 0;
    }
    free(v);
    ok = ok && json_object_set_new(body, "panic", panic_json(a->reg, now)) == 0 &&
         json_object_set_new(body, "reports", reports_json(a->reg)) == 0 &&
         json_object_set_new(body, "flap", flap_json(a->reg)) == 0 &&
         json_object_set_new(body, "http", http_json(a)) == 0 &&
         json_object_set_new(body, "nodes_total", json_integer((json_int_t)total)) == 0 &&
         json_object_set_new(body, "offset", json_integer((json_int_t)hq.offset)) == 0 &&
         json_object_set_new(body, "limit", hq.limited ? json_integer((json_int_t)hq.limit)
                                                       : json_null()) == 0;
    if (!ok) {
        json_decref(body);
        body = NULL;
    }
    return respond_json(a, conn, MHD_HTTP_OK, body, NULL);
}

static enum MHD_Result serve_healthz(struct http_api *a, struct MHD_Connection *conn)
{
    return respond_json(a, conn, MHD_HTTP_OK, json_pack("{s:s}", "status", "ok"), NULL);
}

/* ---- GET /v1/history ---- */

/* One character per sample: the state's initial (j, h, s, d, r for
 * draining, f for flapping, e for ejected), so 120 samples cost 120 bytes. */
static char state_letter(uint8_t s)
{
    static const char letters[NODE_STATE_COUNT] = {
        [NODE_JOINING] = 'j', [NODE_HEALTHY] = 'h', [NODE_SUSPECT] = 's',
        [NODE_DOWN] = 'd',    [NODE_DRAINING] = 'r', [NODE_FLAPPING] = 'f',
        [NODE_EJECTED] = 'e',
    };
    return s < NODE_STATE_COUNT ? letters[s] : '?';
}

static json_t *history_node_json(const struct history *h, size_t i)
{
    struct history_sample v[HISTORY_SAMPLES];
    size_t n = history_node_samples(h, i, v);
    char states[HISTORY_SAMPLES + 1];
    json_t *sessions = json_array();
    json_t *mps = json_array();
    for (size_t k = 0; k < n; k++) {
        states[k] = state_letter(v[k].state);
        if (sessions && json_array_append_new(sessions, json_integer(v[k].sessions)) != 0) {
            json_decref(sessions);
            sessions = NULL;
        }
        /* one decimal is plenty for a chart and keeps the body small */
        double r = (double)(long long)(v[k].msgs_per_sec * 10.0 + 0.5) / 10.0;
        if (mps && json_array_append_new(mps, json_real(r)) != 0) {
            json_decref(mps);
            mps = NULL;
        }
    }
    states[n] = '\0';
    return json_pack("{s:s, s:I, s:s, s:o, s:o}", "id", history_node_id(h, i), "capacity",
                     (json_int_t)history_node_capacity(h, i), "states", states, "sessions",
                     sessions, "msgs_per_sec", mps);
}

static enum MHD_Result serve_history(struct http_api *a, struct MHD_Connection *conn)
{
    const struct history *h = a->history;
    json_t *nodes = json_array();
    json_t *body = json_pack("{s:I, s:I, s:I, s:o}", "period_ms",
                             (json_int_t)history_period_ms(h), "samples",
                             (json_int_t)HISTORY_SAMPLES, "taken", (json_int_t)history_taken(h),
                             "nodes", nodes);
    bool ok = body != NULL;
    for (size_t i = 0; ok && i < history_size(h); i++) {
        json_t *e = history_node_json(h, i);
        ok = e && json_array_append_new(nodes, e) == 0;
    }
    if (!ok) {
        json_decref(body);
        body = NULL;
    }
    return respond_json(a, conn, MHD_HTTP_OK, body, NULL);
}

/* ---- GET /metrics ---- */

static enum MHD_Result serve_metrics(struct http_api *a, struct MHD_Connection *conn)
{
    struct hb_server_stats st;
    hb_server_stats(a->hb, &st);
    struct http_api_stats hs;
    http_api_stats(a, &hs);
    struct metrics_http mh = {
        .conns_open = hs.conns_open,
        .conns_max = hs.conns_max,
        .refused_per_address = hs.refused_per_address,
        .refused_reserve = hs.refused_reserve,
        .refused_full = hs.refused_full,
        .request_timeouts = hs.request_timeouts,
        .refused_host = hs.refused_host,
    };
    struct metrics_sources src = {
        .reg = a->reg,
        .hb = &st,
        .http = &mh,
        .version = a->version,
        .uptime_s = (double)age(registry_now(a->reg), a->started_ms) / 1000.0,
    };
    struct buf b;
    buf_init(&b);
    struct MHD_Response *resp = NULL;
    if (metrics_render(a->metrics, &src, &b) == 0)
        resp = MHD_create_response_from_buffer(buf_size(&b), (void *)buf_head(&b),
                                               MHD_RESPMEM_MUST_COPY);
    buf_release(&b);
    if (!resp)
        return respond_json(a, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, NULL);
    if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8") != MHD_YES ||
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store") != MHD_YES) {
        MHD_destroy_response(resp);
        return MHD_NO;
    }
    return queue(a, conn, MHD_HTTP_OK, resp);
}

/* ---- GET / : the dashboard ---- */

/* The page and its script, both from this origin: the CSP allows script
 * from here only (no inline script, so an injected <script> or handler
 * attribute does not run) and talks to this origin alone. */
static enum MHD_Result serve_static(struct http_api *a, struct MHD_Connection *conn,
                                    const unsigned char *data, size_t len, const char *type)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type) != MHD_YES ||
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache") != MHD_YES ||
        MHD_add_response_header(resp, "Content-Security-Policy",
                                "default-src 'none'; script-src 'self'; style-src "
                                "'unsafe-inline'; connect-src 'self'; img-src data:; "
                                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'") !=
            MHD_YES ||
        MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff") != MHD_YES ||
        MHD_add_response_header(resp, "Referrer-Policy", "no-referrer") != MHD_YES) {
        MHD_destroy_response(resp);
        return MHD_NO;
    }
    return queue(a, conn, MHD_HTTP_OK, resp);
}

static enum MHD_Result serve_dashboard(struct http_api *a, struct MHD_Connection *conn)
{
    return serve_static(a, conn, dashboard_html, dashboard_html_len, "text/html; charset=utf-8");
}

static enum MHD_Result serve_dashboard_js(struct http_api *a, struct MHD_Connection *conn)
{
    return serve_static(a, conn, dashboard_js, dashboard_js_len,
                        "text/javascript; charset=utf-8");
}

/* ---- POST /v1/nodes/{id}/drain|undrain ---- */

static void token_digest(const char *token, size_t len, unsigned char out[32])
{
    unsigned int n = 0;
    if (EVP_Digest(token, len, out, &n, EVP_sha256(), NULL) != 1 || n != 32)
        memset(out, 0, 32); /* never matches a real digest: admin stays closed */
}

/* True when the request carries "Authorization: Bearer <the token>". The
 * digests are compared in constant time, so neither the token's bytes nor
 * its length leak through timing. */
static bool admin_authorized(const struct http_api *a, struct MHD_Connection *conn)
{
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    h += 7;
    while (*h == ' ')
        h++;
    size_t len = strlen(h);
    while (len && h[len - 1] == ' ')
        len--;
    if (len == 0)
        return false;
    unsigned char d[32];
    token_digest(h, len, d);
    return CRYPTO_memcmp(d, a->token_digest, sizeof d) == 0;
}

enum admin_op { ADMIN_DRAIN, ADMIN_UNDRAIN };

/* Recognises /v1/nodes/{id}/drain and /undrain; copies the id (cut to the
 * buffer, which makes an over-long id unknown). */
static bool admin_path(const char *url, enum admin_op *op, char *id, size_t idlen)
{
    if (strncmp(url, ADMIN_PREFIX, strlen(ADMIN_PREFIX)) != 0)
        return false;
    const char *seg = url + strlen(ADMIN_PREFIX);
    const char *slash = strchr(seg, '/');
    if (!slash || slash == seg)
        return false;
    if (strcmp(slash, "/drain") == 0)
        *op = ADMIN_DRAIN;
    else if (strcmp(slash, "/undrain") == 0)
        *op = ADMIN_UNDRAIN;
    else
        return false;
    size_t n = (size_t)(slash - seg);
    if (n >= idlen)
        n = idlen - 1;
    memcpy(id, seg, n);
    id[n] = '\0';
    return true;
}

static enum MHD_Result serve_admin(struct http_api *a, struct MHD_Connection *conn,
                                   enum admin_op op, const char *id)
{
    if (!a->admin_on)
        return respond_error(a, conn, MHD_HTTP_FORBIDDEN, "admin_disabled",
                             "no admin token is configured (--admin-token)", NULL);
    if (!admin_authorized(a, conn)) {
        json_t *body = json_pack("{s:s, s:s}", "error", "unauthorized", "message",
                                 "admin endpoints need Authorization: Bearer <admin token>");
        char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
        json_decref(body);
        size_t len = text ? strlen(text) : 0;
        char *nl = text ? realloc(text, len + 2) : NULL; /* newline, like respond_json */
        if (nl) {
            text = nl;
            text[len++] = '\n';
            text[len] = '\0';
        }
        struct MHD_Response *resp =
            text ? MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE) : NULL;
        if (!resp) {
            free(text);
            return MHD_NO;
        }
        if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json") !=
                MHD_YES ||
            MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                    "Bearer realm=\"berth\"") != MHD_YES) {
            MHD_destroy_response(resp);
            return MHD_NO;
        }
        log_debug("admin_denied", "path_node=%s", hb_node_id_valid(id) ? id : "(invalid)");
        return queue(a, conn, MHD_HTTP_UNAUTHORIZED, resp);
    }
    enum registry_result r = REGISTRY_UNKNOWN;
    if (hb_node_id_valid(id))
        r = op == ADMIN_DRAIN ? registry_drain(a->reg, id) : registry_undrain(a->reg, id);
    if (r == REGISTRY_UNKNOWN)
        return respond_error(a, conn, MHD_HTTP_NOT_FOUND, "unknown_node", "no node with that id",
                             NULL);
    const struct registry_node *n = registry_find(a->reg, id);
    log_info(op == ADMIN_DRAIN ? "admin_drain" : "admin_undrain", "node_id=%s state=%s", n->id,
             node_state_name(n->state));
    json_t *body = json_pack("{s:s, s:s, s:b, s:s, s:I}", "id", n->id, "state",
                             node_state_name(n->state), "admin_drained", (int)n->admin_drained,
                             "reason", n->reason, "epoch", (json_int_t)registry_epoch(a->reg));
    return respond_json(a, conn, MHD_HTTP_OK, body, NULL);
}

/* ---- POST /v1/reports ---- */

/* The reporter is the connection's peer address, never anything the body
 * says: a client cannot vote twice by lying. An IPv4-mapped IPv6 address
 * counts as the IPv4 one (registry_report then counts IPv6 by /64).
 * Returns 0, or -1 when MHD has no address. */
static int reporter_of(struct MHD_Connection *conn, char *out, size_t outlen)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr)
        return -1;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        return inet_ntop(AF_INET, &in->sin_addr, out, (socklen_t)outlen) ? 0 : -1;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
            return inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], out, (socklen_t)outlen) ? 0
                                                                                           : -1;
        return inet_ntop(AF_INET6, &in6->sin6_addr, out, (socklen_t)outlen) ? 0 : -1;
    }
    return -1;
}

/* "application/json", any case, optionally followed by parameters. */
static bool is_json_type(const char *ct)
{
    static const char want[] = "application/json";
    if (!ct || strncasecmp(ct, want, sizeof want - 1) != 0)
        return false;
    char next = ct[sizeof want - 1];
    return next == '\0' || next == ';' || next == ' ';
}

static enum MHD_Result serve_report(struct http_api *a, struct MHD_Connection *conn,
                                    const struct report_upload *u)
{
    if (u->too_big)
        return respond_error(a, conn, MHD_HTTP_CONTENT_TOO_LARGE, "body_too_large",
                             "a report body is at most 1024 bytes", NULL);
    if (!is_json_type(MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                  MHD_HTTP_HEADER_CONTENT_TYPE)))
        return respond_error(a, conn, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, "bad_content_type",
                             "a report is sent as Content-Type: application/json", NULL);
    json_error_t jerr;
    json_t *doc = json_loadb(u->data, u->len, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) {
        char msg[200];
        snprintf(msg, sizeof msg, "the body is not JSON: %s", jerr.text);
        return respond_error(a, conn, MHD_HTTP_BAD_REQUEST, "bad_json", msg, NULL);
    }
    const char *bad = NULL;
    json_t *node = json_object_get(doc, "node");
    json_t *reason = json_object_get(doc, "reason");
    json_t *detail = json_object_get(doc, "detail");
    enum report_reason why = REPORT_CONNECT;
    if (!json_is_object(doc))
        bad = "the body must be a JSON object";
    else if (!json_is_string(node) || !hb_node_id_valid(json_string_value(node)))
        bad = "node must be a node id matching [A-Za-z0-9._-]{1,64}";
    else if (!json_is_string(reason) ||
             strlen(json_string_value(reason)) != json_string_length(reason) ||
             report_reason_parse(json_string_value(reason), &why) != 0)
        bad = "reason must be one of connect, tls, timeout, protocol";
    else if (detail && (!json_is_string(detail) || json_string_length(detail) > REPORT_DETAIL_MAX))
        bad = "detail must be a string of at most 200 bytes";
    if (bad) {
        json_decref(doc);
        return respond_error(a, conn, MHD_HTTP_BAD_REQUEST, "bad_report", bad, NULL);
    }
    char id[HB_NODE_ID_MAX + 1];
    snprintf(id, sizeof id, "%s", json_string_value(node));
    char clean[REPORT_DETAIL_MAX + 1] = "";
    if (detail) {
        /* for the log line only: quotes and control bytes would break it */
        const char *d = json_string_value(detail);
        size_t j = 0;
        for (size_t i = 0; d[i] && j + 1 < sizeof clean; i++) {
            unsigned char c = (unsigned char)d[i];
            clean[j++] = (c == '"' || c == '\\' || c < 0x20 || c == 0x7f) ? '?' : (char)c;
        }
        clean[j] = '\0';
    }
    json_decref(doc);

    char who[INET6_ADDRSTRLEN];
    if (reporter_of(conn, who, sizeof who) != 0)
        return respond_error(a, conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal",
                             "the connection's peer address is unknown", NULL);
    struct registry_report_outcome out = {0};
    enum registry_report_result rr = registry_report(a->reg, id, who, why, &out);
    log_debug("node_report", "node_id=%s reporter=%s reason=%s result=%d detail=\"%s\"", id,
              who, report_reason_name(why), (int)rr, clean);
    if (rr == REGISTRY_REPORT_UNKNOWN)
        return respond_error(a, conn, MHD_HTTP_NOT_FOUND, "unknown_node", "no node with that id",
                             NULL);
    if (rr == REGISTRY_REPORT_LIMITED)
        return respond_error(a, conn, MHD_HTTP_TOO_MANY_REQUESTS, "rate_limited",
                             "too many reports from this address; retry in a second", NULL);
    json_t *body = json_pack("{s:s, s:I, s:b}", "node", id, "reporters",
                             (json_int_t)out.reporters, "ejected", (int)out.ejected);
    return respond_json(a, conn, MHD_HTTP_ACCEPTED, body, NULL);
}

/* ---- routing ---- */

typedef enum MHD_Result (*route_fn)(struct http_api *a, struct MHD_Connection *conn);

static const struct route {
    const char *path;
    route_fn serve;
} routes[] = {
    {"/v1/pick", serve_pick},
    {"/v1/nodes", serve_nodes},
    {"/v1/health", serve_health},
    {"/healthz", serve_healthz},
    {"/v1/history", serve_history},
    {"/metrics", serve_metrics},
    {"/", serve_dashboard},
    {"/dashboard.js", serve_dashboard_js},
};

/* With --http-allowed-hosts: whether the request's Host is one of them
 * (without case). A page on another name that resolves to us (DNS
 * rebinding) sends its own name, so it is refused. */
static bool host_allowed(const struct http_api *a, struct MHD_Connection *conn)
{
    if (!a->hosts)
        return true;
    const char *host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    for (size_t i = 0; host && a->hosts[i]; i++)
        if (strcasecmp(host, a->hosts[i]) == 0)
            return true;
    return false;
}

static enum MHD_Result dispatch(struct http_api *a, struct MHD_Connection *conn, const char *url,
                                const char *method)
{
    enum admin_op op;
    char id[HB_NODE_ID_MAX + 2]; /* one more than an id: a longer one stays unknown */
    if (admin_path(url, &op, id, sizeof id)) {
        if (strcmp(method, MHD_HTTP_METHOD_POST) != 0)
            return respond_error(a, conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method_not_allowed",
                                 "only POST is allowed here", HTTP_ALLOW_ADMIN);
        return serve_admin(a, conn, op, id);
    }
    if (strcmp(url, REPORT_PATH) == 0) /* a POST went to on_report_upload */
        return respond_error(a, conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method_not_allowed",
                             "only POST is allowed here", HTTP_ALLOW_ADMIN);
    const struct route *route = NULL;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (strcmp(url, routes[i].path) == 0)
            route = &routes[i];
    if (!route)
        return respond_error(a, conn, MHD_HTTP_NOT_FOUND, "not_found", "no such path", NULL);
    /* MHD leaves the body out of HEAD answers itself. */
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return respond_error(a, conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method_not_allowed",
                             "only GET and HEAD are allowed here", HTTP_ALLOW);
    return route->serve(a, conn);
}

/* True when the request announces a body. */
static bool has_body(struct MHD_Connection *conn)
{
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_TRANSFER_ENCODING);
    return te != NULL || (cl != NULL && strspn(cl, "0") != strlen(cl));
}

/* True when the request announces a Content-Length above max. */
static bool length_over(struct MHD_Connection *conn, size_t max)
{
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (!cl)
        return false;
    while (*cl == '0')
        cl++;
    return strlen(cl) > 9 || strtoul(cl, NULL, 10) > max;
}

/* POST /v1/reports, the one endpoint with a body: at most REPORT_BODY_MAX
 * bytes are kept. A larger announced length is refused at once (as any
 * body elsewhere); a larger chunked body is read and dropped, then 413. */
static enum MHD_Result on_report_upload(struct http_api *a, struct MHD_Connection *conn,
                                        const char *upload_data, size_t *upload_data_size,
                                        void **con_cls)
{
    if (*con_cls == NULL) {
        if (length_over(conn, REPORT_BODY_MAX))
            return respond_error(a, conn, MHD_HTTP_CONTENT_TOO_LARGE, "body_too_large",
                                 "a report body is at most 1024 bytes", NULL);
        struct report_upload *u = calloc(1, sizeof *u);
        if (!u)
            return MHD_NO;
        *con_cls = u; /* freed in on_completed */
        return MHD_YES;
    }
    struct report_upload *u = *con_cls;
    if (*upload_data_size != 0) {
        size_t n = *upload_data_size;
        if (!u->too_big && n <= sizeof u->data - u->len) {
            memcpy(u->data + u->len, upload_data, n);
            u->len += n;
        } else {
            u->too_big = true;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    return serve_report(a, conn, u);
}

/* Only POST /v1/reports takes a body (on_report_upload). A request without
 * one is answered on MHD's second call (headers complete, empty body done),
 * which keeps the connection alive. Elsewhere a request that announces a
 * body is answered on the first call, before any of it is read: MHD then
 * refuses to read the body and closes after the answer ("queued early"),
 * so a client can never make us buffer unbounded data. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    struct http_api *a = cls;
    if (*con_cls == NULL && !host_allowed(a, conn)) {
        /* answered before any body is read: MHD closes after it */
        a->refused_host++;
        return respond_error(a, conn, 421, "host_not_allowed",
                             "this Host is not one the balancer answers for "
                             "(--http-allowed-hosts)", NULL);
    }
    if (strcmp(method, MHD_HTTP_METHOD_POST) == 0 && strcmp(url, REPORT_PATH) == 0)
        return on_report_upload(a, conn, upload_data, upload_data_size, con_cls);
    if (*con_cls == NULL && !has_body(conn)) {
        *con_cls = &request_seen;
        return MHD_YES;
    }
    if (*upload_data_size != 0)
        return MHD_NO; /* a body nobody announced: drop the connection */
    enum MHD_Result r = has_body(conn)
                            ? respond_error(a, conn, MHD_HTTP_CONTENT_TOO_LARGE, "body_too_large",
                                            "this API takes no request body", NULL)
                            : dispatch(a, conn, url, method);
    if (log_enabled(LOG_LEVEL_DEBUG)) {
        char clean[128];
        size_t j = 0;
        for (size_t i = 0; url[i] && j + 1 < sizeof clean; i++)
            clean[j++] = (url[i] == '"' || (unsigned char)url[i] < 0x20) ? '?' : url[i];
        clean[j] = '\0';
        log_debug("http_request", "method=%.16s path=\"%s\" queued=%s", method, clean,
                  r == MHD_YES ? "yes" : "no");
    }
    return r;
}

__attribute__((format(printf, 2, 0))) static void on_mhd_log(void *cls, const char *fmt,
                                                              va_list ap)
{
    struct http_api *a = cls;
    char line[256];
    vsnprintf(line, sizeof line, fmt, ap);
    for (char *p = line; *p; p++)
        if (*p == '"' || (unsigned char)*p < 0x20)
            *p = (*p == '\n') ? ' ' : '\'';
    size_t len = strlen(line);
    while (len && line[len - 1] == ' ')
        line[--len] = '\0';
    snprintf(a->last_error, sizeof a->last_error, "%s", line);

    /* Most of these are one client's bad request: at most one line a
     * second, so a misbehaving client cannot flood the log. */
    uint64_t now = mono_now_ms();
    if (a->log_last_ms != 0 && now - a->log_last_ms < HTTP_LOG_PERIOD_MS) {
        a->log_suppressed++;
        return;
    }
    log_warn("http_error", "detail=\"%s\" suppressed=%" PRIu64, line, a->log_suppressed);
    a->log_last_ms = now;
    a->log_suppressed = 0;
}

/* Frees a report's body buffer when its request ends, however it ends. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct http_api *a = cls;
    (void)toe;
    if (*con_cls != NULL && *con_cls != &request_seen)
        free(*con_cls);
    *con_cls = NULL;
    /* a keep-alive connection's next request has its own deadline */
    http_guard_request_done(a->guard, guard_conn(conn), mono_now_ms());
}

/* The text a client counts as (an IPv6 /64, an IPv4 address), "" if the
 * address is neither. */
static void client_net(const struct sockaddr *sa, char *out, size_t outlen)
{
    char text[INET6_ADDRSTRLEN] = "";
    if (sa && sa->sa_family == AF_INET)
        (void)inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, text,
                        sizeof text);
    else if (sa && sa->sa_family == AF_INET6)
        (void)inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr,
                        text, sizeof text);
    registry_client_net(text, out, outlen);
}

/* MHD's accept policy: a client over its share, or past the reserve, is
 * refused before any of its bytes are read. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    struct http_api *a = cls;
    (void)addrlen;
    char net[REGISTRY_CLIENT_NET_MAX];
    client_net(addr, net, sizeof net);
    enum http_guard_verdict v = http_guard_admit(a->guard, net);
    if (v == HTTP_GUARD_OK)
        return MHD_YES;
    log_debug("http_refused", "client=%s reason=%s", net, http_guard_verdict_name(v));
    return MHD_NO;
}

/* Every connection is in the guard from its start to its close. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct http_api *a = cls;
    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        http_guard_close(a->guard, *socket_context);
        *socket_context = NULL;
        return;
    }
    const union MHD_ConnectionInfo *ai =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const union MHD_ConnectionInfo *fi =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    char net[REGISTRY_CLIENT_NET_MAX];
    client_net(ai ? ai->client_addr : NULL, net, sizeof net);
    /* On out of memory the connection goes unguarded: MHD's own limit
     * still counts it, and its close finds no entry (NULL). */
    *socket_context =
        http_guard_open(a->guard, net, fi ? (int)fi->connect_fd : -1, conn, mono_now_ms());
}

/* A connection whose request is not in by its deadline: MHD's timeout
 * restarts on every byte, so a client trickling a header line now and then
 * would keep it for hours. Shutting the socket down makes MHD see the end
 * of the stream at once and close it the usual way. */
static void on_expired(void *ctx, int fd, void *owner)
{
    (void)ctx;
    (void)owner;
    if (fd >= 0 && shutdown(fd, SHUT_RDWR) != 0)
        log_debug("http_shutdown_failed", "fd=%d", fd);
    log_debug("http_request_timeout", "fd=%d", fd);
}

struct http_api *http_api_new(const struct http_api_config *cfg, struct registry *reg,
                              struct picker *picker, const struct hb_server *hb, char *err,
                              size_t errlen)
{
    struct http_api *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->reg = reg;
    a->picker = picker;
    a->hb = hb;
    a->policy = cfg->policy;
    a->version = cfg->version;
    a->metrics = cfg->metrics;
    a->history = cfg->history;
    if (cfg->admin_token && cfg->admin_token[0]) {
        a->admin_on = true;
        token_digest(cfg->admin_token, strlen(cfg->admin_token), a->token_digest);
    }
    a->started_ms = registry_now(reg);
    a->conn_limit = cfg->conn_limit ? cfg->conn_limit : HTTP_API_CONN_LIMIT;
    a->per_ip_limit = cfg->per_ip_limit;
    size_t nhosts = 0;
    while (cfg->allowed_hosts && cfg->allowed_hosts[nhosts])
        nhosts++;
    if (nhosts) {
        a->hosts = calloc(nhosts + 1, sizeof *a->hosts);
        for (size_t i = 0; a->hosts && i < nhosts; i++)
            if (!(a->hosts[i] = strdup(cfg->allowed_hosts[i]))) {
                snprintf(err, errlen, "out of memory");
                goto fail;
            }
        if (!a->hosts) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }
    a->request_ms = cfg->request_timeout_ms ? cfg->request_timeout_ms : HTTP_API_REQUEST_TIMEOUT_MS;

    unsigned flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
    bool tls = cfg->tls_cert_pem && cfg->tls_key_pem;
    /* Ends at the first MHD_OPTION_END: empty for plain HTTP. */
    struct MHD_OptionItem tls_opts[4] = {{MHD_OPTION_END, 0, NULL}};
    if (tls) {
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
            snprintf(err, errlen, "this libmicrohttpd was built without TLS support");
            goto fail;
        }
        a->tls_cert_pem = strdup(cfg->tls_cert_pem);
        a->tls_key_pem = strdup(cfg->tls_key_pem);
        if (!a->tls_cert_pem || !a->tls_key_pem) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        flags |= MHD_USE_TLS;
        tls_opts[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, a->tls_cert_pem};
        tls_opts[1] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, a->tls_key_pem};
        tls_opts[2] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_PRIORITIES, 0,
                                              (void *)HTTP_TLS_PRIORITIES};
    } else if (cfg->tls_cert_pem || cfg->tls_key_pem) {
        snprintf(err, errlen, "HTTPS needs both a certificate and a key");
        goto fail;
    }
    uint16_t port = 0; /* MHD listens on cfg->addr; the port only shows in its messages */
    if (cfg->addr->sa_family == AF_INET6) {
        flags |= MHD_USE_IPv6;
        port = ntohs(((const struct sockaddr_in6 *)(const void *)cfg->addr)->sin6_port);
    } else if (cfg->addr->sa_family == AF_INET) {
        port = ntohs(((const struct sockaddr_in *)(const void *)cfg->addr)->sin_port);
    } else {
        snprintf(err, errlen, "the HTTP address must be IPv4 or IPv6");
        goto fail;
    }
    /* The per-client limit is the guard's, not MHD's: MHD counts an IPv6
     * client per full address, and a host holding a /64 could take 1024 /
     * limit times as many. */
    unsigned limit = cfg->conn_limit ? cfg->conn_limit : HTTP_API_CONN_LIMIT;
    struct http_guard_config gcfg = {
        .limit = limit,
        .per_net = cfg->per_ip_limit,
        .reserve = limit / HTTP_RESERVE_DIVISOR,
        .request_ms = cfg->request_timeout_ms ? cfg->request_timeout_ms
                                              : HTTP_API_REQUEST_TIMEOUT_MS,
    };
    a->guard = http_guard_new(&gcfg);
    if (!a->guard) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    a->daemon = MHD_start_daemon(
        flags, port, on_accept, a, on_request, a, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, a,
        MHD_OPTION_SOCK_ADDR, cfg->addr, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)HTTP_CONN_TIMEOUT_S, MHD_OPTION_CONNECTION_LIMIT, limit,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_CONN_MEMORY,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, a, MHD_OPTION_NOTIFY_CONNECTION,
        on_connection, a, MHD_OPTION_ARRAY, tls_opts, MHD_OPTION_END);
    if (!a->daemon) {
        snprintf(err, errlen, "cannot start the HTTP server: %s",
                 a->last_error[0] ? a->last_error : "libmicrohttpd refused the settings");
        goto fail;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(a->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info || info->epoll_fd < 0) {
        snprintf(err, errlen, "libmicrohttpd has no epoll descriptor");
        goto fail;
    }
    a->epoll_fd = info->epoll_fd;
    info = MHD_get_daemon_info(a->daemon, MHD_DAEMON_INFO_BIND_PORT);
    a->port = info ? info->port : 0;
    return a;

fail:
    http_api_free(a);
    return NULL;
}

void http_api_free(struct http_api *a)
{
    if (!a)
        return;
    if (a->daemon)
        MHD_stop_daemon(a->daemon); /* closes every connection: the guard is empty after */
    http_guard_free(a->guard);
    for (size_t i = 0; a->hosts && a->hosts[i]; i++)
        free(a->hosts[i]);
    free(a->hosts);
    for (size_t i = 0; i < PICK_CACHE_SLOTS; i++)
        if (a->pick_cache[i].resp)
            MHD_destroy_response(a->pick_cache[i].resp);
    if (a->tls_key_pem)
        OPENSSL_cleanse(a->tls_key_pem, strlen(a->tls_key_pem));
    free(a->tls_cert_pem);
    free(a->tls_key_pem);
    free(a);
}

int http_api_fd(const struct http_api *a)
{
    return a->epoll_fd;
}

uint16_t http_api_port(const struct http_api *a)
{
    return a->port;
}

long http_api_timeout_ms(const struct http_api *a)
{
    long guard = http_guard_next_ms(a->guard, mono_now_ms());
    MHD_UNSIGNED_LONG_LONG t = 0;
    if (MHD_get_timeout(a->daemon, &t) != MHD_YES)
        return guard;
    long mhd = t > (MHD_UNSIGNED_LONG_LONG)LONG_MAX ? LONG_MAX : (long)t;
    return guard >= 0 && guard < mhd ? guard : mhd;
}

int http_api_run(struct http_api *a)
{
    int rc = MHD_run(a->daemon) == MHD_YES ? 0 : -1;
    /* shut down now, closed by MHD at its next run (the socket turns readable) */
    (void)http_guard_expire(a->guard, mono_now_ms(), on_expired, a);
    return rc;
}

void http_api_stats(const struct http_api *a, struct http_api_stats *out)
{
    struct http_guard_stats g;
    http_guard_stats(a->guard, &g);
    memset(out, 0, sizeof *out);
    out->conns_open = g.open;
    out->conns_max = a->conn_limit;
    out->refused_per_address = g.refused[HTTP_GUARD_PER_NET];
    out->refused_reserve = g.refused[HTTP_GUARD_RESERVE];
    out->refused_full = g.refused[HTTP_GUARD_FULL];
    out->request_timeouts = g.timed_out;
    out->refused_host = a->refused_host;
}
