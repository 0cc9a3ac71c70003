/* mono: the monotonic clock every timeout and liveness decision uses. */
#ifndef BERTH_MONO_H
#define BERTH_MONO_H

#include <stdint.h>
#include <time.h>

/* Milliseconds on CLOCK_MONOTONIC; never goes back, unrelated to wall time. */
static inline uint64_t mono_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

#endif
