/* Unit tests for node/watchdog.c: stall detection on a fake clock. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "watchdog.h"

static void test_stall_threshold(void **state)
{
    (void)state;
    assert_int_equal(watchdog_stall_ms(250), 1000);
    assert_int_equal(watchdog_stall_ms(100), 1000);
    assert_int_equal(watchdog_stall_ms(1000), 3000);
}

static void test_progress_is_healthy(void **state)
{
    (void)state;
    struct watchdog *w = watchdog_new(2, 0);
    assert_non_null(w);
    uint64_t ticks[2] = {0, 0};
    char reason[128];
    for (uint64_t t = 250; t <= 10000; t += 250) {
        ticks[0] += 3;
        ticks[1] += 1;
        assert_true(watchdog_check(w, ticks, t, 1000, reason, sizeof(reason)));
        assert_string_equal(reason, "");
    }
    watchdog_free(w);
}

static void test_stall_and_recover(void **state)
{
    (void)state;
    struct watchdog *w = watchdog_new(3, 0);
    assert_non_null(w);
    uint64_t ticks[3] = {5, 5, 5};
    char reason[128];
    assert_true(watchdog_check(w, ticks, 100, 1000, reason, sizeof(reason)));
    /* Worker 1 freezes at t=100; others keep moving. */
    for (uint64_t t = 350; t <= 1100; t += 250) {
        ticks[0]++;
        ticks[2]++;
        assert_true(watchdog_check(w, ticks, t, 1000, reason, sizeof(reason)));
    }
    ticks[0]++;
    ticks[2]++;
    assert_false(watchdog_check(w, ticks, 1101, 1000, reason, sizeof(reason)));
    assert_string_equal(reason, "worker 1 stalled");
    ticks[0]++;
    ticks[2]++;
    assert_false(watchdog_check(w, ticks, 3000, 1000, reason, sizeof(reason)));
    /* It moves again: healthy at once. */
    ticks[1]++;
    assert_true(watchdog_check(w, ticks, 3250, 1000, reason, sizeof(reason)));
    assert_string_equal(reason, "");
    watchdog_free(w);
}

static void test_first_stalled_named(void **state)
{
    (void)state;
    struct watchdog *w = watchdog_new(3, 0);
    assert_non_null(w);
    uint64_t ticks[3] = {1, 1, 1};
    char reason[128];
    assert_true(watchdog_check(w, ticks, 10, 1000, reason, sizeof(reason)));
    ticks[0]++;
    assert_false(watchdog_check(w, ticks, 2000, 1000, reason, sizeof(reason)));
    assert_string_equal(reason, "worker 1 stalled");
    watchdog_free(w);
    watchdog_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stall_threshold),
        cmocka_unit_test(test_progress_is_healthy),
        cmocka_unit_test(test_stall_and_recover),
        cmocka_unit_test(test_first_stalled_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
