/* test_bench_hist: bucket arithmetic, percentiles and merging of the
 * load generator's log-bucket latency histogram. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "bench.h"
#include "bench_hist.h"

static void test_buckets_cover_every_value(void **state)
{
    (void)state;
    /* Each value lies in [low, high) of its bucket, and buckets are ordered. */
    uint64_t probes[] = {0, 1, 63, 64, 65, 127, 128, 129, 1000, 4095, 4096, 123456789,
                         (uint64_t)1 << 40, ((uint64_t)1 << 62) + 12345, INT64_MAX};
    unsigned prev = 0;
    for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
        unsigned b = bench_hist_bucket(probes[i]);
        assert_true(b < BENCH_HIST_BUCKETS);
        assert_true(bench_hist_bucket_low(b) <= probes[i]);
        assert_true(probes[i] < bench_hist_bucket_high(b));
        assert_true(b >= prev);
        prev = b;
    }
    /* Neighbouring buckets touch: no value falls between them. */
    for (unsigned b = 0; b + 1 < bench_hist_bucket(INT64_MAX); b++)
        assert_int_equal(bench_hist_bucket_high(b), bench_hist_bucket_low(b + 1));
    /* Relative width stays within 1/64 above the linear range. */
    for (unsigned b = BENCH_HIST_SUB; b < bench_hist_bucket(INT64_MAX); b++) {
        uint64_t lo = bench_hist_bucket_low(b), hi = bench_hist_bucket_high(b);
        assert_true((hi - lo) * 64 <= lo);
    }
}

static void test_empty(void **state)
{
    (void)state;
    struct bench_hist *h = bench_hist_new();
    assert_non_null(h);
    assert_int_equal(bench_hist_count(h), 0);
    assert_int_equal(bench_hist_percentile(h, 50), 0);
    assert_int_equal(bench_hist_min(h), 0);
    assert_int_equal(bench_hist_max(h), 0);
    assert_true(bench_hist_mean(h) == 0.0);
    bench_hist_free(h);
    bench_hist_free(NULL);
}

static void test_percentiles(void **state)
{
    (void)state;
    struct bench_hist *h = bench_hist_new();
    assert_non_null(h);
    /* 1..100000 µs in ns: pXX is XX % of 100 ms, within the bucket error. */
    for (uint64_t v = 1; v <= 100000; v++)
        bench_hist_record(h, v * 1000);
    assert_int_equal(bench_hist_count(h), 100000);
    assert_int_equal(bench_hist_min(h), 1000);
    assert_int_equal(bench_hist_max(h), 100000000);
    double pcts[] = {50, 90, 99, 99.9};
    for (size_t i = 0; i < 4; i++) {
        double want = pcts[i] / 100.0 * 1e8;
        double got = (double)bench_hist_percentile(h, pcts[i]);
        assert_true(got > want * 0.98 && got < want * 1.02);
    }
    assert_int_equal(bench_hist_percentile(h, 100), 100000000);
    assert_int_equal(bench_hist_percentile(h, 0), 1000);
    assert_int_equal(bench_hist_percentile(h, -5), 1000); /* clamped */
    double mean = bench_hist_mean(h);
    assert_true(mean > 50000499.0 && mean < 50000501.0);
    bench_hist_free(h);
}

static void test_merge_and_extremes(void **state)
{
    (void)state;
    struct bench_hist *a = bench_hist_new(), *b = bench_hist_new();
    assert_non_null(a);
    assert_non_null(b);
    bench_hist_record(a, 5);
    bench_hist_record(b, UINT64_MAX); /* clamped, never out of range */
    bench_hist_record(b, 7);
    bench_hist_merge(a, b);
    assert_int_equal(bench_hist_count(a), 3);
    assert_int_equal(bench_hist_min(a), 5);
    assert_int_equal(bench_hist_max(a), INT64_MAX);
    bench_hist_reset(b);
    bench_hist_merge(a, b); /* empty: no change */
    assert_int_equal(bench_hist_count(a), 3);
    bench_hist_free(a);
    bench_hist_free(b);
}

static void test_names(void **state)
{
    (void)state;
    enum bench_mode m;
    assert_int_equal(bench_mode_parse("handshake", &m), 0);
    assert_int_equal(m, BENCH_HANDSHAKE);
    assert_int_equal(bench_mode_parse("send", &m), 0);
    assert_int_equal(m, BENCH_SEND);
    assert_int_equal(bench_mode_parse("Echo", &m), -1);
    assert_int_equal(bench_mode_parse(NULL, &m), -1);
    enum bench_exchange x;
    assert_int_equal(bench_exchange_parse("http", &x), 0);
    assert_int_equal(x, BENCH_EXCHANGE_HTTP);
    assert_int_equal(bench_exchange_parse("", &x), -1);
    assert_string_equal(bench_err_name(BENCH_ERR_TIMEOUT), "timeout");
    assert_string_equal(bench_err_name(BENCH_ERR_COUNT), "unknown");
    assert_null(bench_mode_name((enum bench_mode)42));
}

static void test_bad_options(void **state)
{
    (void)state;
    char err[256];
    struct bench_result r;
    struct bench_options o = {.mode = BENCH_ECHO, .addr = "127.0.0.1:1", .name = "t",
                              .connections = 0, .pipeline = 1, .duration_ms = 10,
                              .timeout_ms = 10, .threads = 1};
    assert_int_equal(bench_run(&o, &r, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "connections"));
    o.connections = 1;
    o.pipeline = 5000;
    assert_int_equal(bench_run(&o, &r, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "pipeline"));
    o.pipeline = 1;
    o.addr = "no-port";
    assert_int_equal(bench_run(&o, &r, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "bad address"));
    bench_result_release(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buckets_cover_every_value),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_percentiles),
        cmocka_unit_test(test_merge_and_extremes),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_bad_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
