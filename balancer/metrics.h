/* metrics: the balancer's own counters and histograms (state transitions,
 * detection latency, lookup latency, HTTP statuses) and the Prometheus text
 * exposition of them together with the registry's and heartbeat server's
 * figures. Single-threaded; no clock of its own (callers pass times). */
#ifndef BERTH_METRICS_H
#define BERTH_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "hb_server.h"
#include "registry.h"

/* Detection latency: from a node's last heartbeat to its removal from the
 * rotation, for nodes that went down by silence. The bucket bounds are
 * shared by /metrics and the dashboard JSON. */
#define METRICS_DETECT_BUCKETS 15
extern const double metrics_detect_bounds_s[METRICS_DETECT_BUCKETS]; /* upper bounds, seconds */
/* p50/p99 are over the most recent samples, this many at most. */
#define METRICS_DETECT_WINDOW 512

struct metrics_detection {
    uint64_t count;                                   /* since start */
    double sum_s;                                     /* since start */
    uint64_t buckets[METRICS_DETECT_BUCKETS + 1];     /* per bucket (not cumulative), last is +Inf */
    size_t window;                                    /* samples behind p50/p99/max */
    double p50_s, p99_s, max_s;                       /* 0 when window == 0 */
};

struct metrics;

/* NULL on out of memory. */
struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);

/* A registry state change (call from the registry's change hook). Counts
 * the transition; a node that went down by silence from the rotation
 * (healthy or suspect, last report healthy) adds a detection sample. */
void metrics_note_change(struct metrics *m, const struct registry_node *n, enum node_state from,
                         enum node_state to);
/* Adds one detection sample directly (seconds). */
void metrics_note_detection(struct metrics *m, double seconds);
/* One HTTP answer with this status. */
void metrics_note_http(struct metrics *m, unsigned status);
/* One /v1/pick served in this many seconds. */
void metrics_note_lookup(struct metrics *m, double seconds);
/* The registry entered (true) or left panic (call from its panic hook). */
void metrics_note_panic(struct metrics *m, bool entered);
uint64_t metrics_panics(const struct metrics *m);

uint64_t metrics_transitions(const struct metrics *m, enum node_state from, enum node_state to);
uint64_t metrics_http_count(const struct metrics *m, unsigned status);
void metrics_detection(const struct metrics *m, struct metrics_detection *out);

/* The HTTP side's connection figures (http_api_stats). */
struct metrics_http {
    size_t conns_open;
    unsigned conns_max;
    uint64_t refused_per_address, refused_reserve, refused_full;
    uint64_t request_timeouts;
    uint64_t refused_host;
};

/* What the exposition needs besides the metrics' own figures. */
struct metrics_sources {
    const struct registry *reg;
    const struct hb_server_stats *hb;
    const struct metrics_http *http; /* NULL: left out */
    const char *version;
    double uptime_s;
};

/* Appends the whole Prometheus text exposition (format 0.0.4) to out.
 * 0, or -1 on out of memory (out then holds a partial text). */
int metrics_render(const struct metrics *m, const struct metrics_sources *src, struct buf *out);

#endif
