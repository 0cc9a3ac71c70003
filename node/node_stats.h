/* node_stats: per-worker progress and load counters, written by one worker
 * thread with relaxed atomics and read by the main thread for heartbeats. */
#ifndef BERTH_NODE_STATS_H
#define BERTH_NODE_STATS_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>

/* One per worker; cache-line aligned so workers do not share a line. */
struct node_worker_stats {
    alignas(64) atomic_uint_fast64_t ticks; /* loop iterations: the watchdog's progress signal */
    atomic_uint_fast64_t handshakes_ok;
    atomic_uint_fast64_t handshakes_failed;
    atomic_uint_fast64_t accepted;          /* connections that became sessions */
    atomic_uint_fast64_t rejected;          /* connections closed at once: over --max-connections */
    atomic_uint_fast64_t requests;          /* requests answered */
    atomic_uint_fast64_t sessions;          /* sessions alive now (a gauge) */
};

/* Node-wide: the workers' counters and the connection limit's counter. */
struct node_stats {
    unsigned nworkers;
    struct node_worker_stats *workers; /* nworkers entries, owned by whoever built this */
    atomic_uint_fast64_t connections;  /* open client sockets, node-wide (--max-connections) */
};

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
