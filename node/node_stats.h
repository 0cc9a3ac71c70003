/* node_stats: per-worker progress and load counters, written by one worker
 * thread with relaxed atomics and read by the main thread for heartbeats. */
#ifndef BERTH_NODE_STATS_H
#define BERTH_NODE_STATS_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* One per worker; cache-line aligned so workers do not share a line. */
struct node_worker_stats {
    alignas(64) atomic_uint_fast64_t ticks; /* loop iterations: the watchdog's progress signal */
    atomic_uint_fast64_t handshakes_ok;
    atomic_uint_fast64_t handshakes_failed;
    atomic_uint_fast64_t accepted;          /* connections that became sessions */
    atomic_uint_fast64_t rejected;          /* connections closed at once: over --max-connections */
    atomic_uint_fast64_t rejected_addr;     /* ... over --max-connections-per-addr */
    atomic_uint_fast64_t rejected_addr_hs;  /* ... over --max-handshakes-per-addr */
    atomic_uint_fast64_t first_byte_timeouts; /* closed with no TLS byte by --first-byte-timeout */
    atomic_uint_fast64_t memory_evictions;  /* sessions closed over --max-session-memory */
    atomic_uint_fast64_t biggest_session;   /* bytes of the worker's largest session at its last
                                             * budget scan (0: none to evict) */
    atomic_uint_fast64_t requests;          /* requests answered */
    atomic_uint_fast64_t sessions;          /* sessions alive now (a gauge) */
};

/* Node-wide: the workers' counters and the connection limit's counter. */
struct node_stats {
    unsigned nworkers;
    struct node_worker_stats *workers; /* nworkers entries, owned by whoever built this */
    atomic_uint_fast64_t connections;  /* open client sockets, node-wide (--max-connections) */
    atomic_uint_fast64_t session_memory; /* bytes of session buffers, node-wide
                                          * (--max-session-memory) */
};

/* The sum of one per-worker counter over every worker:
 * node_stats_sum(st, memory_evictions). */
static inline uint64_t node_stats_sum_at(const struct node_stats *st, size_t offset)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < st->nworkers; i++)
        n += atomic_load_explicit(
            (const atomic_uint_fast64_t *)((const char *)&st->workers[i] + offset),
            memory_order_relaxed);
    return n;
}
#define node_stats_sum(st, field) node_stats_sum_at((st), offsetof(struct node_worker_stats, field))

static inline uint64_t node_stats_sessions(const struct node_stats *st)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < st->nworkers; i++)
        n += atomic_load_explicit(&st->workers[i].sessions, memory_order_relaxed);
    return n;
}

static inline uint64_t node_stats_accepted(const struct node_stats *st)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < st->nworkers; i++)
        n += atomic_load_explicit(&st->workers[i].accepted, memory_order_relaxed);
    return n;
}

static inline uint64_t node_stats_requests(const struct node_stats *st)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < st->nworkers; i++)
        n += atomic_load_explicit(&st->workers[i].requests, memory_order_relaxed);
    return n;
}

static inline void node_stats_add(atomic_uint_fast64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static inline void node_stats_sub(atomic_uint_fast64_t *c, uint64_t n)
{
    atomic_fetch_sub_explicit(c, n, memory_order_relaxed);
}

static inline uint64_t node_stats_get(const atomic_uint_fast64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

#endif
