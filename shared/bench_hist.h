/* bench_hist: a latency histogram with logarithmic buckets (HDR-style: 64
 * linear sub-buckets per power of two, so every recorded value is kept to
 * within 1/64 ≈ 1.6 %), fixed size whatever the number of samples. */
#ifndef BERTH_BENCH_HIST_H
#define BERTH_BENCH_HIST_H

#include <stdint.h>

#define BENCH_HIST_SUB_BITS 6
#define BENCH_HIST_SUB (1u << BENCH_HIST_SUB_BITS)
/* Values up to 2^63 - 1 fit: (64 - SUB_BITS + 1) octaves of SUB buckets. */
#define BENCH_HIST_BUCKETS ((64u - BENCH_HIST_SUB_BITS + 1u) * BENCH_HIST_SUB)

struct bench_hist;

/* An empty histogram, or NULL on out of memory. */
struct bench_hist *bench_hist_new(void);
/* NULL is a no-op. */
void bench_hist_free(struct bench_hist *h);
void bench_hist_reset(struct bench_hist *h);

/* Records one value (e.g. nanoseconds). */
void bench_hist_record(struct bench_hist *h, uint64_t v);
/* Adds every sample of from into into. */
void bench_hist_merge(struct bench_hist *into, const struct bench_hist *from);

uint64_t bench_hist_count(const struct bench_hist *h);
/* Exact smallest and largest value recorded; 0 when empty. */
uint64_t bench_hist_min(const struct bench_hist *h);
uint64_t bench_hist_max(const struct bench_hist *h);
/* Exact mean of the recorded values; 0 when empty. */
double bench_hist_mean(const struct bench_hist *h);
/* The value below or at which pct percent (0..100) of the samples lie,
 * reported as the middle of its bucket and clamped to [min, max]; exactly
 * min for pct <= 0 and max for pct >= 100; 0 when empty. */
uint64_t bench_hist_percentile(const struct bench_hist *h, double pct);

/* Bucket arithmetic, exposed for tests: the bucket of v, and the smallest
 * and one past the largest value a bucket holds. */
unsigned bench_hist_bucket(uint64_t v);
uint64_t bench_hist_bucket_low(unsigned b);
uint64_t bench_hist_bucket_high(unsigned b);

#endif
