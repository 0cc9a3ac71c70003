/* Unit tests for balancer/history.c: samples in order, the ring keeps only
 * the last HISTORY_SAMPLES, nodes joining and forgotten between samples,
 * and an empty registry. Runs on a fake clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "history.h"

static uint64_t fake_now(void *ctx)
{
    return *(uint64_t *)ctx;
}

static void reg_node(struct registry *r, const char *id, uint32_t capacity)
{
    struct hb_msg m;
    memset(&m, 0, sizeof m);
    m.type = HB_REGISTER;
    snprintf(m.node_id, sizeof m.node_id, "%s", id);
    m.boot_id = 1;
    snprintf(m.addr, sizeof m.addr, "127.0.0.1:1");
    m.capacity = capacity;
    assert_int_equal(registry_register(r, &m), 0);
}

static void beat(struct registry *r, const char *id, uint32_t sessions, double mps)
{
    struct hb_msg m;
    memset(&m, 0, sizeof m);
    m.type = HB_HEARTBEAT;
    snprintf(m.node_id, sizeof m.node_id, "%s", id);
    m.boot_id = 1;
    m.healthy = true;
    m.sessions = sessions;
    m.msgs_per_sec = mps;
    assert_int_equal(registry_heartbeat(r, &m), REGISTRY_OK);
}

static void test_ring(void **state)
{
    (void)state;
    uint64_t now = 1000;
    struct registry_config cfg = {.interval_ms = 250, .fall = 3, .rise = 1, .forget_ms = 1000};
    struct registry *reg = registry_new(&cfg, fake_now, &now);
    struct history *h = history_new(2000);
    assert_non_null(reg);
    assert_non_null(h);
    assert_int_equal(history_period_ms(h), 2000);

    /* empty registry */
    assert_int_equal(history_sample(h, reg), 0);
    assert_int_equal(history_size(h), 0);
    assert_null(history_node_id(h, 0));

    reg_node(reg, "b", 10);
    reg_node(reg, "a", 20);
    struct history_sample v[HISTORY_SAMPLES];
    for (uint32_t i = 0; i < HISTORY_SAMPLES + 30; i++) {
        now += 200;
        beat(reg, "a", i, i * 0.5);
        beat(reg, "b", 1000 + i, 0);
        assert_int_equal(history_sample(h, reg), 0);
    }
    assert_int_equal(history_taken(h), HISTORY_SAMPLES + 31);
    assert_int_equal(history_size(h), 2);
    assert_string_equal(history_node_id(h, 0), "a"); /* id order */
    assert_string_equal(history_node_id(h, 1), "b");
    assert_int_equal(history_node_capacity(h, 0), 20);
    size_t n = history_node_samples(h, 0, v);
    assert_int_equal(n, HISTORY_SAMPLES);
    /* oldest first; only the last HISTORY_SAMPLES are kept */
    assert_int_equal(v[0].sessions, 30);
    assert_int_equal(v[n - 1].sessions, HISTORY_SAMPLES + 29);
    assert_true(v[n - 1].msgs_per_sec == (float)((HISTORY_SAMPLES + 29) * 0.5));
    assert_int_equal(v[n - 1].state, NODE_HEALTHY);
    assert_int_equal(history_node_samples(h, 5, v), 0);

    /* a new node gets a short history; a forgotten one is dropped */
    reg_node(reg, "c", 5);
    now += 200;
    beat(reg, "a", 1, 0);
    beat(reg, "c", 2, 0);
    assert_int_equal(history_sample(h, reg), 0);
    assert_int_equal(history_size(h), 3);
    assert_int_equal(history_node_samples(h, 2, v), 1);
    assert_int_equal(v[0].sessions, 2);
    /* b falls silent: down, then forgotten */
    for (int i = 0; i < 20; i++) {
        now += 200;
        beat(reg, "a", 1, 0);
        beat(reg, "c", 2, 0);
        registry_reap(reg);
        assert_int_equal(history_sample(h, reg), 0);
    }
    assert_null(registry_find(reg, "b"));
    assert_int_equal(history_size(h), 2);
    assert_string_equal(history_node_id(h, 0), "a");
    assert_string_equal(history_node_id(h, 1), "c");
    assert_int_equal(history_node_samples(h, 1, v), 21);

    /* everything forgotten */
    now += 100000;
    registry_reap(reg); /* down */
    now += 100000;
    registry_reap(reg); /* forgotten */
    assert_int_equal(registry_size(reg), 0);
    assert_int_equal(history_sample(h, reg), 0);
    assert_int_equal(history_size(h), 0);

    history_free(h);
    history_free(NULL);
    registry_free(reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ring),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
