/* history: a fixed-size ring of load samples per node (sessions, messages
 * per second, state), taken every period by the balancer's loop and served
 * to the dashboard as /v1/history. Nodes the registry forgot are dropped.
 * Single-threaded. */
#ifndef BERTH_HISTORY_H
#define BERTH_HISTORY_H

#include <stddef.h>
#include <stdint.h>

#include "registry.h"

/* Samples kept per node: with the default 2 s period, the last 4 minutes. */
#define HISTORY_SAMPLES 120

struct history_sample {
    uint32_t sessions;
    float msgs_per_sec;
    uint8_t state; /* enum node_state */
};

struct history;

/* period_ms: how often the caller samples (reported, not enforced).
 * NULL on out of memory. */
struct history *history_new(uint32_t period_ms);
void history_free(struct history *h);
uint32_t history_period_ms(const struct history *h);
/* Samples taken since start. */
uint64_t history_taken(const struct history *h);

/* Appends one sample of every node in reg (the oldest falls out of a full
 * ring), adds rings for new nodes and drops those of forgotten ones.
 * O(n log n) in the number of nodes. Returns 0, or -1 when memory ran out
 * (the nodes that could not be added are left out of this sample). */
int history_sample(struct history *h, const struct registry *reg);

/* Nodes with history, in id order: 0 <= i < history_size. */
size_t history_size(const struct history *h);
/* Borrowed; valid until the next history_sample. */
const char *history_node_id(const struct history *h, size_t i);
/* The node's capacity at the latest sample. */
uint32_t history_node_capacity(const struct history *h, size_t i);
/* Copies node i's samples, oldest first, into out (room for
 * HISTORY_SAMPLES); returns how many. The newest is from the latest sample. */
size_t history_node_samples(const struct history *h, size_t i, struct history_sample *out);

#endif
