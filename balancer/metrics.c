/* metrics: counters, fixed-bucket histograms and a fixed window of recent
 * detection samples, and their Prometheus text exposition. */
#include "metrics.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HTTP_STATUS_MIN 100
#define HTTP_STATUS_MAX 599
#define LOOKUP_BUCKETS 12

const double metrics_detect_bounds_s[METRICS_DETECT_BUCKETS] = {
    0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30,
};

static const double lookup_bounds_s[LOOKUP_BUCKETS] = {
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001,   0.0025,   0.005,   0.01,   0.025,   0.1,
};

/* A Prometheus histogram with its bounds elsewhere; counts per bucket (not
 * cumulative), the last one is +Inf. */
struct hist {
    uint64_t counts[METRICS_DETECT_BUCKETS > LOOKUP_BUCKETS ? METRICS_DETECT_BUCKETS + 1
                                                            : LOOKUP_BUCKETS + 1];
    uint64_t count;
    double sum;
};

struct metrics {
    uint64_t transitions[NODE_STATE_COUNT][NODE_STATE_COUNT]; /* [from][to] */
    uint64_t http[HTTP_STATUS_MAX - HTTP_STATUS_MIN + 1];     /* by status */
    uint64_t http_other;                                      /* statuses outside 100-599 */
    struct hist lookup;                                       /* lookup_bounds_s */
    struct hist detect;                                       /* metrics_detect_bounds_s */
    double window[METRICS_DETECT_WINDOW];                     /* recent detections, a ring */
    size_t window_next;                                       /* next slot to write */
    size_t window_len;                                        /* filled slots */
    uint64_t panics;                                          /* times panic was entered */
};

struct metrics *metrics_new(void)
{
    return calloc(1, sizeof(struct metrics));
}

void metrics_free(struct metrics *m)
{
    free(m);
}

static void hist_add(struct hist *h, const double *bounds, size_t nb, double v)
{
    size_t i = 0;
    while (i < nb && v > bounds[i])
        i++;
    h->counts[i]++;
    h->count++;
    h->sum += v;
}

void metrics_note_detection(struct metrics *m, double seconds)
{
    if (seconds < 0)
        seconds = 0;
    hist_add(&m->detect, metrics_detect_bounds_s, METRICS_DETECT_BUCKETS, seconds);
    m->window[m->window_next] = seconds;
    m->window_next = (m->window_next + 1) % METRICS_DETECT_WINDOW;
    if (m->window_len < METRICS_DETECT_WINDOW)
        m->window_len++;
}

void metrics_note_change(struct metrics *m, const struct registry_node *n, enum node_state from,
                         enum node_state to)
{
    if ((unsigned)from >= NODE_STATE_COUNT || (unsigned)to >= NODE_STATE_COUNT)
        return;
    m->transitions[from][to]++;
    /* Only silence is detection: a node that reports itself unhealthy is
     * removed the moment it says so, and one that was never in rotation
     * was never removed. */
    if (to == NODE_DOWN && (from == NODE_HEALTHY || from == NODE_SUSPECT) &&
        n->reported_healthy && n->left_rotation_ms >= n->last_seen_ms)
        metrics_note_detection(m, (double)(n->left_rotation_ms - n->last_seen_ms) / 1000.0);
}

void metrics_note_http(struct metrics *m, unsigned status)
{
    if (status >= HTTP_STATUS_MIN && status <= HTTP_STATUS_MAX)
        m->http[status - HTTP_STATUS_MIN]++;
    else
        m->http_other++;
}

void metrics_note_panic(struct metrics *m, bool entered)
{
    if (entered)
        m->panics++;
}

uint64_t metrics_panics(const struct metrics *m)
{
    return m->panics;
}

void metrics_note_lookup(struct metrics *m, double seconds)
{
    hist_add(&m->lookup, lookup_bounds_s, LOOKUP_BUCKETS, seconds < 0 ? 0 : seconds);
}

uint64_t metrics_transitions(const struct metrics *m, enum node_state from, enum node_state to)
{
    if ((unsigned)from >= NODE_STATE_COUNT || (unsigned)to >= NODE_STATE_COUNT)
        return 0;
    return m->transitions[from][to];
}

uint64_t metrics_http_count(const struct metrics *m, unsigned status)
{
    if (status < HTTP_STATUS_MIN || status > HTTP_STATUS_MAX)
        return 0;
    return m->http[status - HTTP_STATUS_MIN];
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

/* Nearest-rank percentile of sorted v[0..n), n > 0. */
static double percentile(const double *v, size_t n, unsigned pct)
{
    size_t rank = (n * pct + 99) / 100; /* ceil(n * pct / 100) */
    return v[rank ? rank - 1 : 0];
}

void metrics_detection(const struct metrics *m, struct metrics_detection *out)
{
    memset(out, 0, sizeof *out);
    out->count = m->detect.count;
    out->sum_s = m->detect.sum;
    memcpy(out->buckets, m->detect.counts, sizeof out->buckets);
    out->window = m->window_len;
    if (m->window_len == 0)
        return;
    double sorted[METRICS_DETECT_WINDOW];
    memcpy(sorted, m->window, m->window_len * sizeof sorted[0]);
    qsort(sorted, m->window_len, sizeof sorted[0], cmp_double);
    out->p50_s = percentile(sorted, m->window_len, 50);
    out->p99_s = percentile(sorted, m->window_len, 99);
    out->max_s = sorted[m->window_len - 1];
}

/* ---- exposition ---- */

/* Appends formatted text; remembers a failure so callers check once. */
struct out {
    struct buf *b;
    bool failed;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct out *o, const char *fmt, ...)
{
    if (o->failed)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(o->b, (size_t)n + 1) != 0) {
        o->failed = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf((char *)buf_tail(o->b), (size_t)n + 1, fmt, ap);
    va_end(ap);
    buf_commit(o->b, (size_t)n);
}

static void family(struct out *o, const char *name, const char *type, const char *help)
{
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value with \, " and newline escaped as the format asks. */
static void label_value(const char *in, char *out, size_t outlen)
{
    size_t j = 0;
    for (size_t i = 0; in[i] && j + 2 < outlen; i++) {
        char c = in[i];
        if (c == '\\' || c == '"' || c == '\n') {
            out[j++] = '\\';
            c = c == '\n' ? 'n' : c;
        }
        out[j++] = c;
    }
    out[j] = '\0';
}

static void hist_out(struct out *o, const char *name, const char *help, const struct hist *h,
                     const double *bounds, size_t nb)
{
    family(o, name, "histogram", help);
    uint64_t cum = 0;
    for (size_t i = 0; i < nb; i++) {
        cum += h->counts[i];
        put(o, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, bounds[i], cum);
    }
    cum += h->counts[nb];
    put(o, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n%s_sum %.9g\n%s_count %" PRIu64 "\n", name, cum,
        name, h->sum, name, h->count);
}

/* One line per node of a per-node family; value() gives the sample. */
typedef double (*node_value_fn)(const struct registry_node *n, uint64_t now);

static void per_node(struct out *o, const struct registry *reg, const char *name,
                     const char *type, const char *help, node_value_fn value)
{
    family(o, name, type, help);
    uint64_t now = registry_now(reg);
    for (size_t i = 0; i < registry_size(reg); i++) {
        const struct registry_node *n = registry_at(reg, i);
        char id[2 * HB_NODE_ID_MAX + 2];
        label_value(n->id, id, sizeof id);
        put(o, "%s{node=\"%s\"} %.17g\n", name, id, value(n, now));
    }
}

/* Like per_node, for the nodes that forward into JetStream only. */
static void per_forwarding_node(struct out *o, const struct registry *reg, const char *name,
                                const char *type, const char *help, node_value_fn value)
{
    family(o, name, type, help);
    uint64_t now = registry_now(reg);
    for (size_t i = 0; i < registry_size(reg); i++) {
        const struct registry_node *n = registry_at(reg, i);
        if (!n->forward.present)
            continue;
        char id[2 * HB_NODE_ID_MAX + 2];
        label_value(n->id, id, sizeof id);
        put(o, "%s{node=\"%s\"} %.17g\n", name, id, value(n, now));
    }
}

static double v_fwd_lag(const struct registry_node *n, uint64_t now)
{
    (void)now;
    return (double)n->forward.lag_records;
}

static double v_fwd_lag_s(const struct registry_node *n, uint64_t now)
{
    (void)now;
    return (double)n->forward.lag_ms / 1000.0;
}

static double v_fwd_errors(const struct registry_node *n, uint64_t now)
{
    (void)now;
    return (double)n->forward.errors;
}

static double v_fwd_dups(const struct registry_node *n, uint64_t now)
{
    (void)now;
    return (double)n->forward.duplicates;
}

static double v_fwd_healthy(const struct registry_node *n, uint64_t now)
{
    (void)now;
    return n->forward.healthy;
}

static double v_sessions(const struct registry_node *n, uint64_t now)
{
    (void)now;
    return n->sessions;
}

static double v_capacity(const struct registry_node *n, uint64_t now)
{
    (void)now;
    return n->capacity;
}

static double v_load(const struct registry_node *n, uint64_t now)
{
    (void)now;
    return n->capacity ? (double)n->sessions / n->capacity : 0;
}

static double v_mps(const struct registry_node *n, uint64_t now)
{
    (void)now;
    return n->msgs_per_sec;
}

static double v_accepted(const struct registry_node *n, uint64_t now)
{
    (void)now;
    return (double)n->accepted;
}

static double v_heartbeats(const struct registry_node *n, uint64_t now)
{
    (void)now;
    return (double)n->heartbeats;
}

static double v_picks(const struct registry_node *n, uint64_t now)
{
    (void)now;
    return (double)n->picks;
}

static double v_age(const struct registry_node *n, uint64_t now)
{
    return now > n->last_seen_ms ? (double)(now - n->last_seen_ms) / 1000.0 : 0;
}

static double v_rotation(const struct registry_node *n, uint64_t now)
{
    (void)now;
    return n->state == NODE_HEALTHY;
}

int metrics_render(const struct metrics *m, const struct metrics_sources *src, struct buf *out)
{
    struct out o = {out, false};
    const struct registry *reg = src->reg;
    char ver[128];
    label_value(src->version ? src->version : "", ver, sizeof ver);

    family(&o, "berth_build_info", "gauge", "Always 1; the version is a label.");
    put(&o, "berth_build_info{version=\"%s\"} 1\n", ver);
    family(&o, "berth_uptime_seconds", "gauge", "Seconds since the balancer started.");
    put(&o, "berth_uptime_seconds %.3f\n", src->uptime_s);
    family(&o, "berth_membership_epoch", "gauge",
           "Grows by one whenever the set of nodes in rotation changes.");
    put(&o, "berth_membership_epoch %" PRIu64 "\n", registry_epoch(reg));

    family(&o, "berth_nodes", "gauge", "Nodes in the registry by state.");
    for (int s = 0; s < NODE_STATE_COUNT; s++)
        put(&o, "berth_nodes{state=\"%s\"} %zu\n", node_state_name((enum node_state)s),
            registry_count_state(reg, (enum node_state)s));

    family(&o, "berth_panic", "gauge",
           "1 while the balancer keeps silent nodes in rotation (panic threshold crossed).");
    put(&o, "berth_panic %d\n", registry_panic(reg) ? 1 : 0);
    family(&o, "berth_panic_held_nodes", "gauge",
           "Silent nodes kept in rotation by panic.");
    put(&o, "berth_panic_held_nodes %zu\n", registry_panic_held(reg));
    family(&o, "berth_panics_total", "counter", "Times the balancer entered panic.");
    put(&o, "berth_panics_total %" PRIu64 "\n", m->panics);
    struct registry_guard_stats gs;
    registry_guard_stats(reg, &gs);
    family(&o, "berth_panic_hold_max_seconds", "gauge",
           "Longest time panic keeps a silent node in rotation.");
    put(&o, "berth_panic_hold_max_seconds %.3f\n", registry_panic_hold_max(reg) / 1000.0);
    family(&o, "berth_panic_hold_expired_total", "counter",
           "Silent nodes panic let go because they were silent longer than the hold bound.");
    put(&o, "berth_panic_hold_expired_total %" PRIu64 "\n", gs.panic_expired);
    family(&o, "berth_nodes_refused_total", "counter",
           "Nodes taken out of rotation because the balancer refuses their key (revoked, or "
           "their id pinned to another key).");
    put(&o, "berth_nodes_refused_total %" PRIu64 "\n", gs.refused);
    family(&o, "berth_flap_min_rotation_ratio", "gauge",
           "Share of the nodes that are up which flap holds never take the rotation below.");
    put(&o, "berth_flap_min_rotation_ratio %.2f\n",
        registry_config(reg)->flap_min_rotation_percent / 100.0);
    family(&o, "berth_flap_floor_releases_total", "counter",
           "Flapping nodes put back early so that the rotation stays at the flap floor.");
    put(&o, "berth_flap_floor_releases_total %" PRIu64 "\n", gs.flap_floor_releases);

    struct registry_report_stats rs;
    registry_report_stats(reg, &rs);
    family(&o, "berth_reports_total", "counter",
           "Client reports of an unreachable node (POST /v1/reports), by result.");
    put(&o, "berth_reports_total{result=\"accepted\"} %" PRIu64 "\n", rs.received);
    put(&o, "berth_reports_total{result=\"unknown_node\"} %" PRIu64 "\n", rs.unknown);
    put(&o, "berth_reports_total{result=\"rate_limited\"} %" PRIu64 "\n", rs.rate_limited);
    family(&o, "berth_report_ejections_total", "counter",
           "Nodes ejected because enough distinct clients reported them unreachable.");
    put(&o, "berth_report_ejections_total %" PRIu64 "\n", rs.ejections);
    family(&o, "berth_report_ejections_capped_total", "counter",
           "Ejections refused because the max-eject share was reached.");
    put(&o, "berth_report_ejections_capped_total %" PRIu64 "\n", rs.capped);

    family(&o, "berth_heartbeats_received_total", "counter",
           "Messages taken off the heartbeat socket.");
    put(&o, "berth_heartbeats_received_total %" PRIu64 "\n", src->hb->received);
    family(&o, "berth_heartbeats_dropped_total", "counter",
           "Heartbeat messages refused (every rejection reason but handshake).");
    put(&o, "berth_heartbeats_dropped_total %" PRIu64 "\n", src->hb->dropped);
    family(&o, "berth_heartbeats_rejected_total", "counter",
           "Heartbeat messages or peers refused, by reason.");
    for (int r = 0; r < HB_REJECT_COUNT; r++)
        put(&o, "berth_heartbeats_rejected_total{reason=\"%s\"} %" PRIu64 "\n",
            hb_reject_name((enum hb_reject)r), src->hb->rejected[r]);
    family(&o, "berth_heartbeat_connections", "gauge",
           "TCP connections on the heartbeat port now.");
    put(&o, "berth_heartbeat_connections %zu\n", src->hb->conns_open);
    family(&o, "berth_heartbeat_connections_max", "gauge",
           "Heartbeat connections held at most (0: no cap); more are ended at once.");
    put(&o, "berth_heartbeat_connections_max %zu\n", src->hb->conns_max);
    family(&o, "berth_heartbeat_connections_closed_total", "counter",
           "Heartbeat connections the balancer ended, by reason.");
    put(&o, "berth_heartbeat_connections_closed_total{reason=\"limit\"} %" PRIu64 "\n",
        src->hb->rejected[HB_REJECT_CONN_LIMIT]);
    put(&o, "berth_heartbeat_connections_closed_total{reason=\"key_revoked\"} %" PRIu64 "\n",
        src->hb->refused_closed);
    if (src->http) {
        const struct metrics_http *h = src->http;
        family(&o, "berth_http_connections", "gauge", "HTTP connections held now.");
        put(&o, "berth_http_connections %zu\n", h->conns_open);
        family(&o, "berth_http_connections_max", "gauge", "HTTP connections held at most.");
        put(&o, "berth_http_connections_max %u\n", h->conns_max);
        family(&o, "berth_http_connections_refused_total", "counter",
               "HTTP connections refused at accept, by reason.");
        put(&o, "berth_http_connections_refused_total{reason=\"per_address\"} %" PRIu64 "\n",
            h->refused_per_address);
        put(&o, "berth_http_connections_refused_total{reason=\"reserve\"} %" PRIu64 "\n",
            h->refused_reserve);
        put(&o, "berth_http_connections_refused_total{reason=\"full\"} %" PRIu64 "\n",
            h->refused_full);
        family(&o, "berth_http_request_timeouts_total", "counter",
               "HTTP connections closed because their request was not in by its deadline.");
        put(&o, "berth_http_request_timeouts_total %" PRIu64 "\n", h->request_timeouts);
        family(&o, "berth_http_host_refused_total", "counter",
               "HTTP requests refused because their Host is not in the allowlist.");
        put(&o, "berth_http_host_refused_total %" PRIu64 "\n", h->refused_host);
    }
    family(&o, "berth_heartbeat_replies_total", "counter",
           "ACK and REREGISTER replies, by whether the socket took them.");
    put(&o, "berth_heartbeat_replies_total{result=\"sent\"} %" PRIu64 "\n",
        src->hb->replies_sent);
    put(&o, "berth_heartbeat_replies_total{result=\"dropped\"} %" PRIu64 "\n",
        src->hb->replies_failed);

    family(&o, "berth_node_state_transitions_total", "counter",
           "Node state changes, by from and to state.");
    for (int f = 0; f < NODE_STATE_COUNT; f++)
        for (int t = 0; t < NODE_STATE_COUNT; t++)
            if (f != t)
                put(&o, "berth_node_state_transitions_total{from=\"%s\",to=\"%s\"} %" PRIu64 "\n",
                    node_state_name((enum node_state)f), node_state_name((enum node_state)t),
                    m->transitions[f][t]);

    hist_out(&o, "berth_detection_latency_seconds",
             "Time from a silent node's last heartbeat to its removal from the rotation.",
             &m->detect, metrics_detect_bounds_s, METRICS_DETECT_BUCKETS);
    hist_out(&o, "berth_lookup_duration_seconds", "Time to answer GET /v1/pick.", &m->lookup,
             lookup_bounds_s, LOOKUP_BUCKETS);

    family(&o, "berth_http_requests_total", "counter", "HTTP answers by status code.");
    bool any = false;
    for (unsigned s = HTTP_STATUS_MIN; s <= HTTP_STATUS_MAX; s++) {
        uint64_t c = m->http[s - HTTP_STATUS_MIN];
        if (c == 0)
            continue;
        put(&o, "berth_http_requests_total{code=\"%u\"} %" PRIu64 "\n", s, c);
        any = true;
    }
    if (!any) /* the family is never empty: this very request will be a 200 */
        put(&o, "berth_http_requests_total{code=\"200\"} 0\n");

    per_node(&o, reg, "berth_picks_total", "counter",
             "Times /v1/pick handed out the node.", v_picks);
    per_node(&o, reg, "berth_node_sessions", "gauge", "Open sessions the node reported.",
             v_sessions);
    per_node(&o, reg, "berth_node_capacity", "gauge", "Sessions the node is sized for.",
             v_capacity);
    per_node(&o, reg, "berth_node_load_ratio", "gauge", "Reported sessions over capacity.",
             v_load);
    per_node(&o, reg, "berth_node_messages_per_second", "gauge",
             "Messages per second the node reported.", v_mps);
    per_node(&o, reg, "berth_node_accepted_connections_total", "counter",
             "Connections the node's current process accepted.", v_accepted);
    per_node(&o, reg, "berth_node_heartbeats_total", "counter",
             "Heartbeats received from the node's current process.", v_heartbeats);
    per_node(&o, reg, "berth_node_last_heartbeat_age_seconds", "gauge",
             "Seconds since the node's last message.", v_age);
    per_node(&o, reg, "berth_node_in_rotation", "gauge", "1 when the node may be picked.",
             v_rotation);
    per_forwarding_node(&o, reg, "berth_node_forward_lag_records", "gauge",
                        "Journal records not yet in JetStream, as the node reported.", v_fwd_lag);
    per_forwarding_node(&o, reg, "berth_node_forward_lag_seconds", "gauge",
                        "Age of the oldest record not yet in JetStream.", v_fwd_lag_s);
    per_forwarding_node(&o, reg, "berth_node_forward_errors_total", "counter",
                        "Publish rounds to JetStream that failed (node process).", v_fwd_errors);
    per_forwarding_node(&o, reg, "berth_node_forward_duplicates_total", "counter",
                        "Records JetStream already had (re-sends dropped by message id).",
                        v_fwd_dups);
    per_forwarding_node(&o, reg, "berth_node_forward_healthy", "gauge",
                        "1 while JetStream takes the node's records.", v_fwd_healthy);
    return o.failed ? -1 : 0;
}
