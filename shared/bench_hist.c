/* bench_hist: log-bucket latency histogram. A value's bucket is its octave
 * (position of the highest set bit) and the next BENCH_HIST_SUB_BITS bits
 * below it; values under BENCH_HIST_SUB get a bucket each. */
#include "bench_hist.h"

#include <stdlib.h>
#include <string.h>

struct bench_hist {
    uint64_t counts[BENCH_HIST_BUCKETS]; /* samples per bucket */
    uint64_t total;                      /* samples recorded */
    uint64_t min, max;                   /* exact extremes; min valid when total > 0 */
    long double sum;                     /* for the mean; long double keeps ns sums exact enough */
};

struct bench_hist *bench_hist_new(void)
{
    struct bench_hist *h = malloc(sizeof(*h));
    if (h)
        bench_hist_reset(h);
    return h;
}

void bench_hist_free(struct bench_hist *h)
{
    free(h);
}

void bench_hist_reset(struct bench_hist *h)
{
    memset(h, 0, sizeof(*h));
}

unsigned bench_hist_bucket(uint64_t v)
{
    if (v < BENCH_HIST_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - BENCH_HIST_SUB_BITS;
    /* (v >> shift) lies in [SUB, 2*SUB): its low bits pick the sub-bucket. */
    return (shift + 1u) * BENCH_HIST_SUB + (unsigned)((v >> shift) - BENCH_HIST_SUB);
}

uint64_t bench_hist_bucket_low(unsigned b)
{
    if (b < BENCH_HIST_SUB)
        return b;
    unsigned shift = b / BENCH_HIST_SUB - 1u;
    uint64_t sub = b % BENCH_HIST_SUB;
    return (BENCH_HIST_SUB + sub) << shift;
}

uint64_t bench_hist_bucket_high(unsigned b)
{
    if (b < BENCH_HIST_SUB)
        return (uint64_t)b + 1u;
    unsigned shift = b / BENCH_HIST_SUB - 1u;
    return bench_hist_bucket_low(b) + ((uint64_t)1 << shift);
}

void bench_hist_record(struct bench_hist *h, uint64_t v)
{
    if (v > INT64_MAX)
        v = INT64_MAX; /* keeps the bucket index in range */
    h->counts[bench_hist_bucket(v)]++;
    if (h->total == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->total++;
    h->sum += (long double)v;
}

void bench_hist_merge(struct bench_hist *into, const struct bench_hist *from)
{
    if (from->total == 0)
        return;
    for (unsigned i = 0; i < BENCH_HIST_BUCKETS; i++)
        into->counts[i] += from->counts[i];
    if (into->total == 0 || from->min < into->min)
        into->min = from->min;
    if (from->max > into->max)
        into->max = from->max;
    into->total += from->total;
    into->sum += from->sum;
}

uint64_t bench_hist_count(const struct bench_hist *h) { return h->total; }
uint64_t bench_hist_min(const struct bench_hist *h) { return h->total ? h->min : 0; }
uint64_t bench_hist_max(const struct bench_hist *h) { return h->max; }

double bench_hist_mean(const struct bench_hist *h)
{
    return h->total ? (double)(h->sum / (long double)h->total) : 0.0;
}

uint64_t bench_hist_percentile(const struct bench_hist *h, double pct)
{
    if (h->total == 0)
        return 0;
    /* The ends are known exactly. */
    if (pct <= 0)
        return h->min;
    if (pct >= 100)
        return h->max;
    /* The rank of the wanted sample, 1-based: at least the first one. */
    uint64_t rank = (uint64_t)((pct / 100.0) * (double)h->total + 0.5);
    if (rank < 1)
        rank = 1;
    if (rank > h->total)
        rank = h->total;
    uint64_t seen = 0;
    for (unsigned b = 0; b < BENCH_HIST_BUCKETS; b++) {
        seen += h->counts[b];
        if (seen >= rank) {
            uint64_t lo = bench_hist_bucket_low(b), hi = bench_hist_bucket_high(b);
            uint64_t mid = lo + (hi - lo - 1) / 2;
            if (mid < h->min)
                mid = h->min;
            if (mid > h->max)
                mid = h->max;
            return mid;
        }
    }
    return h->max;
}
