/* watchdog: per-worker "last time the tick counter moved", checked once per
 * heartbeat; a worker stuck for longer than the threshold makes the node
 * report itself unhealthy. */
#include "watchdog.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"

struct watchdog_worker {
    uint64_t ticks;     /* counter at the last change */
    uint64_t moved_ms;  /* when it last changed */
    bool stalled;       /* worker_stalled logged, not yet recovered */
};

struct watchdog {
    unsigned n;
    struct watchdog_worker w[]; /* n entries */
};

struct watchdog *watchdog_new(unsigned nworkers, uint64_t now_ms)
{
    struct watchdog *w = calloc(1, sizeof(*w) + (size_t)nworkers * sizeof(w->w[0]));
    if (!w)
        return NULL;
    w->n = nworkers;
    for (unsigned i = 0; i < nworkers; i++)
        w->w[i].moved_ms = now_ms;
    return w;
}

void watchdog_free(struct watchdog *w) { free(w); }

uint64_t watchdog_stall_ms(uint32_t interval_ms)
{
    uint64_t t = 3u * (uint64_t)interval_ms;
    return t > WATCHDOG_MIN_STALL_MS ? t : WATCHDOG_MIN_STALL_MS;
}

bool watchdog_check(struct watchdog *w, const uint64_t *ticks, uint64_t now_ms, uint64_t stall_ms,
                    char *reason, size_t reasonlen)
{
    bool healthy = true;
    if (reasonlen > 0)
        reason[0] = '\0';
    for (unsigned i = 0; i < w->n; i++) {
        struct watchdog_worker *ww = &w->w[i];
        if (ticks[i] != ww->ticks) {
            ww->ticks = ticks[i];
            ww->moved_ms = now_ms;
            if (ww->stalled) {
                ww->stalled = false;
                log_info("worker_recovered", "worker=%u", i);
            }
            continue;
        }
        uint64_t still = now_ms - ww->moved_ms;
        if (still <= stall_ms)
            continue;
        if (!ww->stalled) {
            ww->stalled = true;
            log_warn("worker_stalled", "worker=%u ticks=%" PRIu64 " still_ms=%" PRIu64, i,
                     ticks[i], still);
        }
        if (healthy && reasonlen > 0)
            snprintf(reason, reasonlen, "worker %u stalled", i);
        healthy = false;
    }
    return healthy;
}
