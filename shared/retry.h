/* retry: the client's retry policy as pure functions of time and chance:
 * exponential backoff with jitter, and a short-lived list of nodes that
 * just failed. No clock and no sleep here, so tests drive it with numbers. */
#ifndef BERTH_RETRY_H
#define BERTH_RETRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Delay before retry number attempt (0-based): the cap is
 * min(max_ms, base_ms * 2^attempt) and the delay is drawn from
 * [cap/2, cap] by rnd ("equal jitter": never zero, never in lockstep with
 * other clients). base_ms <= 0 gives 0. */
long retry_delay_ms(unsigned attempt, long base_ms, long max_ms, uint32_t rnd);

#define RETRY_EXCLUDE_MAX 32
#define RETRY_ID_MAX 64

/* Node ids excluded until a time (ms on any monotonic clock). */
struct retry_exclude {
    struct {
        char id[RETRY_ID_MAX + 1];
        uint64_t until_ms;
    } e[RETRY_EXCLUDE_MAX];
    size_t n;
};

void retry_exclude_init(struct retry_exclude *x);
/* Excludes id until now_ms + for_ms (extends an existing entry); when
 * full, the entry that expires first is replaced. Ids longer than
 * RETRY_ID_MAX are ignored. */
void retry_exclude_add(struct retry_exclude *x, const char *id, uint64_t now_ms, long for_ms);
bool retry_excluded(const struct retry_exclude *x, const char *id, uint64_t now_ms);
/* Ids excluded at now_ms into out (at most max); returns how many. The
 * pointers borrow from x. Expired entries are dropped first. */
size_t retry_exclude_list(struct retry_exclude *x, uint64_t now_ms, const char **out, size_t max);

#endif
