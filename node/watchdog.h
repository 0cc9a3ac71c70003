/* watchdog: notices a worker loop that stopped making progress, from the
 * tick counters the main thread samples at every heartbeat. Clock-free:
 * the caller passes the time. */
#ifndef BERTH_WATCHDOG_H
#define BERTH_WATCHDOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WATCHDOG_MIN_STALL_MS 1000 /* never call a worker stalled sooner */

struct watchdog;

/* Starts with every worker seen progressing at now_ms. NULL on out of memory. */
struct watchdog *watchdog_new(unsigned nworkers, uint64_t now_ms);
void watchdog_free(struct watchdog *w);

/* The stall threshold for a heartbeat interval: max(1 s, 3 intervals). */
uint64_t watchdog_stall_ms(uint32_t interval_ms);

/* Records each worker's tick counter (nworkers entries). Returns true when
 * every worker's ticks moved within stall_ms; otherwise false with
 * "worker N stalled" (the first stalled worker) in reason. Logs
 * worker_stalled once when a worker stalls and worker_recovered when it
 * moves again. */
bool watchdog_check(struct watchdog *w, const uint64_t *ticks, uint64_t now_ms, uint64_t stall_ms,
                    char *reason, size_t reasonlen);

#endif
