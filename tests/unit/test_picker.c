/* test_picker: least-loaded (power of two choices), round-robin, rendezvous
 * hashing and exclusions of balancer/picker.c over a real registry. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "picker.h"
#include "registry.h"

#define INTERVAL 250

struct fake_clock {
    uint64_t now;
};

static uint64_t fake_now(void *ctx)
{
    return ((struct fake_clock *)ctx)->now;
}

struct world {
    struct fake_clock clock;
    struct registry *reg;
};

/* rise 1, so a REGISTER puts a node in rotation at once */
static int setup(void **state)
{
    struct world *w = test_calloc(1, sizeof *w);
    assert_non_null(w);
    struct registry_config cfg = {.interval_ms = INTERVAL, .fall = 3, .rise = 1, .forget_ms = 60000};
    w->clock.now = 1000;
    w->reg = registry_new(&cfg, fake_now, &w->clock);
    assert_non_null(w->reg);
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    struct world *w = *state;
    registry_free(w->reg);
    test_free(w);
    return 0;
}

static void add_node(struct world *w, const char *id, uint32_t capacity, uint32_t sessions)
{
    struct hb_msg m;
    memset(&m, 0, sizeof m);
    m.type = HB_REGISTER;
    snprintf(m.node_id, sizeof m.node_id, "%s", id);
    m.boot_id = 1;
    snprintf(m.addr, sizeof m.addr, "127.0.0.1:7001");
    m.capacity = capacity;
    assert_int_equal(registry_register(w->reg, &m), 0);

    m.type = HB_HEARTBEAT;
    m.healthy = true;
    m.sessions = sessions;
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_OK);
}

static void node_leaves(struct world *w, const char *id)
{
    struct hb_msg m;
    memset(&m, 0, sizeof m);
    m.type = HB_LEAVE;
    snprintf(m.node_id, sizeof m.node_id, "%s", id);
    m.boot_id = 1;
    assert_int_equal(registry_leave(w->reg, &m), REGISTRY_OK);
}

static void node_heartbeat(struct world *w, const char *id, bool healthy)
{
    struct hb_msg m;
    memset(&m, 0, sizeof m);
    m.type = HB_HEARTBEAT;
    snprintf(m.node_id, sizeof m.node_id, "%s", id);
    m.boot_id = 1;
    m.healthy = healthy;
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_OK);
}

static int index_of(const char *const *ids, size_t n, const struct registry_node *node)
{
    assert_non_null(node);
    for (size_t i = 0; i < n; i++)
        if (strcmp(ids[i], node->id) == 0)
            return (int)i;
    fail_msg("picked unexpected node %s", node->id);
    return -1;
}

static void test_policy_names(void **state)
{
    (void)state;
    enum picker_policy p = PICKER_POLICY_COUNT;
    assert_string_equal(picker_policy_name(PICKER_LEAST_LOADED), "least-loaded");
    assert_string_equal(picker_policy_name(PICKER_ROUND_ROBIN), "round-robin");
    assert_string_equal(picker_policy_name(PICKER_POLICY_COUNT), "unknown");
    assert_int_equal(picker_policy_parse("least-loaded", &p), 0);
    assert_int_equal(p, PICKER_LEAST_LOADED);
    assert_int_equal(picker_policy_parse("round-robin", &p), 0);
    assert_int_equal(p, PICKER_ROUND_ROBIN);
    p = PICKER_POLICY_COUNT;
    assert_int_equal(picker_policy_parse("", &p), -1);
    assert_int_equal(picker_policy_parse("Round-Robin", &p), -1);
    assert_int_equal(picker_policy_parse("round-robin ", &p), -1);
    assert_int_equal(picker_policy_parse("random", &p), -1);
    assert_int_equal(picker_policy_parse(NULL, &p), -1);
    assert_int_equal(p, PICKER_POLICY_COUNT); /* untouched on error */
}

static void test_new_and_free(void **state)
{
    (void)state;
    picker_free(NULL);
    struct picker *p = picker_new(PICKER_LEAST_LOADED, 0); /* seeded by getrandom */
    assert_non_null(p);
    picker_free(p);
}

static void test_empty_rotation(void **state)
{
    struct world *w = *state;
    for (int pol = 0; pol < PICKER_POLICY_COUNT; pol++) {
        struct picker *p = picker_new((enum picker_policy)pol, 42);
        assert_non_null(p);
        assert_null(picker_pick(p, w->reg, NULL, NULL, 0));
        assert_null(picker_pick(p, w->reg, "user-1", NULL, 0));
        picker_free(p);
    }
    /* nodes that exist but are not in rotation change nothing */
    add_node(w, "gone", 10, 0);
    node_leaves(w, "gone");
    struct picker *p = picker_new(PICKER_LEAST_LOADED, 42);
    assert_null(picker_pick(p, w->reg, NULL, NULL, 0));
    assert_null(picker_pick(p, w->reg, "k", NULL, 0));
    picker_free(p);
}

static void test_only_healthy_returned(void **state)
{
    struct world *w = *state;
    add_node(w, "healthy-a", 10, 5);
    add_node(w, "healthy-b", 10, 5);
    add_node(w, "draining", 10, 0); /* lightest, but leaving */
    node_leaves(w, "draining");
    add_node(w, "down", 10, 0);
    node_heartbeat(w, "down", false);
    add_node(w, "suspect", 10, 0);
    w->clock.now += 2 * INTERVAL;
    node_heartbeat(w, "healthy-a", true);
    node_heartbeat(w, "healthy-b", true);
    node_heartbeat(w, "draining", true);
    node_heartbeat(w, "down", false);
    registry_reap(w->reg);
    assert_int_equal(registry_find(w->reg, "suspect")->state, NODE_SUSPECT);
    assert_int_equal(registry_find(w->reg, "down")->state, NODE_DOWN);
    assert_int_equal(registry_find(w->reg, "draining")->state, NODE_DRAINING);
    assert_int_equal(registry_rotation_size(w->reg), 2);

    static const char *const ok[] = {"healthy-a", "healthy-b"};
    for (int pol = 0; pol < PICKER_POLICY_COUNT; pol++) {
        struct picker *p = picker_new((enum picker_policy)pol, 7);
        int seen[2] = {0, 0};
        char key[32];
        for (int i = 0; i < 1000; i++) {
            seen[index_of(ok, 2, picker_pick(p, w->reg, NULL, NULL, 0))]++;
            snprintf(key, sizeof key, "key-%d", i);
            (void)index_of(ok, 2, picker_pick(p, w->reg, key, NULL, 0));
        }
        assert_true(seen[0] > 0 && seen[1] > 0);
        picker_free(p);
    }
}

static void test_exclude(void **state)
{
    struct world *w = *state;
    add_node(w, "a", 10, 0);
    add_node(w, "b", 10, 9);
    add_node(w, "c", 10, 5);
    const char *ex_ac[] = {"a", "c"};
    const char *ex_all[] = {"c", "b", "a", "zzz"};
    const char *ex_unknown[] = {"x", NULL, "y"};
    char key[32];
    for (int pol = 0; pol < PICKER_POLICY_COUNT; pol++) {
        struct picker *p = picker_new((enum picker_policy)pol, 99);
        for (int i = 0; i < 200; i++) {
            snprintf(key, sizeof key, "key-%d", i);
            const struct registry_node *n = picker_pick(p, w->reg, NULL, ex_ac, 2);
            assert_non_null(n);
            assert_string_equal(n->id, "b");
            n = picker_pick(p, w->reg, key, ex_ac, 2);
            assert_non_null(n);
            assert_string_equal(n->id, "b");
            assert_null(picker_pick(p, w->reg, NULL, ex_all, 4));
            assert_null(picker_pick(p, w->reg, key, ex_all, 4));
            assert_non_null(picker_pick(p, w->reg, NULL, ex_unknown, 3));
            /* exclusions ignored when the list is NULL */
            assert_non_null(picker_pick(p, w->reg, NULL, NULL, 5));
        }
        picker_free(p);
    }
}

/* A key whose node is excluded moves, and moves back when it is not. */
static void test_exclude_with_key_moves_only_that_key(void **state)
{
    struct world *w = *state;
    add_node(w, "a", 10, 0);
    add_node(w, "b", 10, 0);
    add_node(w, "c", 10, 0);
    struct picker *p = picker_new(PICKER_LEAST_LOADED, 1);
    const struct registry_node *home = picker_pick(p, w->reg, "session-17", NULL, 0);
    assert_non_null(home);
    const char *ex[] = {home->id};
    const struct registry_node *other = picker_pick(p, w->reg, "session-17", ex, 1);
    assert_non_null(other);
    assert_string_not_equal(other->id, home->id);
    assert_ptr_equal(picker_pick(p, w->reg, "session-17", NULL, 0), home);
    picker_free(p);
}

static void test_round_robin_cycles_evenly(void **state)
{
    struct world *w = *state;
    static const char *const ids[] = {"a", "b", "c"};
    add_node(w, "a", 10, 0);
    add_node(w, "b", 10, 100); /* load does not matter to round-robin */
    add_node(w, "c", 10, 3);
    struct picker *p = picker_new(PICKER_ROUND_ROBIN, 5);
    int count[3] = {0};
    int prev = -1;
    for (int i = 0; i < 300; i++) {
        int k = index_of(ids, 3, picker_pick(p, w->reg, NULL, NULL, 0));
        assert_int_not_equal(k, prev);
        if (prev >= 0)
            assert_int_equal(k, (prev + 1) % 3); /* a fixed cycle over the rotation */
        prev = k;
        count[k]++;
    }
    assert_int_equal(count[0], 100);
    assert_int_equal(count[1], 100);
    assert_int_equal(count[2], 100);

    /* skipping an excluded node keeps the others even */
    const char *ex[] = {"b"};
    count[0] = count[1] = count[2] = 0;
    for (int i = 0; i < 300; i++)
        count[index_of(ids, 3, picker_pick(p, w->reg, NULL, ex, 1))]++;
    assert_int_equal(count[1], 0);
    assert_int_equal(count[0], 150);
    assert_int_equal(count[2], 150);

    /* the rotation shrinking under the cursor is fine */
    node_leaves(w, "c");
    node_leaves(w, "b");
    for (int i = 0; i < 10; i++)
        assert_string_equal(picker_pick(p, w->reg, NULL, NULL, 0)->id, "a");
    picker_free(p);
}

static void test_least_loaded_prefers_lighter(void **state)
{
    struct world *w = *state;
    static const char *const ids[] = {"light", "mid1", "mid2", "heavy"};
    add_node(w, "light", 100, 10); /* 0.1 */
    add_node(w, "mid1", 100, 50);  /* 0.5 */
    add_node(w, "mid2", 10, 5);    /* 0.5: the ratio counts, not sessions */
    add_node(w, "heavy", 1000, 900); /* 0.9, though its capacity is largest */
    struct picker *p = picker_new(PICKER_LEAST_LOADED, 12345);
    int count[4] = {0};
    enum { PICKS = 20000 };
    for (int i = 0; i < PICKS; i++)
        count[index_of(ids, 4, picker_pick(p, w->reg, NULL, NULL, 0))]++;
    /* two distinct draws: the heaviest never wins, the lightest wins every
     * pair it is in (half of them), uniform choice would give 1/4 */
    assert_int_equal(count[3], 0);
    assert_in_range(count[0], PICKS * 45 / 100, PICKS * 55 / 100);
    assert_in_range(count[1], PICKS * 20 / 100, PICKS * 30 / 100);
    assert_in_range(count[2], PICKS * 20 / 100, PICKS * 30 / 100);
    picker_free(p);
}

static void test_least_loaded_two_nodes_always_lighter(void **state)
{
    struct world *w = *state;
    add_node(w, "a", 100, 80);
    add_node(w, "b", 100, 20);
    struct picker *p = picker_new(PICKER_LEAST_LOADED, 3);
    for (int i = 0; i < 500; i++)
        assert_string_equal(picker_pick(p, w->reg, NULL, NULL, 0)->id, "b");
    /* excluded, the lighter one gives way */
    const char *ex[] = {"b"};
    for (int i = 0; i < 50; i++)
        assert_string_equal(picker_pick(p, w->reg, NULL, ex, 1)->id, "a");
    picker_free(p);
}

/* Most of a rotation excluded: sampling gives up and the scan still finds
 * the one (or the least loaded of the few) left. */
static void test_least_loaded_heavy_exclusion(void **state)
{
    struct world *w = *state;
    enum { N = 64 };
    const char *ex[N];
    char ids[N][16];
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "n%02d", i);
        add_node(w, ids[i], 10, (uint32_t)i % 7);
        ex[i] = ids[i];
    }
    struct picker *p = picker_new(PICKER_LEAST_LOADED, 77);
    /* all but n13 excluded: ex without index 13 */
    const char *ex_but13[N - 1];
    for (int i = 0, j = 0; i < N; i++)
        if (i != 13)
            ex_but13[j++] = ex[i];
    for (int i = 0; i < 100; i++)
        assert_string_equal(picker_pick(p, w->reg, NULL, ex_but13, N - 1)->id, "n13");
    assert_null(picker_pick(p, w->reg, NULL, ex, N));
    picker_free(p);
}

static void test_rendezvous_stable(void **state)
{
    struct world *w = *state;
    static const char *const ids[] = {"alpha", "bravo", "charlie", "delta"};
    for (int i = 0; i < 4; i++)
        add_node(w, ids[i], 10, (uint32_t)i);
    struct picker *p1 = picker_new(PICKER_LEAST_LOADED, 1);
    struct picker *p2 = picker_new(PICKER_ROUND_ROBIN, 2);
    char key[32];
    int home[200];
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof key, "user-%d", i);
        home[i] = index_of(ids, 4, picker_pick(p1, w->reg, key, NULL, 0));
        /* the same key, any picker, any time: the same node */
        for (int rep = 0; rep < 3; rep++) {
            assert_int_equal(index_of(ids, 4, picker_pick(p1, w->reg, key, NULL, 0)), home[i]);
            assert_int_equal(index_of(ids, 4, picker_pick(p2, w->reg, key, NULL, 0)), home[i]);
        }
    }
    /* "charlie" leaves: only its keys move, and nobody else's */
    node_leaves(w, "charlie");
    int moved = 0;
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof key, "user-%d", i);
        int now = index_of(ids, 4, picker_pick(p1, w->reg, key, NULL, 0));
        if (home[i] == 2) {
            assert_int_not_equal(now, 2);
            moved++;
        } else {
            assert_int_equal(now, home[i]);
        }
    }
    assert_true(moved > 0);
    picker_free(p1);
    picker_free(p2);
}

static void test_rendezvous_returns_when_node_returns(void **state)
{
    struct world *w = *state;
    add_node(w, "a", 10, 0);
    add_node(w, "b", 10, 0);
    add_node(w, "c", 10, 0);
    struct picker *p = picker_new(PICKER_LEAST_LOADED, 1);
    const char *home = picker_pick(p, w->reg, "k", NULL, 0)->id;
    char saved[HB_NODE_ID_MAX + 1];
    snprintf(saved, sizeof saved, "%s", home);

    w->clock.now += 2 * INTERVAL;
    static const char *const ids[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++)
        if (strcmp(ids[i], saved) != 0)
            node_heartbeat(w, ids[i], true);
    registry_reap(w->reg); /* the key's node turns suspect */
    assert_string_not_equal(picker_pick(p, w->reg, "k", NULL, 0)->id, saved);
    node_heartbeat(w, saved, true); /* and back */
    assert_string_equal(picker_pick(p, w->reg, "k", NULL, 0)->id, saved);
    picker_free(p);
}

static void test_rendezvous_distribution(void **state)
{
    struct world *w = *state;
    static const char *const ids[] = {"node-1", "node-2", "node-3"};
    for (int i = 0; i < 3; i++)
        add_node(w, ids[i], 10, 0);
    struct picker *p = picker_new(PICKER_LEAST_LOADED, 1);
    int count[3] = {0};
    char key[32];
    enum { KEYS = 3000 };
    for (int i = 0; i < KEYS; i++) {
        snprintf(key, sizeof key, "client-%d", i);
        count[index_of(ids, 3, picker_pick(p, w->reg, key, NULL, 0))]++;
    }
    for (int i = 0; i < 3; i++)
        assert_in_range(count[i], KEYS * 20 / 100, KEYS * 47 / 100);
    /* an empty key is a key like any other */
    assert_non_null(picker_pick(p, w->reg, "", NULL, 0));
    picker_free(p);
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

/* 10,000 nodes: picking is O(1). 200,000 picks that scanned the rotation
 * would be 2e9 node visits, tens of seconds; O(1) picks take milliseconds
 * (well under the bound even under valgrind). */
static void test_ten_thousand_nodes(void **state)
{
    struct world *w = *state;
    enum { N = 10000, PICKS = 200000 };
    char id[32];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "node-%05d", i);
        add_node(w, id, 100, (uint32_t)(i % 100));
    }
    assert_int_equal(registry_rotation_size(w->reg), N);

    for (int pol = 0; pol < PICKER_POLICY_COUNT; pol++) {
        struct picker *p = picker_new((enum picker_policy)pol, 2024);
        const char *ex[] = {"node-00000", "node-00001"};
        uint64_t load = 0;
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int i = 0; i < PICKS; i++) {
            const struct registry_node *n = picker_pick(p, w->reg, NULL, ex, 2);
            assert_non_null(n);
            load += n->sessions;
        }
        double secs = seconds_since(&t0);
        assert_true(secs < 5.0);
        if (pol == PICKER_LEAST_LOADED) /* the better of two: below the mean 49.5 */
            assert_true(load / PICKS < 40);
        picker_free(p);
    }
    /* a keyed pick visits every node once; still quick, and stable */
    struct picker *p = picker_new(PICKER_LEAST_LOADED, 1);
    const struct registry_node *k = picker_pick(p, w->reg, "big", NULL, 0);
    assert_non_null(k);
    assert_ptr_equal(picker_pick(p, w->reg, "big", NULL, 0), k);
    picker_free(p);
}


/* Panic guard rail: when every node goes silent at once, picks go on
 * handing out the last healthy set instead of answering with nothing; a
 * flapping node is never handed out. */
static void test_pick_in_panic_and_flapping(void **state)
{
    struct world *w = *state;
    registry_free(w->reg);
    struct registry_config cfg = {.interval_ms = INTERVAL,
                                  .fall = 3,
                                  .rise = 1,
                                  .forget_ms = 60000,
                                  .flap_count = 1,
                                  .flap_window_ms = 60000,
                                  .flap_holdoff_ms = 5000,
                                  .flap_holdoff_max_ms = 5000,
                                  .panic_percent = 50};
    w->reg = registry_new(&cfg, fake_now, &w->clock);
    assert_non_null(w->reg);
    struct picker *p = picker_new(PICKER_LEAST_LOADED, 7);
    assert_non_null(p);
    add_node(w, "a", 10, 0);
    add_node(w, "b", 10, 0);
    add_node(w, "c", 10, 0);
    for (int i = 0; i < 40; i++) {
        w->clock.now += INTERVAL / 5;
        registry_reap(w->reg);
    }
    assert_true(registry_panic(w->reg));
    for (int i = 0; i < 20; i++)
        assert_non_null(picker_pick(p, w->reg, NULL, NULL, 0));
    assert_non_null(picker_pick(p, w->reg, "some-key", NULL, 0));

    /* heartbeats resume; then "a" goes down twice and is held as flapping */
    for (int k = 0; k < 2; k++) {
        w->clock.now += INTERVAL;
        node_heartbeat(w, "a", true);
        node_heartbeat(w, "b", true);
        node_heartbeat(w, "c", true);
        registry_reap(w->reg);
    }
    assert_false(registry_panic(w->reg));
    for (int k = 0; k < 2; k++) {
        node_heartbeat(w, "a", false);
        w->clock.now += INTERVAL;
        node_heartbeat(w, "a", true);
        node_heartbeat(w, "b", true);
        node_heartbeat(w, "c", true);
    }
    assert_int_equal(registry_find(w->reg, "a")->state, NODE_FLAPPING);
    for (int i = 0; i < 50; i++) {
        const struct registry_node *n = picker_pick(p, w->reg, NULL, NULL, 0);
        assert_non_null(n);
        assert_string_not_equal(n->id, "a");
    }
    picker_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy_names),
        cmocka_unit_test(test_new_and_free),
        cmocka_unit_test_setup_teardown(test_empty_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_only_healthy_returned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exclude, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exclude_with_key_moves_only_that_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_robin_cycles_evenly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_least_loaded_prefers_lighter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_least_loaded_two_nodes_always_lighter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_least_loaded_heavy_exclusion, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rendezvous_stable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rendezvous_returns_when_node_returns, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rendezvous_distribution, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ten_thousand_nodes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pick_in_panic_and_flapping, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
