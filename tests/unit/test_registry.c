/* test_registry: the liveness state machine, rotation, epoch, id index,
 * change callback, client reports and ejection, and connection-closed
 * handling of balancer/registry.c, on a fake clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "registry.h"

#define INTERVAL 250
#define FALL 3
#define RISE 2
#define FORGET 60000

struct fake_clock {
    uint64_t now;
};

static uint64_t fake_now(void *ctx)
{
    return ((struct fake_clock *)ctx)->now;
}

struct change {
    char id[HB_NODE_ID_MAX + 1];
    enum node_state from, to;
    uint64_t since;
    size_t rotation_after;
};

#define MAX_CHANGES 512

/* Each test's world: the clock, the registry and the changes it reported. */
struct world {
    struct fake_clock clock;
    struct registry *reg;
    struct change changes[MAX_CHANGES];
    size_t nchanges;
};

static struct world *world_of(void **state)
{
    return *state;
}

static void record_change(void *ctx, const struct registry_node *n, enum node_state from,
                          enum node_state to)
{
    struct world *w = ctx;
    assert_true(w->nchanges < MAX_CHANGES);
    struct change *c = &w->changes[w->nchanges++];
    snprintf(c->id, sizeof c->id, "%s", n->id);
    c->from = from;
    c->to = to;
    c->since = n->state_since_ms;
    c->rotation_after = registry_rotation_size(w->reg);
    /* the change is applied before the callback runs */
    assert_int_equal(n->state, to);
}

static struct world *world_new(uint32_t rise, uint32_t fall)
{
    struct world *w = test_calloc(1, sizeof *w);
    assert_non_null(w);
    struct registry_config cfg = {
        .interval_ms = INTERVAL, .fall = fall, .rise = rise, .forget_ms = FORGET};
    w->clock.now = 1000;
    w->reg = registry_new(&cfg, fake_now, &w->clock);
    assert_non_null(w->reg);
    registry_on_change(w->reg, record_change, w);
    return w;
}

static int setup(void **state)
{
    *state = world_new(RISE, FALL);
    return 0;
}

static int teardown(void **state)
{
    struct world *w = *state;
    registry_free(w->reg);
    test_free(w);
    return 0;
}

static struct hb_msg reg_msg(const char *id, uint64_t boot)
{
    struct hb_msg m;
    memset(&m, 0, sizeof m);
    m.type = HB_REGISTER;
    snprintf(m.node_id, sizeof m.node_id, "%s", id);
    m.boot_id = boot;
    snprintf(m.addr, sizeof m.addr, "127.0.0.1:7001");
    m.capacity = 100;
    snprintf(m.version, sizeof m.version, "0.1.0");
    return m;
}

static struct hb_msg hb_msg_for(const char *id, uint64_t boot)
{
    struct hb_msg m;
    memset(&m, 0, sizeof m);
    m.type = HB_HEARTBEAT;
    snprintf(m.node_id, sizeof m.node_id, "%s", id);
    m.boot_id = boot;
    m.healthy = true;
    return m;
}

static void do_register(struct world *w, const char *id, uint64_t boot)
{
    struct hb_msg m = reg_msg(id, boot);
    assert_int_equal(registry_register(w->reg, &m), 0);
}

static void do_heartbeat(struct world *w, const char *id, uint64_t boot)
{
    struct hb_msg m = hb_msg_for(id, boot);
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_OK);
}

static enum node_state state_of(struct world *w, const char *id)
{
    const struct registry_node *n = registry_find(w->reg, id);
    assert_non_null(n);
    return n->state;
}

/* register + enough heartbeats, one interval apart, to be healthy */
static void make_healthy(struct world *w, const char *id, uint64_t boot)
{
    do_register(w, id, boot);
    w->clock.now += INTERVAL;
    do_heartbeat(w, id, boot);
    assert_int_equal(state_of(w, id), NODE_HEALTHY);
}

static void test_state_names(void **state)
{
    (void)state;
    assert_string_equal(node_state_name(NODE_JOINING), "joining");
    assert_string_equal(node_state_name(NODE_HEALTHY), "healthy");
    assert_string_equal(node_state_name(NODE_SUSPECT), "suspect");
    assert_string_equal(node_state_name(NODE_DOWN), "down");
    assert_string_equal(node_state_name(NODE_DRAINING), "draining");
    assert_string_equal(node_state_name(NODE_STATE_COUNT), "unknown");
    assert_string_equal(node_state_name((enum node_state)-1), "unknown");
}

static void test_register_new_node_joins(void **state)
{
    struct world *w = world_of(state);
    do_register(w, "n1", 7);
    const struct registry_node *n = registry_find(w->reg, "n1");
    assert_non_null(n);
    assert_int_equal(n->state, NODE_JOINING);
    assert_int_equal(n->good_streak, 1);
    assert_int_equal(n->boot_id, 7);
    assert_int_equal(n->capacity, 100);
    assert_string_equal(n->addr, "127.0.0.1:7001");
    assert_string_equal(n->version, "0.1.0");
    assert_int_equal(n->last_seen_ms, 1000);
    assert_int_equal(n->state_since_ms, 1000);
    assert_int_equal(registry_size(w->reg), 1);
    assert_int_equal(registry_rotation_size(w->reg), 0);
    assert_int_equal(registry_epoch(w->reg), 0);
    assert_int_equal(registry_count_state(w->reg, NODE_JOINING), 1);
    assert_int_equal(w->nchanges, 0); /* appearing is not a transition */
    assert_null(registry_find(w->reg, "n2"));
    assert_null(registry_find(w->reg, NULL));
    assert_null(registry_at(w->reg, 1));
    assert_null(registry_rotation_at(w->reg, 0));
    assert_ptr_equal(registry_at(w->reg, 0), n);
    assert_int_equal(registry_config(w->reg)->interval_ms, INTERVAL);
    assert_int_equal(registry_now(w->reg), 1000);
}

static void test_rise_one_is_healthy_at_register(void **state)
{
    (void)state;
    struct world *w = world_new(1, FALL);
    do_register(w, "n1", 1);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);
    assert_int_equal(registry_rotation_size(w->reg), 1);
    assert_int_equal(registry_epoch(w->reg), 1);
    assert_int_equal(w->nchanges, 1);
    assert_int_equal(w->changes[0].from, NODE_JOINING);
    assert_int_equal(w->changes[0].to, NODE_HEALTHY);
    assert_string_equal(registry_find(w->reg, "n1")->reason, "");

    /* a restart straight back into rotation is still a new member */
    w->clock.now += INTERVAL;
    do_register(w, "n1", 2);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);
    assert_int_equal(registry_find(w->reg, "n1")->boot_id, 2);
    assert_int_equal(registry_epoch(w->reg), 2);
    assert_int_equal(w->nchanges, 1);
    registry_free(w->reg);
    test_free(w);
}

/* A peer inventing ids cannot grow the registry past max_nodes; known ids
 * (a restart, a re-register) still get through. */
/* The certificate digest comes with REGISTER, the balancers a node reaches
 * with each heartbeat; a restart forgets the latter until it reports again. */
static void test_cert_and_balancers_kept(void **state)
{
    struct world *w = world_of(state);
    struct hb_msg m = reg_msg("a", 1);
    snprintf(m.cert_sha256, sizeof m.cert_sha256, "%064d", 7);
    assert_int_equal(registry_register(w->reg, &m), 0);
    struct hb_msg hb = hb_msg_for("a", 1);
    hb.nbalancers = 2;
    snprintf(hb.balancers[0].endpoint, sizeof hb.balancers[0].endpoint, "tcp://b1:7100");
    hb.balancers[0].reached = true;
    snprintf(hb.balancers[1].endpoint, sizeof hb.balancers[1].endpoint, "tcp://b2:7100");
    assert_int_equal(registry_heartbeat(w->reg, &hb), REGISTRY_OK);
    const struct registry_node *n = registry_find(w->reg, "a");
    assert_string_equal(n->cert_sha256, m.cert_sha256);
    assert_int_equal(n->nbalancers, 2);
    assert_string_equal(n->balancers[1].endpoint, "tcp://b2:7100");
    assert_true(n->balancers[0].reached);
    assert_false(n->balancers[1].reached);

    m = reg_msg("a", 2); /* a new process with no digest and no report yet */
    assert_int_equal(registry_register(w->reg, &m), 0);
    n = registry_find(w->reg, "a");
    assert_string_equal(n->cert_sha256, "");
    assert_int_equal(n->nbalancers, 0);
}

static void test_max_nodes(void **state)
{
    (void)state;
    struct world *w = test_calloc(1, sizeof *w);
    assert_non_null(w);
    struct registry_config cfg = {.interval_ms = INTERVAL, .fall = FALL, .rise = RISE,
                                  .forget_ms = FORGET, .max_nodes = 2};
    w->clock.now = 1000;
    w->reg = registry_new(&cfg, fake_now, &w->clock);
    assert_non_null(w->reg);
    struct hb_msg m = reg_msg("n1", 1);
    assert_int_equal(registry_register(w->reg, &m), 0);
    m = reg_msg("n2", 1);
    assert_int_equal(registry_register(w->reg, &m), 0);
    m = reg_msg("n3", 1);
    assert_int_equal(registry_register(w->reg, &m), REGISTRY_FULL);
    assert_int_equal(registry_size(w->reg), 2);
    assert_null(registry_find(w->reg, "n3"));
    m = reg_msg("n2", 2); /* n2 restarted: known id */
    assert_int_equal(registry_register(w->reg, &m), 0);
    registry_free(w->reg);
    test_free(w);
}

/* A balancer that just restarted admits registering nodes at once for its
 * first warmup_ms, and goes back to rise after that. */
static void test_warmup_admits_at_once(void **state)
{
    (void)state;
    struct world *w = test_calloc(1, sizeof *w);
    assert_non_null(w);
    struct registry_config cfg = {.interval_ms = INTERVAL, .fall = FALL, .rise = RISE,
                                  .forget_ms = FORGET, .warmup_ms = FALL * INTERVAL};
    w->clock.now = 1000;
    w->reg = registry_new(&cfg, fake_now, &w->clock);
    assert_non_null(w->reg);
    registry_on_change(w->reg, record_change, w);

    w->clock.now += INTERVAL; /* the nodes' first heartbeats got "reregister" */
    do_register(w, "n1", 1);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);
    assert_int_equal(registry_rotation_size(w->reg), 1);

    w->clock.now = 1000 + FALL * INTERVAL; /* warm-up over */
    do_register(w, "n2", 1);
    assert_int_equal(state_of(w, "n2"), NODE_JOINING);
    registry_free(w->reg);
    test_free(w);
}

/* After a partition heals, heartbeats queued in the old connection arrive
 * in one burst; they must not add up to `rise` (seen in the compose test). */
static void test_rise_ignores_burst_of_queued_heartbeats(void **state)
{
    (void)state;
    struct world *w = world_new(3, FALL);
    do_register(w, "n1", 1);
    for (int i = 0; i < 3; i++) {
        w->clock.now += INTERVAL;
        do_heartbeat(w, "n1", 1);
    }
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);

    w->clock.now += INTERVAL * FALL; /* partitioned */
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_DOWN);

    for (int i = 0; i < 5; i++) { /* the burst: all within a few ms */
        w->clock.now += 1;
        do_heartbeat(w, "n1", 1);
    }
    assert_int_equal(state_of(w, "n1"), NODE_DOWN);
    assert_int_equal(registry_find(w->reg, "n1")->good_streak, 1);

    /* heartbeats at the real pace bring it back after rise of them */
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 1);
    assert_int_equal(state_of(w, "n1"), NODE_DOWN);
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 1);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);
    registry_free(w->reg);
    test_free(w);
}

static void test_rise_needs_consecutive_heartbeats(void **state)
{
    (void)state;
    struct world *w = world_new(3, FALL);
    do_register(w, "n1", 1); /* streak 1 */
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 1); /* 2 */
    assert_int_equal(state_of(w, "n1"), NODE_JOINING);
    assert_int_equal(registry_find(w->reg, "n1")->good_streak, 2);

    /* a gap of more than 1.5 intervals restarts the count */
    w->clock.now += INTERVAL * 3 / 2 + 1;
    do_heartbeat(w, "n1", 1);
    assert_int_equal(registry_find(w->reg, "n1")->good_streak, 1);
    assert_int_equal(state_of(w, "n1"), NODE_JOINING);

    /* exactly 1.5 intervals still counts as in a row */
    w->clock.now += INTERVAL * 3 / 2;
    do_heartbeat(w, "n1", 1);
    assert_int_equal(registry_find(w->reg, "n1")->good_streak, 2);
    assert_int_equal(state_of(w, "n1"), NODE_JOINING);
    assert_int_equal(registry_rotation_size(w->reg), 0);

    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 1);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);
    assert_int_equal(registry_find(w->reg, "n1")->state_since_ms, w->clock.now);
    assert_int_equal(registry_find(w->reg, "n1")->heartbeats, 4);
    assert_int_equal(registry_rotation_size(w->reg), 1);
    assert_ptr_equal(registry_rotation_at(w->reg, 0), registry_find(w->reg, "n1"));
    registry_free(w->reg);
    test_free(w);
}

static void test_fall_exactly_at_fall_intervals(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "n1", 1);
    uint64_t seen = w->clock.now;

    w->clock.now = seen + INTERVAL * 3 / 2; /* not more than 1.5 intervals yet */
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);

    w->clock.now = seen + INTERVAL * 3 / 2 + 1;
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_SUSPECT);
    assert_string_equal(registry_find(w->reg, "n1")->reason, "missed heartbeat");
    assert_int_equal(registry_rotation_size(w->reg), 0);

    w->clock.now = seen + FALL * INTERVAL - 1;
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_SUSPECT);

    w->clock.now = seen + FALL * INTERVAL;
    registry_reap(w->reg);
    const struct registry_node *n = registry_find(w->reg, "n1");
    assert_int_equal(n->state, NODE_DOWN);
    assert_string_equal(n->reason, "no heartbeat for 750 ms");
    assert_int_equal(n->state_since_ms, seen + FALL * INTERVAL);
    assert_int_equal(registry_count_state(w->reg, NODE_DOWN), 1);
    assert_int_equal(registry_count_state(w->reg, NODE_HEALTHY), 0);
    assert_int_equal(registry_count_state(w->reg, NODE_SUSPECT), 0);
}

static void test_long_silence_goes_straight_down(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "n1", 1);
    size_t before = w->nchanges;
    w->clock.now += 10 * INTERVAL;
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_DOWN);
    assert_int_equal(w->nchanges, before + 1);
    assert_int_equal(w->changes[before].from, NODE_HEALTHY);
    assert_int_equal(w->changes[before].to, NODE_DOWN);
}

static void test_joining_falls_down(void **state)
{
    struct world *w = world_of(state);
    do_register(w, "n1", 1);
    w->clock.now += FALL * INTERVAL - 1;
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_JOINING); /* joining never turns suspect */
    w->clock.now += 1;
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_DOWN);
}

static void test_suspect_recovers_without_rise(void **state)
{
    (void)state;
    struct world *w = world_new(4, FALL);
    do_register(w, "n1", 1);
    for (int i = 0; i < 3; i++) {
        w->clock.now += INTERVAL;
        do_heartbeat(w, "n1", 1);
    }
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);
    uint64_t epoch = registry_epoch(w->reg);

    w->clock.now += 2 * INTERVAL;
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_SUSPECT);
    assert_int_equal(registry_epoch(w->reg), epoch + 1);

    do_heartbeat(w, "n1", 1); /* one heartbeat, even after a gap */
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);
    assert_string_equal(registry_find(w->reg, "n1")->reason, "");
    assert_int_equal(registry_epoch(w->reg), epoch + 2);
    assert_int_equal(registry_rotation_size(w->reg), 1);
    registry_free(w->reg);
    test_free(w);
}

static void test_down_needs_rise_to_return(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "n1", 1);
    w->clock.now += FALL * INTERVAL;
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_DOWN);

    w->clock.now += 10;
    do_heartbeat(w, "n1", 1); /* after the gap: streak 1 */
    assert_int_equal(state_of(w, "n1"), NODE_DOWN);
    assert_int_equal(registry_find(w->reg, "n1")->good_streak, 1);
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 1);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);
}

static void test_leave_drains(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "n1", 1);
    uint64_t epoch = registry_epoch(w->reg);
    struct hb_msg m = hb_msg_for("n1", 1);
    m.type = HB_LEAVE;
    assert_int_equal(registry_leave(w->reg, &m), REGISTRY_OK);
    const struct registry_node *n = registry_find(w->reg, "n1");
    assert_int_equal(n->state, NODE_DRAINING);
    assert_string_equal(n->reason, "draining");
    assert_int_equal(registry_rotation_size(w->reg), 0);
    assert_int_equal(registry_epoch(w->reg), epoch + 1);

    /* heartbeats, healthy ones included, keep it draining */
    for (int i = 0; i < 5; i++) {
        w->clock.now += INTERVAL;
        do_heartbeat(w, "n1", 1);
        assert_int_equal(state_of(w, "n1"), NODE_DRAINING);
    }
    /* so does a REGISTER from the same process */
    do_register(w, "n1", 1);
    assert_int_equal(state_of(w, "n1"), NODE_DRAINING);
    /* and reaping while it heartbeats */
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_DRAINING);
    assert_int_equal(registry_rotation_size(w->reg), 0);

    /* a new process under the same id starts over */
    w->clock.now += INTERVAL;
    do_register(w, "n1", 2);
    assert_int_equal(state_of(w, "n1"), NODE_JOINING);
    assert_int_equal(registry_find(w->reg, "n1")->good_streak, 1);
}

static void test_draining_flag(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "n1", 1);
    struct hb_msg m = hb_msg_for("n1", 1);
    m.draining = true;
    w->clock.now += INTERVAL;
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_OK);
    assert_int_equal(state_of(w, "n1"), NODE_DRAINING);
    assert_string_equal(registry_find(w->reg, "n1")->reason, "draining");
    assert_int_equal(registry_rotation_size(w->reg), 0);
    /* a draining joining node drains too */
    do_register(w, "n2", 1);
    m = hb_msg_for("n2", 1);
    m.draining = true;
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_OK);
    assert_int_equal(state_of(w, "n2"), NODE_DRAINING);
}

static void test_unhealthy_self_report(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "n1", 1);
    struct hb_msg m = hb_msg_for("n1", 1);
    m.healthy = false;
    snprintf(m.reason, sizeof m.reason, "worker 2 stalled");
    w->clock.now += INTERVAL;
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_OK);
    const struct registry_node *n = registry_find(w->reg, "n1");
    assert_int_equal(n->state, NODE_DOWN);
    assert_string_equal(n->reason, "worker 2 stalled");
    assert_false(n->reported_healthy);
    assert_int_equal(registry_rotation_size(w->reg), 0);

    /* still unhealthy, no reason given: the default text */
    m.reason[0] = '\0';
    w->clock.now += INTERVAL;
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_OK);
    assert_int_equal(n->state, NODE_DOWN);
    assert_string_equal(n->reason, "node reports unhealthy");

    /* a REGISTER from the same process does not bring it back */
    w->clock.now += INTERVAL;
    do_register(w, "n1", 1);
    w->clock.now += INTERVAL;
    do_register(w, "n1", 1);
    assert_int_equal(n->state, NODE_DOWN);

    /* back only after `rise` good heartbeats in a row */
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 1);
    assert_int_equal(n->state, NODE_DOWN);
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 1);
    assert_int_equal(n->state, NODE_HEALTHY);
    assert_string_equal(n->reason, "");
}

static void test_unhealthy_while_joining(void **state)
{
    struct world *w = world_of(state);
    do_register(w, "n1", 1);
    struct hb_msg m = hb_msg_for("n1", 1);
    m.healthy = false;
    w->clock.now += INTERVAL;
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_OK);
    assert_int_equal(state_of(w, "n1"), NODE_DOWN);
    assert_int_equal(w->nchanges, 1);
    assert_int_equal(w->changes[0].from, NODE_JOINING);
    assert_int_equal(w->changes[0].to, NODE_DOWN);
}

static void test_reregister_new_boot_resets(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "n1", 1);
    struct hb_msg m = hb_msg_for("n1", 1);
    m.sessions = 40;
    m.accepted = 1234;
    m.msgs_per_sec = 99.5;
    m.nworkers = 2;
    m.workers[1].ticks = 77;
    w->clock.now += INTERVAL;
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_OK);
    const struct registry_node *n = registry_find(w->reg, "n1");
    assert_int_equal(n->sessions, 40);
    assert_int_equal(n->accepted, 1234);
    assert_int_equal(n->nworkers, 2);
    assert_int_equal(n->workers[1].ticks, 77);
    uint64_t epoch = registry_epoch(w->reg);

    w->clock.now += 10;
    struct hb_msg r = reg_msg("n1", 2);
    snprintf(r.addr, sizeof r.addr, "10.0.0.2:7002");
    r.capacity = 5;
    assert_int_equal(registry_register(w->reg, &r), 0);
    assert_ptr_equal(registry_find(w->reg, "n1"), n);
    assert_int_equal(n->state, NODE_JOINING);
    assert_int_equal(n->boot_id, 2);
    assert_int_equal(n->good_streak, 1);
    assert_int_equal(n->sessions, 0);
    assert_int_equal(n->accepted, 0);
    assert_int_equal(n->nworkers, 0);
    assert_int_equal(n->heartbeats, 0);
    assert_int_equal(n->capacity, 5);
    assert_string_equal(n->addr, "10.0.0.2:7002");
    assert_int_equal(n->state_since_ms, w->clock.now);
    assert_int_equal(registry_rotation_size(w->reg), 0);
    assert_int_equal(registry_epoch(w->reg), epoch + 1);
    assert_int_equal(registry_size(w->reg), 1);

    /* the old process is now unknown */
    m = hb_msg_for("n1", 1);
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_UNKNOWN);
}

static void test_reregister_same_boot_keeps_state(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "n1", 1);
    size_t changes = w->nchanges;
    uint64_t epoch = registry_epoch(w->reg);
    w->clock.now += INTERVAL;
    struct hb_msg r = reg_msg("n1", 1);
    snprintf(r.addr, sizeof r.addr, "[::1]:7009");
    snprintf(r.version, sizeof r.version, "0.2.0");
    r.capacity = 7;
    assert_int_equal(registry_register(w->reg, &r), 0);
    const struct registry_node *n = registry_find(w->reg, "n1");
    assert_int_equal(n->state, NODE_HEALTHY);
    assert_string_equal(n->addr, "[::1]:7009");
    assert_string_equal(n->version, "0.2.0");
    assert_int_equal(n->capacity, 7);
    assert_int_equal(n->last_seen_ms, w->clock.now);
    assert_int_equal(w->nchanges, changes);
    /* same members, but one now at another address: clients must re-read */
    assert_int_equal(registry_epoch(w->reg), epoch + 1);
    assert_int_equal(registry_register(w->reg, &r), 0); /* the same again */
    assert_int_equal(registry_epoch(w->reg), epoch + 1);

    /* a down node: REGISTER advances the streak like a heartbeat */
    w->clock.now += FALL * INTERVAL;
    registry_reap(w->reg);
    assert_int_equal(n->state, NODE_DOWN);
    w->clock.now += 5;
    do_register(w, "n1", 1);
    assert_int_equal(n->state, NODE_DOWN);
    assert_int_equal(n->good_streak, 1);
    w->clock.now += INTERVAL;
    do_register(w, "n1", 1);
    assert_int_equal(n->state, NODE_HEALTHY);

    /* a suspect node keeps its state until a heartbeat, but is refreshed */
    w->clock.now += 2 * INTERVAL;
    registry_reap(w->reg);
    assert_int_equal(n->state, NODE_SUSPECT);
    do_register(w, "n1", 1);
    assert_int_equal(n->state, NODE_SUSPECT);
    w->clock.now += FALL * INTERVAL - 1;
    registry_reap(w->reg);
    assert_int_equal(n->state, NODE_SUSPECT);
}

static void test_joining_reregister_advances(void **state)
{
    struct world *w = world_of(state);
    do_register(w, "n1", 1);
    w->clock.now += INTERVAL;
    do_register(w, "n1", 1);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);
}

static void test_unknown_messages(void **state)
{
    struct world *w = world_of(state);
    struct hb_msg m = hb_msg_for("ghost", 1);
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_UNKNOWN);
    m.type = HB_LEAVE;
    assert_int_equal(registry_leave(w->reg, &m), REGISTRY_UNKNOWN);
    assert_int_equal(registry_size(w->reg), 0);

    make_healthy(w, "n1", 1);
    const struct registry_node *n = registry_find(w->reg, "n1");
    uint64_t seen = n->last_seen_ms;
    uint64_t beats = n->heartbeats;
    size_t changes = w->nchanges;
    w->clock.now += 100;
    m = hb_msg_for("n1", 99); /* another boot */
    m.draining = true;
    m.sessions = 55;
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_UNKNOWN);
    m.type = HB_LEAVE;
    assert_int_equal(registry_leave(w->reg, &m), REGISTRY_UNKNOWN);
    assert_int_equal(n->state, NODE_HEALTHY);
    assert_int_equal(n->last_seen_ms, seen);
    assert_int_equal(n->heartbeats, beats);
    assert_int_equal(n->sessions, 0);
    assert_int_equal(w->nchanges, changes);
}

static void test_forget(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "down", 1);
    make_healthy(w, "drain", 1);
    make_healthy(w, "live", 1);
    do_heartbeat(w, "down", 1);
    struct hb_msg m = hb_msg_for("drain", 1);
    assert_int_equal(registry_leave(w->reg, &m), REGISTRY_OK);
    uint64_t t0 = w->clock.now; /* both silent from here */

    /* "live" keeps heartbeating; the other two fall silent */
    size_t changes_before_forget = 0;
    uint64_t epoch_after_down = 0;
    while (w->clock.now + INTERVAL / 5 < t0 + FORGET) {
        w->clock.now += INTERVAL / 5;
        if (w->clock.now - registry_find(w->reg, "live")->last_seen_ms >= INTERVAL)
            do_heartbeat(w, "live", 1);
        registry_reap(w->reg);
        if (w->clock.now >= t0 + FALL * INTERVAL && epoch_after_down == 0) {
            epoch_after_down = registry_epoch(w->reg);
            changes_before_forget = w->nchanges;
        }
    }
    assert_int_equal(state_of(w, "down"), NODE_DOWN);
    assert_int_equal(state_of(w, "drain"), NODE_DRAINING);
    assert_int_equal(registry_size(w->reg), 3);

    w->clock.now = t0 + FORGET;
    registry_reap(w->reg);
    assert_null(registry_find(w->reg, "down"));
    assert_null(registry_find(w->reg, "drain"));
    assert_int_equal(state_of(w, "live"), NODE_HEALTHY);
    assert_int_equal(registry_size(w->reg), 1);
    assert_string_equal(registry_at(w->reg, 0)->id, "live");
    assert_int_equal(registry_count_state(w->reg, NODE_DOWN), 0);
    assert_int_equal(registry_count_state(w->reg, NODE_DRAINING), 0);
    /* forgetting nodes that were out of rotation is not a rotation change */
    assert_int_equal(registry_epoch(w->reg), epoch_after_down);
    assert_int_equal(w->nchanges, changes_before_forget);

    /* a forgotten node is unknown, and may register afresh */
    m = hb_msg_for("down", 1);
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_UNKNOWN);
    do_register(w, "down", 1);
    assert_int_equal(state_of(w, "down"), NODE_JOINING);
}

static void test_epoch_only_on_rotation_change(void **state)
{
    struct world *w = world_of(state);
    do_register(w, "n1", 1);
    do_register(w, "n2", 1);
    assert_int_equal(registry_epoch(w->reg), 0);
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 1); /* joins */
    assert_int_equal(registry_epoch(w->reg), 1);
    do_heartbeat(w, "n2", 1); /* joins */
    assert_int_equal(registry_epoch(w->reg), 2);
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 1); /* no change */
    do_heartbeat(w, "n2", 1);
    registry_reap(w->reg);
    assert_int_equal(registry_epoch(w->reg), 2);

    do_register(w, "n3", 1); /* joining: not in rotation */
    assert_int_equal(registry_epoch(w->reg), 2);
    w->clock.now += FALL * INTERVAL;
    registry_reap(w->reg); /* n1, n2 leave; n3 joining -> down, no change */
    assert_int_equal(registry_epoch(w->reg), 4);
    assert_int_equal(registry_count_state(w->reg, NODE_DOWN), 3);

    struct hb_msg m = hb_msg_for("n3", 1);
    assert_int_equal(registry_leave(w->reg, &m), REGISTRY_OK); /* down -> draining */
    assert_int_equal(registry_epoch(w->reg), 4);
}

static void test_reap_looks_at_every_node(void **state)
{
    struct world *w = world_of(state);
    char id[16];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "n%d", i);
        do_register(w, id, 1);
    }
    w->clock.now += INTERVAL;
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "n%d", i);
        do_heartbeat(w, id, 1);
    }
    assert_int_equal(registry_rotation_size(w->reg), 10);

    /* even-numbered nodes stay live, odd ones fall silent: one pass after
     * fall intervals must take every silent one down, wherever it sits */
    for (int step = 0; step < FALL; step++) {
        w->clock.now += INTERVAL;
        for (int i = 0; i < 10; i += 2) {
            snprintf(id, sizeof id, "n%d", i);
            do_heartbeat(w, id, 1);
        }
    }
    size_t before = w->nchanges;
    registry_reap(w->reg);
    assert_int_equal(w->nchanges, before + 5);
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "n%d", i);
        assert_int_equal(state_of(w, id), i % 2 ? NODE_DOWN : NODE_HEALTHY);
    }
    assert_int_equal(registry_rotation_size(w->reg), 5);
    for (size_t i = 0; i < registry_rotation_size(w->reg); i++)
        assert_int_equal(registry_rotation_at(w->reg, i)->state, NODE_HEALTHY);

    /* same for suspect: every silent node in one pass */
    w->clock.now += INTERVAL * 2;
    registry_reap(w->reg);
    assert_int_equal(registry_count_state(w->reg, NODE_SUSPECT), 5);
    assert_int_equal(registry_rotation_size(w->reg), 0);
}

static void test_change_callback_sequence(void **state)
{
    struct world *w = world_of(state);
    do_register(w, "a", 1);          /* no change */
    w->clock.now += INTERVAL;
    do_heartbeat(w, "a", 1);         /* 1: joining -> healthy */
    w->clock.now += 2 * INTERVAL;
    registry_reap(w->reg);           /* 2: healthy -> suspect */
    do_heartbeat(w, "a", 1);         /* 3: suspect -> healthy */
    do_heartbeat(w, "a", 1);         /* nothing */
    struct hb_msg m = hb_msg_for("a", 1);
    m.healthy = false;
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_OK); /* 4: healthy -> down */
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_OK); /* nothing */
    assert_int_equal(registry_leave(w->reg, &m), REGISTRY_OK);      /* 5: down -> draining */
    assert_int_equal(registry_leave(w->reg, &m), REGISTRY_OK);      /* nothing */
    do_register(w, "a", 2);          /* 6: draining -> joining */
    w->clock.now += FALL * INTERVAL;
    registry_reap(w->reg);           /* 7: joining -> down */

    static const struct {
        enum node_state from, to;
        size_t rotation_after;
    } want[] = {
        {NODE_JOINING, NODE_HEALTHY, 1}, {NODE_HEALTHY, NODE_SUSPECT, 0},
        {NODE_SUSPECT, NODE_HEALTHY, 1}, {NODE_HEALTHY, NODE_DOWN, 0},
        {NODE_DOWN, NODE_DRAINING, 0},   {NODE_DRAINING, NODE_JOINING, 0},
        {NODE_JOINING, NODE_DOWN, 0},
    };
    assert_int_equal(w->nchanges, sizeof want / sizeof want[0]);
    for (size_t i = 0; i < w->nchanges; i++) {
        assert_string_equal(w->changes[i].id, "a");
        assert_int_equal(w->changes[i].from, want[i].from);
        assert_int_equal(w->changes[i].to, want[i].to);
        assert_int_equal(w->changes[i].rotation_after, want[i].rotation_after);
    }
    assert_int_equal(w->changes[0].since, 1000 + INTERVAL);
    assert_int_equal(w->changes[6].since, w->clock.now);
}

static void test_no_callback_is_fine(void **state)
{
    struct world *w = world_of(state);
    registry_on_change(w->reg, NULL, NULL);
    make_healthy(w, "n1", 1);
    w->clock.now += FALL * INTERVAL;
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_DOWN);
    assert_int_equal(w->nchanges, 0);
}

static void test_clock_going_back_is_harmless(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "n1", 1);
    w->clock.now -= 500; /* a fake clock can; the real one cannot */
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);
}

/* Many nodes: the id index grows, survives removals (backward shift) and
 * finds every node; pointers stay valid while the tables are reallocated. */
static void test_many_nodes_index(void **state)
{
    (void)state;
    enum { N = 10000 };
    struct world *w = world_new(1, FALL);
    registry_on_change(w->reg, NULL, NULL);
    char id[32];
    do_register(w, "first", 1);
    const struct registry_node *first = registry_find(w->reg, "first");
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "node-%d", i);
        do_register(w, id, (uint64_t)i + 1);
    }
    assert_ptr_equal(registry_find(w->reg, "first"), first);
    assert_string_equal(first->id, "first");
    assert_int_equal(registry_size(w->reg), N + 1);
    assert_int_equal(registry_rotation_size(w->reg), N + 1);
    assert_int_equal(registry_epoch(w->reg), N + 1);

    /* every third node leaves, then is forgotten */
    for (int i = 0; i < N; i += 3) {
        snprintf(id, sizeof id, "node-%d", i);
        struct hb_msg m = hb_msg_for(id, (uint64_t)i + 1);
        assert_int_equal(registry_leave(w->reg, &m), REGISTRY_OK);
    }
    w->clock.now += FORGET;
    for (int i = 0; i < N; i++) {
        if (i % 3 == 0)
            continue;
        snprintf(id, sizeof id, "node-%d", i);
        do_heartbeat(w, id, (uint64_t)i + 1);
    }
    do_heartbeat(w, "first", 1);
    registry_reap(w->reg);

    size_t kept = 0;
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "node-%d", i);
        const struct registry_node *n = registry_find(w->reg, id);
        if (i % 3 == 0) {
            assert_null(n);
        } else {
            assert_non_null(n);
            assert_string_equal(n->id, id);
            assert_int_equal(n->boot_id, (uint64_t)i + 1);
            assert_int_equal(n->state, NODE_HEALTHY);
            kept++;
        }
    }
    assert_int_equal(registry_size(w->reg), kept + 1);
    assert_int_equal(registry_rotation_size(w->reg), kept + 1);
    assert_int_equal(registry_count_state(w->reg, NODE_HEALTHY), kept + 1);
    /* registry_at and rotation_at cover each node once */
    for (size_t i = 0; i < registry_size(w->reg); i++)
        assert_ptr_equal(registry_find(w->reg, registry_at(w->reg, i)->id), registry_at(w->reg, i));
    for (size_t i = 0; i < registry_rotation_size(w->reg); i++)
        assert_int_equal(registry_rotation_at(w->reg, i)->state, NODE_HEALTHY);

    /* and they can come back */
    for (int i = 0; i < N; i += 3) {
        snprintf(id, sizeof id, "node-%d", i);
        do_register(w, id, 5);
    }
    assert_int_equal(registry_size(w->reg), N + 1);
    registry_free(w->reg);
    test_free(w);
}

/* Rounds of joins and forgets against a plain array model: the index must
 * agree with it after every round (backward-shift deletion in long runs). */
static void test_index_churn(void **state)
{
    (void)state;
    enum { IDS = 600, ROUNDS = 30 };
    struct world *w = world_new(1, FALL);
    registry_on_change(w->reg, NULL, NULL);
    bool present[IDS] = {false};
    uint64_t rng = 0x1234567;
    char id[32];
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < IDS; i++) {
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            int roll = (int)(rng >> 60); /* 0..15 */
            snprintf(id, sizeof id, "c%d", i);
            if (!present[i] && roll < 6) {
                do_register(w, id, 1);
                present[i] = true;
            } else if (present[i] && roll < 5) {
                struct hb_msg m = hb_msg_for(id, 1);
                assert_int_equal(registry_leave(w->reg, &m), REGISTRY_OK);
                present[i] = false; /* forgotten below */
            }
        }
        w->clock.now += FORGET;
        size_t want = 0;
        for (int i = 0; i < IDS; i++) {
            if (!present[i])
                continue;
            snprintf(id, sizeof id, "c%d", i);
            do_heartbeat(w, id, 1);
            want++;
        }
        registry_reap(w->reg);
        assert_int_equal(registry_size(w->reg), want);
        assert_int_equal(registry_rotation_size(w->reg), want);
        for (int i = 0; i < IDS; i++) {
            snprintf(id, sizeof id, "c%d", i);
            const struct registry_node *n = registry_find(w->reg, id);
            if (present[i]) {
                assert_non_null(n);
                assert_string_equal(n->id, id);
            } else {
                assert_null(n);
            }
        }
    }
    registry_free(w->reg);
    test_free(w);
}

static void test_free_null(void **state)
{
    (void)state;
    registry_free(NULL);
}


/* ---- admin drain ---- */

static void test_admin_drain_and_undrain_at_once(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "n1", 1);
    make_healthy(w, "n2", 1);
    uint64_t epoch = registry_epoch(w->reg);
    assert_int_equal(registry_drain(w->reg, "n1"), REGISTRY_OK);
    const struct registry_node *n = registry_find(w->reg, "n1");
    assert_int_equal(n->state, NODE_DRAINING);
    assert_true(n->admin_drained);
    assert_string_equal(n->reason, "admin drain");
    assert_int_equal(registry_rotation_size(w->reg), 1);
    assert_string_equal(registry_rotation_at(w->reg, 0)->id, "n2");
    assert_int_equal(registry_epoch(w->reg), epoch + 1);
    assert_int_equal(w->changes[w->nchanges - 1].to, NODE_DRAINING);
    size_t changes = w->nchanges;

    /* heartbeats and reaps keep it draining, out of rotation; draining again
     * changes nothing */
    for (int i = 0; i < 10; i++) {
        w->clock.now += INTERVAL;
        do_heartbeat(w, "n1", 1);
        do_heartbeat(w, "n2", 1);
        registry_reap(w->reg);
    }
    assert_int_equal(registry_drain(w->reg, "n1"), REGISTRY_OK);
    assert_int_equal(state_of(w, "n1"), NODE_DRAINING);
    assert_int_equal(w->nchanges, changes);
    assert_int_equal(registry_find(w->reg, "n1")->heartbeats, 11);

    /* undrain of a node heartbeating normally: back at once */
    assert_int_equal(registry_undrain(w->reg, "n1"), REGISTRY_OK);
    n = registry_find(w->reg, "n1");
    assert_int_equal(n->state, NODE_HEALTHY);
    assert_false(n->admin_drained);
    assert_string_equal(n->reason, "");
    assert_int_equal(registry_rotation_size(w->reg), 2);
    /* undrain again, or of a node never drained: nothing happens */
    assert_int_equal(registry_undrain(w->reg, "n1"), REGISTRY_OK);
    assert_int_equal(registry_undrain(w->reg, "n2"), REGISTRY_OK);
    assert_int_equal(registry_rotation_size(w->reg), 2);
    assert_int_equal(registry_drain(w->reg, "nope"), REGISTRY_UNKNOWN);
    assert_int_equal(registry_undrain(w->reg, "nope"), REGISTRY_UNKNOWN);
    assert_int_equal(registry_drain(w->reg, NULL), REGISTRY_UNKNOWN);
}

static void test_admin_undrain_stale_goes_through_rise(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "n1", 1);
    assert_int_equal(registry_drain(w->reg, "n1"), REGISTRY_OK);
    /* silent for 2 intervals: not down yet, but not live either */
    w->clock.now += 2 * INTERVAL;
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_DRAINING);
    assert_int_equal(registry_undrain(w->reg, "n1"), REGISTRY_OK);
    assert_int_equal(state_of(w, "n1"), NODE_JOINING);
    assert_int_equal(registry_rotation_size(w->reg), 0);
    /* the heartbeat after the gap restarts the streak; the next one rises */
    w->clock.now += INTERVAL / 2;
    do_heartbeat(w, "n1", 1);
    assert_int_equal(state_of(w, "n1"), NODE_JOINING);
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 1);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);
}

static void test_admin_drained_node_dies_and_returns_drained(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "n1", 1);
    assert_int_equal(registry_drain(w->reg, "n1"), REGISTRY_OK);
    /* silence still takes a drained node down */
    w->clock.now += FALL * INTERVAL;
    registry_reap(w->reg);
    const struct registry_node *n = registry_find(w->reg, "n1");
    assert_int_equal(n->state, NODE_DOWN);
    assert_true(n->admin_drained);
    /* it comes back (rise heartbeats) as draining, not into the rotation */
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 1);
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 1);
    assert_int_equal(state_of(w, "n1"), NODE_DRAINING);
    assert_string_equal(registry_find(w->reg, "n1")->reason, "admin drain");
    assert_int_equal(registry_rotation_size(w->reg), 0);

    /* a restart of the process keeps the mark */
    w->clock.now += INTERVAL;
    do_register(w, "n1", 2);
    assert_int_equal(state_of(w, "n1"), NODE_JOINING);
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 2);
    assert_int_equal(state_of(w, "n1"), NODE_DRAINING);
    assert_int_equal(registry_rotation_size(w->reg), 0);

    /* draining a down node keeps it down */
    make_healthy(w, "n2", 1);
    struct hb_msg m = hb_msg_for("n2", 1);
    m.healthy = false;
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_OK);
    assert_int_equal(registry_drain(w->reg, "n2"), REGISTRY_OK);
    assert_int_equal(state_of(w, "n2"), NODE_DOWN);
    /* and undrain of a down node leaves it down */
    assert_int_equal(registry_undrain(w->reg, "n2"), REGISTRY_OK);
    assert_int_equal(state_of(w, "n2"), NODE_DOWN);
    assert_false(registry_find(w->reg, "n2")->admin_drained);
}

static void test_admin_undrain_keeps_self_draining(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "n1", 1);
    struct hb_msg m = hb_msg_for("n1", 1);
    m.type = HB_LEAVE;
    assert_int_equal(registry_leave(w->reg, &m), REGISTRY_OK);
    assert_int_equal(registry_drain(w->reg, "n1"), REGISTRY_OK);
    assert_string_equal(registry_find(w->reg, "n1")->reason, "draining");
    assert_int_equal(registry_undrain(w->reg, "n1"), REGISTRY_OK);
    assert_int_equal(state_of(w, "n1"), NODE_DRAINING);
    assert_int_equal(registry_rotation_size(w->reg), 0);
    /* a self-draining node is not watched for silence: it is forgotten */
    w->clock.now += FALL * INTERVAL;
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_DRAINING);
}

static void test_admin_drain_while_joining_and_suspect(void **state)
{
    struct world *w = world_of(state);
    do_register(w, "n1", 1);
    assert_int_equal(registry_drain(w->reg, "n1"), REGISTRY_OK);
    assert_int_equal(state_of(w, "n1"), NODE_DRAINING);
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 1); /* would have risen */
    assert_int_equal(state_of(w, "n1"), NODE_DRAINING);
    assert_int_equal(registry_undrain(w->reg, "n1"), REGISTRY_OK);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);

    /* suspect -> drain -> heartbeat keeps it draining */
    w->clock.now += 2 * INTERVAL;
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_SUSPECT);
    assert_int_equal(registry_drain(w->reg, "n1"), REGISTRY_OK);
    assert_int_equal(state_of(w, "n1"), NODE_DRAINING);
    do_heartbeat(w, "n1", 1);
    assert_int_equal(state_of(w, "n1"), NODE_DRAINING);
}

static void test_left_rotation_and_picks(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "n1", 1);
    const struct registry_node *n = registry_find(w->reg, "n1");
    assert_int_equal(n->left_rotation_ms, 0);
    uint64_t last = n->last_seen_ms;
    /* suspect at 1.5 intervals: that is when it leaves the rotation */
    w->clock.now = last + INTERVAL * 3 / 2 + 10;
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_SUSPECT);
    assert_int_equal(n->left_rotation_ms, last + INTERVAL * 3 / 2 + 10);
    w->clock.now = last + FALL * INTERVAL + 20;
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_DOWN);
    assert_int_equal(n->left_rotation_ms, last + INTERVAL * 3 / 2 + 10); /* unchanged */

    make_healthy(w, "n2", 1);
    const struct registry_node *p = registry_find(w->reg, "n2");
    assert_int_equal(p->picks, 0);
    registry_note_pick(w->reg, p);
    registry_note_pick(w->reg, p);
    assert_int_equal(registry_find(w->reg, "n2")->picks, 2);
}


/* ---- flap damping ---- */

#define FLAP_K 2
#define FLAP_W 20000
#define FLAP_HOLD 1000
#define FLAP_HOLD_MAX 3000

static int setup_flap(void **state)
{
    struct world *w = test_calloc(1, sizeof *w);
    assert_non_null(w);
    struct registry_config cfg = {.interval_ms = INTERVAL,
                                  .fall = FALL,
                                  .rise = RISE,
                                  .forget_ms = FORGET,
                                  .flap_count = FLAP_K,
                                  .flap_window_ms = FLAP_W,
                                  .flap_holdoff_ms = FLAP_HOLD,
                                  .flap_holdoff_max_ms = FLAP_HOLD_MAX};
    w->clock.now = 1000;
    w->reg = registry_new(&cfg, fake_now, &w->clock);
    assert_non_null(w->reg);
    registry_on_change(w->reg, record_change, w);
    *state = w;
    return 0;
}

/* Silence takes the node down; then heartbeats one interval apart until it
 * has risen (RISE of them). Returns the state it rose to. */
static enum node_state down_then_up(struct world *w, const char *id)
{
    w->clock.now += (uint64_t)INTERVAL * FALL;
    registry_reap(w->reg);
    assert_int_equal(state_of(w, id), NODE_DOWN);
    for (int i = 0; i < RISE; i++) {
        w->clock.now += INTERVAL;
        do_heartbeat(w, id, 1);
        registry_reap(w->reg);
    }
    return state_of(w, id);
}

/* Heartbeats every interval with a reap pass after each, for ms. */
static void keep_beating(struct world *w, const char *id, uint64_t ms)
{
    for (uint64_t t = 0; t < ms; t += INTERVAL) {
        w->clock.now += INTERVAL;
        do_heartbeat(w, id, 1);
        registry_reap(w->reg);
    }
}

static void test_flap_hold_grows_and_settles(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "n1", 1);
    /* K downs in the window are tolerated */
    for (int i = 0; i < FLAP_K; i++)
        assert_int_equal(down_then_up(w, "n1"), NODE_HEALTHY);
    /* the K+1st is one too many: held out, not in rotation */
    assert_int_equal(down_then_up(w, "n1"), NODE_FLAPPING);
    assert_int_equal(registry_rotation_size(w->reg), 0);
    assert_int_equal(registry_count_state(w->reg, NODE_FLAPPING), 1);
    assert_non_null(strstr(registry_find(w->reg, "n1")->reason, "held out for 1000 ms"));
    assert_string_equal(node_state_name(NODE_FLAPPING), "flapping");
    /* still held just before the hold ends, back right after */
    keep_beating(w, "n1", FLAP_HOLD - 2 * INTERVAL);
    assert_int_equal(state_of(w, "n1"), NODE_FLAPPING);
    keep_beating(w, "n1", 2 * INTERVAL);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);
    assert_int_equal(registry_rotation_size(w->reg), 1);

    /* going on flapping doubles the hold, up to the cap */
    assert_int_equal(down_then_up(w, "n1"), NODE_FLAPPING);
    assert_non_null(strstr(registry_find(w->reg, "n1")->reason, "held out for 2000 ms"));
    keep_beating(w, "n1", 2000);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);
    assert_int_equal(down_then_up(w, "n1"), NODE_FLAPPING);
    assert_non_null(strstr(registry_find(w->reg, "n1")->reason, "held out for 3000 ms"));
    keep_beating(w, "n1", 3000);
    assert_int_equal(down_then_up(w, "n1"), NODE_FLAPPING);
    assert_non_null(strstr(registry_find(w->reg, "n1")->reason, "held out for 3000 ms"));
    keep_beating(w, "n1", 3000);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);

    /* a whole window up: one down is just a down, and the back-off starts over */
    keep_beating(w, "n1", FLAP_W + INTERVAL);
    assert_int_equal(down_then_up(w, "n1"), NODE_HEALTHY);
    assert_int_equal(down_then_up(w, "n1"), NODE_HEALTHY);
    assert_int_equal(down_then_up(w, "n1"), NODE_FLAPPING);
    assert_non_null(strstr(registry_find(w->reg, "n1")->reason, "held out for 1000 ms"));
}

static void test_flapping_node_silent_goes_down_and_is_held_again(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "n1", 1);
    for (int i = 0; i < FLAP_K; i++)
        (void)down_then_up(w, "n1");
    assert_int_equal(down_then_up(w, "n1"), NODE_FLAPPING);
    /* silence while held: down as usual; back after the hold ran out, but it
     * went down again, so a new, longer hold */
    w->clock.now += FLAP_HOLD + (uint64_t)INTERVAL * FALL;
    assert_int_equal(down_then_up(w, "n1"), NODE_FLAPPING);
    assert_non_null(strstr(registry_find(w->reg, "n1")->reason, "held out for 2000 ms"));
    /* an unhealthy report while held is a down too */
    struct hb_msg m = hb_msg_for("n1", 1);
    m.healthy = false;
    w->clock.now += INTERVAL;
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_OK);
    assert_int_equal(state_of(w, "n1"), NODE_DOWN);
    /* admin drain takes a flapping node to draining, undrain respects the hold */
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 1);
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 1);
    assert_int_equal(state_of(w, "n1"), NODE_FLAPPING);
    assert_int_equal(registry_drain(w->reg, "n1"), REGISTRY_OK);
    assert_int_equal(state_of(w, "n1"), NODE_DRAINING);
    assert_int_equal(registry_undrain(w->reg, "n1"), REGISTRY_OK);
    assert_int_equal(state_of(w, "n1"), NODE_FLAPPING);
    keep_beating(w, "n1", FLAP_HOLD_MAX + INTERVAL);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);
}

static void test_flap_damping_off(void **state)
{
    struct world *w = world_of(state); /* plain setup: flap_count 0 */
    make_healthy(w, "n1", 1);
    for (int i = 0; i < 10; i++)
        assert_int_equal(down_then_up(w, "n1"), NODE_HEALTHY);
    assert_int_equal(registry_count_state(w->reg, NODE_FLAPPING), 0);
}

/* Heartbeats every interval from the nodes listed, a reap pass after each. */
static void beat_some(struct world *w, const char *const *ids, size_t n, uint64_t ms)
{
    for (uint64_t t = 0; t < ms; t += INTERVAL) {
        w->clock.now += INTERVAL;
        for (size_t i = 0; i < n; i++)
            do_heartbeat(w, ids[i], 1);
        registry_reap(w->reg);
    }
}

static struct world *world_flap_floor(uint32_t pct)
{
    struct world *w = test_calloc(1, sizeof *w);
    assert_non_null(w);
    struct registry_config cfg = {.interval_ms = INTERVAL,
                                  .fall = FALL,
                                  .rise = RISE,
                                  .forget_ms = FORGET,
                                  .flap_count = FLAP_K,
                                  .flap_window_ms = FLAP_W,
                                  .flap_holdoff_ms = 60000,
                                  .flap_holdoff_max_ms = 300000,
                                  .flap_min_rotation_percent = pct};
    w->clock.now = 1000;
    w->reg = registry_new(&cfg, fake_now, &w->clock);
    assert_non_null(w->reg);
    registry_on_change(w->reg, record_change, w);
    return w;
}

/* n1 and n2 go down and up together, K+1 times, while n3 stays; in the last
 * round n1 comes back one interval before n2. Returns the world. */
static struct world *flap_two_of_three(uint32_t pct)
{
    struct world *w = world_flap_floor(pct);
    static const char *const all[] = {"n1", "n2", "n3"};
    static const char *const n3[] = {"n3"};
    static const char *const n1n3[] = {"n1", "n3"};
    for (int i = 0; i < 3; i++)
        make_healthy(w, all[i], 1);
    for (int round = 0; round <= FLAP_K; round++) {
        beat_some(w, n3, 1, (uint64_t)INTERVAL * (FALL + 1));
        assert_int_equal(state_of(w, "n1"), NODE_DOWN);
        assert_int_equal(state_of(w, "n2"), NODE_DOWN);
        if (round == FLAP_K)
            beat_some(w, n1n3, 2, INTERVAL);
        beat_some(w, all, 3, (uint64_t)INTERVAL * RISE);
    }
    return w;
}

static void free_world(struct world *w)
{
    registry_free(w->reg);
    test_free(w);
}

/* Without a floor, flap holds of 60 s keep two of three live nodes out. */
static void test_flap_no_floor_holds_both(void **state)
{
    (void)state;
    struct world *w = flap_two_of_three(0);
    assert_int_equal(state_of(w, "n1"), NODE_FLAPPING);
    assert_int_equal(state_of(w, "n2"), NODE_FLAPPING);
    assert_int_equal(registry_rotation_size(w->reg), 1);
    free_world(w);
}

/* With a 50 % floor of the nodes up (3: at least 2 in rotation), the one
 * healthy longest (n1, one heartbeat ahead) is released, n2 stays held. */
static void test_flap_floor_releases_longest_healthy(void **state)
{
    (void)state;
    struct world *w = flap_two_of_three(50);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);
    assert_int_equal(state_of(w, "n2"), NODE_FLAPPING);
    assert_int_equal(registry_rotation_size(w->reg), 2);
    struct registry_guard_stats g;
    registry_guard_stats(w->reg, &g);
    assert_int_equal(g.flap_floor_releases, 1);
    /* n3 dies: the floor of two up nodes is 1, the rotation has n1 */
    static const char *const n1n2[] = {"n1", "n2"};
    beat_some(w, n1n2, 2, (uint64_t)INTERVAL * (FALL + 1));
    assert_int_equal(state_of(w, "n3"), NODE_DOWN);
    assert_int_equal(state_of(w, "n2"), NODE_FLAPPING);
    /* n1 dies too: n2 is all there is, released */
    static const char *const n2[] = {"n2"};
    beat_some(w, n2, 1, (uint64_t)INTERVAL * (FALL + 1));
    assert_int_equal(state_of(w, "n1"), NODE_DOWN);
    assert_int_equal(state_of(w, "n2"), NODE_HEALTHY);
    assert_int_equal(registry_rotation_size(w->reg), 1);
    registry_guard_stats(w->reg, &g);
    assert_int_equal(g.flap_floor_releases, 2);
    free_world(w);
}

/* A single flapping node is never held out of an empty rotation: it is
 * released as it rises. */
static void test_flap_floor_never_empties(void **state)
{
    (void)state;
    struct world *w = world_flap_floor(1);
    make_healthy(w, "n1", 1);
    for (int i = 0; i < FLAP_K; i++)
        assert_int_equal(down_then_up(w, "n1"), NODE_HEALTHY);
    assert_int_equal(down_then_up(w, "n1"), NODE_HEALTHY);
    assert_int_equal(registry_rotation_size(w->reg), 1);
    /* it went through flapping: the change log shows the hold and its end */
    assert_true(w->nchanges >= 2);
    assert_int_equal(w->changes[w->nchanges - 2].to, NODE_FLAPPING);
    assert_int_equal(w->changes[w->nchanges - 1].to, NODE_HEALTHY);
    free_world(w);
}

/* ---- panic ---- */

#define PANIC_NODES 10

struct panic_log {
    int entered, left;
    char last[256];
};

static void record_panic(void *ctx, bool entered, const char *reason)
{
    struct panic_log *p = ctx;
    if (entered)
        p->entered++;
    else
        p->left++;
    snprintf(p->last, sizeof p->last, "%s", reason);
}

static int setup_panic(void **state)
{
    struct world *w = test_calloc(1, sizeof *w);
    assert_non_null(w);
    struct registry_config cfg = {.interval_ms = INTERVAL,
                                  .fall = FALL,
                                  .rise = 1,
                                  .forget_ms = FORGET,
                                  .panic_percent = 50};
    w->clock.now = 1000;
    w->reg = registry_new(&cfg, fake_now, &w->clock);
    assert_non_null(w->reg);
    *state = w;
    return 0;
}

static void panic_ids(char ids[PANIC_NODES][8])
{
    for (int i = 0; i < PANIC_NODES; i++)
        snprintf(ids[i], 8, "p%d", i);
}

/* Time moves in reap periods (interval/5); node i heartbeats when its phase
 * comes round, i.e. the nodes' heartbeats are spread over the interval, and
 * only while alive[i]. */
static void run_spread(struct world *w, const bool *alive, uint64_t ms)
{
    char ids[PANIC_NODES][8];
    panic_ids(ids);
    uint64_t step = INTERVAL / 5;
    for (uint64_t t = 0; t < ms; t += step) {
        w->clock.now += step;
        for (int i = 0; i < PANIC_NODES; i++)
            if (alive[i] && (w->clock.now / step) % 5 == (uint64_t)(i % 5)) {
                struct hb_msg m = hb_msg_for(ids[i], 1);
                assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_OK);
            }
        registry_reap(w->reg);
    }
}

static void panic_start(struct world *w, bool *alive)
{
    char ids[PANIC_NODES][8];
    panic_ids(ids);
    for (int i = 0; i < PANIC_NODES; i++) {
        do_register(w, ids[i], 1);
        alive[i] = true;
    }
    run_spread(w, alive, 4 * INTERVAL);
    assert_int_equal(registry_rotation_size(w->reg), PANIC_NODES);
}

static void test_panic_keeps_silent_majority(void **state)
{
    struct world *w = world_of(state);
    struct panic_log log = {0};
    registry_on_panic(w->reg, record_panic, &log);
    bool alive[PANIC_NODES];
    panic_start(w, alive);
    assert_false(registry_panic(w->reg));

    /* 6 of 10 fall silent at once (the balancer's side of the network) */
    for (int i = 0; i < 6; i++)
        alive[i] = false;
    run_spread(w, alive, 10 * INTERVAL);
    assert_true(registry_panic(w->reg));
    assert_int_equal(log.entered, 1);
    assert_int_equal(log.left, 0);
    assert_non_null(strstr(registry_panic_reason(w->reg), "6 of 10"));
    /* the last healthy set stays in rotation, including those silence had
     * already taken out before the share was crossed */
    assert_int_equal(registry_rotation_size(w->reg), PANIC_NODES);
    assert_int_equal(registry_panic_held(w->reg), 6);
    assert_true(registry_panic_since(w->reg) > 0);

    /* heartbeats resume: panic ends, once */
    for (int i = 0; i < 6; i++)
        alive[i] = true;
    run_spread(w, alive, 2 * INTERVAL);
    assert_false(registry_panic(w->reg));
    assert_int_equal(log.entered, 1);
    assert_int_equal(log.left, 1);
    assert_non_null(strstr(log.last, "heartbeats resumed"));
    assert_string_equal(registry_panic_reason(w->reg), "");
    assert_int_equal(registry_panic_held(w->reg), 0);
    assert_int_equal(registry_rotation_size(w->reg), PANIC_NODES);
}

static void test_panic_not_for_a_minority(void **state)
{
    struct world *w = world_of(state);
    struct panic_log log = {0};
    registry_on_panic(w->reg, record_panic, &log);
    bool alive[PANIC_NODES];
    panic_start(w, alive);
    /* exactly half is not more than half: they go down as usual */
    for (int i = 0; i < 5; i++)
        alive[i] = false;
    run_spread(w, alive, 10 * INTERVAL);
    assert_false(registry_panic(w->reg));
    assert_int_equal(log.entered, 0);
    assert_int_equal(registry_rotation_size(w->reg), 5);
    assert_int_equal(registry_count_state(w->reg, NODE_DOWN), 5);
}

static void test_panic_ignores_leave_and_unhealthy(void **state)
{
    struct world *w = world_of(state);
    struct panic_log log = {0};
    registry_on_panic(w->reg, record_panic, &log);
    bool alive[PANIC_NODES];
    panic_start(w, alive);
    char ids[PANIC_NODES][8];
    panic_ids(ids);
    /* 4 leave and 4 say they are unhealthy: they said so, no silence */
    for (int i = 0; i < 8; i++) {
        struct hb_msg m = hb_msg_for(ids[i], 1);
        if (i < 4) {
            m.type = HB_LEAVE;
            assert_int_equal(registry_leave(w->reg, &m), REGISTRY_OK);
        } else {
            m.healthy = false;
            assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_OK);
        }
        alive[i] = false;
    }
    run_spread(w, alive, 10 * INTERVAL);
    assert_false(registry_panic(w->reg));
    assert_int_equal(registry_rotation_size(w->reg), 2);
    assert_int_equal(log.entered, 0);
}

/* All silent: panic keeps the last healthy set, each node up to the hold
 * bound (the default, REGISTRY_PANIC_HOLD_DEFAULT_MS, as setup_panic sets
 * none), then lets it go; panic ends and does not come back for them. */
static void test_panic_all_silent_is_bounded(void **state)
{
    struct world *w = world_of(state);
    struct panic_log log = {0};
    registry_on_panic(w->reg, record_panic, &log);
    bool alive[PANIC_NODES];
    panic_start(w, alive);
    for (int i = 0; i < PANIC_NODES; i++)
        alive[i] = false;
    assert_int_equal(registry_panic_hold_max(w->reg), REGISTRY_PANIC_HOLD_DEFAULT_MS);
    /* well inside the bound: all kept */
    run_spread(w, alive, REGISTRY_PANIC_HOLD_DEFAULT_MS - 2 * INTERVAL);
    assert_true(registry_panic(w->reg));
    assert_int_equal(registry_rotation_size(w->reg), PANIC_NODES);
    assert_int_equal(registry_panic_held(w->reg), PANIC_NODES);
    /* a node that leaves still leaves */
    struct hb_msg m = hb_msg_for("p3", 1);
    assert_int_equal(registry_leave(w->reg, &m), REGISTRY_OK);
    assert_int_equal(registry_rotation_size(w->reg), PANIC_NODES - 1);
    /* past the bound: none is held, panic is over, and stays over */
    run_spread(w, alive, 3 * INTERVAL);
    assert_int_equal(registry_rotation_size(w->reg), 0);
    assert_false(registry_panic(w->reg));
    assert_int_equal(log.entered, 1);
    assert_int_equal(log.left, 1);
    assert_non_null(strstr(log.last, "panic hold bound"));
    struct registry_guard_stats g;
    registry_guard_stats(w->reg, &g);
    assert_int_equal(g.panic_expired, PANIC_NODES - 1);
    assert_int_equal(registry_count_state(w->reg, NODE_DOWN), PANIC_NODES - 1);
    assert_non_null(strstr(registry_find(w->reg, "p0")->reason, "panic holds a silent node"));
    run_spread(w, alive, 20 * INTERVAL);
    assert_false(registry_panic(w->reg));
    assert_int_equal(log.entered, 1);
    assert_int_equal(registry_rotation_size(w->reg), 0);
}

/* An allowed key registers ids that make most of the rotation and goes
 * quiet: panic holds them at most panic_hold_max_ms, then the real nodes
 * are the rotation again. */
static void test_panic_hold_bound_configured(void **state)
{
    (void)state;
    struct world w0 = {0};
    struct world *w = &w0;
    struct registry_config cfg = {.interval_ms = INTERVAL, .fall = FALL, .rise = 1,
                                  .forget_ms = FORGET, .panic_percent = 50,
                                  .panic_hold_max_ms = 2000};
    w->clock.now = 1000;
    w->reg = registry_new(&cfg, fake_now, &w->clock);
    assert_non_null(w->reg);
    bool alive[PANIC_NODES];
    panic_start(w, alive);
    for (int i = 0; i < 8; i++)
        alive[i] = false;
    run_spread(w, alive, 2000 - 2 * INTERVAL);
    assert_true(registry_panic(w->reg));
    assert_int_equal(registry_rotation_size(w->reg), PANIC_NODES);
    run_spread(w, alive, 3 * INTERVAL);
    assert_false(registry_panic(w->reg));
    assert_int_equal(registry_rotation_size(w->reg), 2);
    assert_int_equal(state_of(w, "p8"), NODE_HEALTHY);
    assert_int_equal(state_of(w, "p9"), NODE_HEALTHY);
    registry_free(w->reg);
}

/* ---- client reports and ejection ---- */

#define REPORT_QUORUM 3
#define REPORT_WINDOW 10000
#define REPORT_EJECT 30000
#define REPORT_EJECT_MAX 120000
#define REPORT_RATE 5
#define REPORT_NODES 4

static int setup_reports(void **state)
{
    struct world *w = test_calloc(1, sizeof *w);
    assert_non_null(w);
    struct registry_config cfg = {.interval_ms = INTERVAL,
                                  .fall = FALL,
                                  .rise = RISE,
                                  .forget_ms = FORGET,
                                  .report_quorum = REPORT_QUORUM,
                                  .report_window_ms = REPORT_WINDOW,
                                  .report_eject_ms = REPORT_EJECT,
                                  .report_eject_max_ms = REPORT_EJECT_MAX,
                                  .report_max_eject_percent = 50,
                                  .report_rate = REPORT_RATE};
    w->clock.now = 1000;
    w->reg = registry_new(&cfg, fake_now, &w->clock);
    assert_non_null(w->reg);
    registry_on_change(w->reg, record_change, w);
    *state = w;
    char id[8];
    for (int i = 0; i < REPORT_NODES; i++) {
        snprintf(id, sizeof id, "n%d", i);
        do_register(w, id, 1);
    }
    w->clock.now += INTERVAL;
    for (int i = 0; i < REPORT_NODES; i++) {
        snprintf(id, sizeof id, "n%d", i);
        do_heartbeat(w, id, 1);
    }
    assert_int_equal(registry_rotation_size(w->reg), REPORT_NODES);
    return 0;
}

/* Every node heartbeats every interval, with a reap pass after, for ms. */
static void all_beating(struct world *w, uint64_t ms)
{
    char id[8];
    for (uint64_t t = 0; t < ms; t += INTERVAL) {
        w->clock.now += INTERVAL;
        for (int i = 0; i < REPORT_NODES; i++) {
            snprintf(id, sizeof id, "n%d", i);
            do_heartbeat(w, id, 1);
        }
        registry_reap(w->reg);
    }
}

static struct registry_report_outcome report_ok(struct world *w, const char *id, const char *who)
{
    struct registry_report_outcome out = {0};
    assert_int_equal(registry_report(w->reg, id, who, REPORT_TLS, &out), REGISTRY_REPORT_OK);
    return out;
}

static void test_report_names(void **state)
{
    (void)state;
    assert_string_equal(node_state_name(NODE_EJECTED), "ejected");
    assert_string_equal(node_state_name(NODE_FLAPPING), "flapping");
    enum report_reason r;
    const char *names[] = {"connect", "tls", "timeout", "protocol"};
    for (int i = 0; i < REPORT_REASON_COUNT; i++) {
        assert_string_equal(report_reason_name((enum report_reason)i), names[i]);
        assert_int_equal(report_reason_parse(names[i], &r), 0);
        assert_int_equal(r, i);
    }
    assert_string_equal(report_reason_name(REPORT_REASON_COUNT), "unknown");
    assert_int_equal(report_reason_parse("TLS", &r), -1);
    assert_int_equal(report_reason_parse("", &r), -1);
    assert_int_equal(report_reason_parse(NULL, &r), -1);
}

static void test_report_quorum_ejects_then_returns(void **state)
{
    struct world *w = world_of(state);
    uint64_t epoch = registry_epoch(w->reg);
    struct registry_report_outcome o = report_ok(w, "n0", "10.0.0.1");
    assert_int_equal(o.reporters, 1);
    assert_false(o.ejected);
    o = report_ok(w, "n0", "10.0.0.1"); /* the same reporter again counts once */
    assert_int_equal(o.reporters, 1);
    o = report_ok(w, "n0", "10.0.0.2");
    assert_int_equal(o.reporters, 2);
    assert_int_equal(registry_reporters(w->reg, registry_find(w->reg, "n0")), 2);
    assert_int_equal(state_of(w, "n0"), NODE_HEALTHY);
    o = report_ok(w, "n0", "10.0.0.3");
    assert_int_equal(o.reporters, 3);
    assert_true(o.ejected);
    assert_int_equal(state_of(w, "n0"), NODE_EJECTED);
    assert_int_equal(registry_rotation_size(w->reg), REPORT_NODES - 1);
    assert_true(registry_epoch(w->reg) > epoch);
    const struct registry_node *n = registry_find(w->reg, "n0");
    assert_non_null(strstr(n->reason, "reported unreachable by 3 clients"));
    assert_non_null(strstr(n->reason, "tls"));
    assert_int_equal(registry_count_state(w->reg, NODE_EJECTED), 1);
    /* the reports that ejected it are spent */
    assert_int_equal(registry_reporters(w->reg, n), 0);
    /* a further report says it is ejected */
    o = report_ok(w, "n0", "10.0.0.4");
    assert_true(o.ejected);

    /* heartbeats go on: it stays out for the ejection time, then is back */
    all_beating(w, REPORT_EJECT - 2 * INTERVAL);
    assert_int_equal(state_of(w, "n0"), NODE_EJECTED);
    all_beating(w, 3 * INTERVAL);
    assert_int_equal(state_of(w, "n0"), NODE_HEALTHY);
    assert_int_equal(registry_rotation_size(w->reg), REPORT_NODES);

    struct registry_report_stats st;
    registry_report_stats(w->reg, &st);
    assert_int_equal(st.received, 5);
    assert_int_equal(st.ejections, 1);
    assert_int_equal(st.capped, 0);
}

static void test_report_window(void **state)
{
    struct world *w = world_of(state);
    report_ok(w, "n1", "10.0.0.1");
    all_beating(w, 6000);
    report_ok(w, "n1", "10.0.0.2");
    all_beating(w, 5000); /* the first report is now older than the window */
    struct registry_report_outcome o = report_ok(w, "n1", "10.0.0.3");
    assert_int_equal(o.reporters, 2);
    assert_false(o.ejected);
    o = report_ok(w, "n1", "10.0.0.4");
    assert_int_equal(o.reporters, 3);
    assert_true(o.ejected);
}

static void test_report_one_reporter_cannot_eject(void **state)
{
    struct world *w = world_of(state);
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < REPORT_RATE; i++) {
            struct registry_report_outcome o = report_ok(w, "n2", "10.9.9.9");
            assert_int_equal(o.reporters, 1);
            assert_false(o.ejected);
        }
        /* over the rate within the same second */
        assert_int_equal(registry_report(w->reg, "n2", "10.9.9.9", REPORT_CONNECT, NULL),
                         REGISTRY_REPORT_LIMITED);
        /* another reporter is not limited by it */
        if (round == 0)
            assert_int_equal(registry_report(w->reg, "n3", "10.9.9.8", REPORT_CONNECT, NULL),
                             REGISTRY_REPORT_OK);
        all_beating(w, 1000);
    }
    assert_int_equal(state_of(w, "n2"), NODE_HEALTHY);
    struct registry_report_stats st;
    registry_report_stats(w->reg, &st);
    assert_int_equal(st.rate_limited, 20);
    assert_int_equal(st.received, 20 * REPORT_RATE + 1);
    assert_int_equal(st.ejections, 0);
}

static void test_report_max_eject_percent(void **state)
{
    struct world *w = world_of(state);
    const char *who[] = {"10.0.0.1", "10.0.0.2", "10.0.0.3"};
    const char *ids[] = {"n0", "n1", "n2", "n3"};
    for (int k = 0; k < REPORT_NODES; k++)
        for (int i = 0; i < 3; i++)
            report_ok(w, ids[k], who[i]);
    /* 50 % of 4: two ejected, the others refused */
    assert_int_equal(registry_count_state(w->reg, NODE_EJECTED), 2);
    assert_int_equal(registry_rotation_size(w->reg), 2);
    struct registry_report_stats st;
    registry_report_stats(w->reg, &st);
    assert_int_equal(st.ejections, 2);
    assert_int_equal(st.capped, 2);
    /* the ejected ones come back after the ejection time */
    all_beating(w, REPORT_EJECT + INTERVAL);
    assert_int_equal(registry_count_state(w->reg, NODE_EJECTED), 0);
}

static void test_report_slots_bounded_and_unknown(void **state)
{
    struct world *w = world_of(state);
    assert_int_equal(registry_drain(w->reg, "n3"), REGISTRY_OK); /* out: never ejected */
    char who[32];
    struct registry_report_outcome o = {0};
    for (int i = 0; i < 3 * REGISTRY_REPORT_SLOTS; i++) {
        snprintf(who, sizeof who, "10.1.0.%d", i);
        o = report_ok(w, "n3", who);
    }
    assert_int_equal(o.reporters, REGISTRY_REPORT_SLOTS);
    assert_false(o.ejected);
    assert_int_equal(state_of(w, "n3"), NODE_DRAINING);
    assert_int_equal(registry_report(w->reg, "nope", "10.0.0.1", REPORT_TLS, &o),
                     REGISTRY_REPORT_UNKNOWN);
    assert_int_equal(registry_report(w->reg, NULL, "10.0.0.1", REPORT_TLS, NULL),
                     REGISTRY_REPORT_UNKNOWN);
    struct registry_report_stats st;
    registry_report_stats(w->reg, &st);
    assert_int_equal(st.unknown, 2);
}

static void test_report_quorum_off(void **state)
{
    (void)state;
    struct fake_clock clock = {1000};
    struct registry_config cfg = {.interval_ms = INTERVAL, .fall = FALL, .rise = 1,
                                  .forget_ms = FORGET, .report_window_ms = REPORT_WINDOW,
                                  .report_max_eject_percent = 100};
    struct registry *r = registry_new(&cfg, fake_now, &clock);
    assert_non_null(r);
    struct hb_msg m = reg_msg("a", 1);
    assert_int_equal(registry_register(r, &m), 0);
    struct hb_msg m2 = reg_msg("b", 1);
    assert_int_equal(registry_register(r, &m2), 0);
    struct registry_report_outcome o = {0};
    for (int i = 0; i < 6; i++) {
        char who[16];
        snprintf(who, sizeof who, "10.0.0.%d", i);
        assert_int_equal(registry_report(r, "a", who, REPORT_CONNECT, &o), REGISTRY_REPORT_OK);
    }
    assert_int_equal(o.reporters, 6);
    assert_false(o.ejected);
    assert_int_equal(registry_find(r, "a")->state, NODE_HEALTHY);
    registry_free(r);
}

/* Reports three distinct clients about id at the current time. */
static void eject_now(struct world *w, const char *id)
{
    report_ok(w, id, "10.0.0.1");
    report_ok(w, id, "10.0.0.2");
    report_ok(w, id, "10.0.0.3");
    assert_int_equal(state_of(w, id), NODE_EJECTED);
}

static void test_report_ejection_doubles_and_settles(void **state)
{
    struct world *w = world_of(state);
    uint64_t len[] = {REPORT_EJECT, 2 * REPORT_EJECT, REPORT_EJECT_MAX, REPORT_EJECT_MAX};
    for (int k = 0; k < 4; k++) {
        eject_now(w, "n0");
        char want[64];
        snprintf(want, sizeof want, "held out for %llu ms", (unsigned long long)len[k]);
        assert_non_null(strstr(registry_find(w->reg, "n0")->reason, want));
        all_beating(w, len[k] - INTERVAL);
        assert_int_equal(state_of(w, "n0"), NODE_EJECTED);
        all_beating(w, 2 * INTERVAL);
        assert_int_equal(state_of(w, "n0"), NODE_HEALTHY);
    }
    /* well after the last ejection: back to the first step */
    all_beating(w, REPORT_EJECT_MAX + 1000);
    eject_now(w, "n0");
    assert_non_null(strstr(registry_find(w->reg, "n0")->reason, "held out for 30000 ms"));
}

static void test_ejected_node_dies_drains_restarts(void **state)
{
    struct world *w = world_of(state);
    /* an unhealthy report from an ejected node takes it down */
    eject_now(w, "n0");
    struct hb_msg m = hb_msg_for("n0", 1);
    m.healthy = false;
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_OK);
    assert_int_equal(state_of(w, "n0"), NODE_DOWN);
    /* an admin drain takes an ejected node to draining */
    eject_now(w, "n1");
    assert_int_equal(registry_drain(w->reg, "n1"), REGISTRY_OK);
    assert_int_equal(state_of(w, "n1"), NODE_DRAINING);
    /* a new process behind the id is not ejected: it joins */
    eject_now(w, "n2");
    do_register(w, "n2", 2);
    assert_int_equal(state_of(w, "n2"), NODE_JOINING);
    assert_int_equal(registry_reporters(w->reg, registry_find(w->reg, "n2")), 0);
    /* the last node in rotation cannot be ejected (50 % of one is none) */
    report_ok(w, "n3", "10.0.0.1");
    report_ok(w, "n3", "10.0.0.2");
    report_ok(w, "n3", "10.0.0.3");
    assert_int_equal(state_of(w, "n3"), NODE_HEALTHY);
    struct registry_report_stats st;
    registry_report_stats(w->reg, &st);
    assert_int_equal(st.capped, 1);
    /* silence still takes an ejected node down */
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n2", 2);
    do_heartbeat(w, "n3", 1);
    assert_int_equal(state_of(w, "n2"), NODE_HEALTHY);
    eject_now(w, "n3");
    for (int i = 0; i < FALL; i++) {
        w->clock.now += INTERVAL;
        do_heartbeat(w, "n2", 2);
        registry_reap(w->reg);
    }
    assert_int_equal(state_of(w, "n3"), NODE_DOWN);
    assert_int_equal(state_of(w, "n2"), NODE_HEALTHY);
}

/* An ejection lasts its time: a short silence or one unhealthy heartbeat
 * (down meanwhile) does not end it, and the node rising again goes back to
 * ejected until the time is over. */
static void test_ejection_survives_down(void **state)
{
    struct world *w = world_of(state);
    eject_now(w, "n0");
    uint64_t ejected_at = w->clock.now;
    /* silent for fall intervals while the others beat on: down */
    for (int i = 0; i < FALL; i++) {
        w->clock.now += INTERVAL;
        for (int k = 1; k < REPORT_NODES; k++) {
            char id[8];
            snprintf(id, sizeof id, "n%d", k);
            do_heartbeat(w, id, 1);
        }
        registry_reap(w->reg);
    }
    assert_int_equal(state_of(w, "n0"), NODE_DOWN);
    /* heartbeats again: risen, but still ejected */
    all_beating(w, 2 * INTERVAL);
    assert_int_equal(state_of(w, "n0"), NODE_EJECTED);
    assert_non_null(strstr(registry_find(w->reg, "n0")->reason, "held out for"));
    assert_int_equal(registry_rotation_size(w->reg), REPORT_NODES - 1);
    /* one unhealthy heartbeat, then good ones: still ejected */
    w->clock.now += INTERVAL;
    struct hb_msg m = hb_msg_for("n0", 1);
    m.healthy = false;
    assert_int_equal(registry_heartbeat(w->reg, &m), REGISTRY_OK);
    assert_int_equal(state_of(w, "n0"), NODE_DOWN);
    all_beating(w, 3 * INTERVAL);
    assert_int_equal(state_of(w, "n0"), NODE_EJECTED);
    /* until the ejection time is over, then back in rotation */
    all_beating(w, ejected_at + REPORT_EJECT - w->clock.now - INTERVAL);
    assert_int_equal(state_of(w, "n0"), NODE_EJECTED);
    all_beating(w, 2 * INTERVAL);
    assert_int_equal(state_of(w, "n0"), NODE_HEALTHY);
    /* ejected again soon after: the down in between did not reset the
     * doubling */
    eject_now(w, "n0");
    assert_non_null(strstr(registry_find(w->reg, "n0")->reason, "held out for 60000 ms"));
}

/* IPv6 reporters count by /64: one host holding a /64 is one vote and one
 * rate; another /64 is another reporter. IPv4 counts per address. */
/* Finds n IPv4 addresses that the rate table files in the same slot. */
static void colliding_reporters(char out[][32], size_t n)
{
    size_t found = 0;
    uint64_t slot = registry_client_key("10.1.0.0") % REGISTRY_REPORTER_TABLE;
    for (unsigned i = 0; found < n && i < 1u << 24; i++) {
        char a[32];
        snprintf(a, sizeof a, "10.%u.%u.%u", 1 + (i >> 16), (i >> 8) & 255, i & 255);
        if (registry_client_key(a) % REGISTRY_REPORTER_TABLE == slot)
            snprintf(out[found++], 32, "%s", a);
    }
    assert_int_equal(found, n);
}

/* Two addresses in one slot of the rate table, alternating: each is held
 * to report_rate (a colliding address once reset the slot's count, and
 * 100 of 100 went through). More colliders than ways share a way: together
 * they still get no more than report_rate a second per way. */
static void test_report_rate_holds_under_collisions(void **state)
{
    struct world *w = world_of(state);
    char who[REGISTRY_REPORTER_WAYS + 2][32];
    colliding_reporters(who, REGISTRY_REPORTER_WAYS + 2);
    assert_string_not_equal(who[0], who[1]);
    size_t accepted = 0;
    for (int i = 0; i < 100; i++)
        if (registry_report(w->reg, "nope", who[i % 2], REPORT_TLS, NULL) !=
            REGISTRY_REPORT_LIMITED)
            accepted++;
    assert_int_equal(accepted, 2 * REPORT_RATE);

    w->clock.now += 1000;
    size_t n = REGISTRY_REPORTER_WAYS + 2;
    accepted = 0;
    for (int i = 0; i < 600; i++)
        if (registry_report(w->reg, "nope", who[(size_t)i % n], REPORT_TLS, NULL) !=
            REGISTRY_REPORT_LIMITED)
            accepted++;
    assert_true(accepted <= (size_t)REGISTRY_REPORTER_WAYS * REPORT_RATE);
    assert_true(accepted >= REPORT_RATE);
    /* a second later the slots are fresh again */
    w->clock.now += 1000;
    assert_int_not_equal(registry_report(w->reg, "nope", who[0], REPORT_TLS, NULL),
                         REGISTRY_REPORT_LIMITED);
}

static void test_client_net(void **state)
{
    (void)state;
    char net[REGISTRY_CLIENT_NET_MAX];
    registry_client_net("2001:db8:1:2:3:4:5:6", net, sizeof net);
    assert_string_equal(net, "2001:db8:1:2::/64");
    registry_client_net("::ffff:10.0.0.1", net, sizeof net);
    assert_string_equal(net, "10.0.0.1");
    registry_client_net("10.0.0.1", net, sizeof net);
    assert_string_equal(net, "10.0.0.1");
    registry_client_net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", net, sizeof net);
    assert_string_equal(net, "ffff:ffff:ffff:ffff::/64");
    registry_client_net(NULL, net, sizeof net);
    assert_string_equal(net, "");
    assert_int_equal(registry_client_key("2001:db8:1:2::1"), registry_client_key("2001:db8:1:2::9"));
    assert_int_not_equal(registry_client_key("2001:db8:1:2::1"),
                         registry_client_key("2001:db8:1:3::1"));
}

static void test_report_ipv6_by_64(void **state)
{
    struct world *w = world_of(state);
    struct registry_report_outcome o = report_ok(w, "n0", "2001:db8:1:2::1");
    assert_int_equal(o.reporters, 1);
    o = report_ok(w, "n0", "2001:db8:1:2::2");
    assert_int_equal(o.reporters, 1);
    o = report_ok(w, "n0", "2001:db8:1:2:ffff:ffff:ffff:ffff");
    assert_int_equal(o.reporters, 1);
    assert_int_equal(state_of(w, "n0"), NODE_HEALTHY);
    o = report_ok(w, "n0", "2001:db8:1:3::1");
    assert_int_equal(o.reporters, 2);
    o = report_ok(w, "n0", "10.0.0.1");
    assert_int_equal(o.reporters, 3);
    assert_true(o.ejected);
    /* the rate limit is per /64 as well: REPORT_RATE a second for all of it
     * (four used above from 2001:db8:1:2::/64, one from the other) */
    w->clock.now += 1000;
    char who[64];
    for (int i = 0; i < REPORT_RATE; i++) {
        snprintf(who, sizeof who, "2001:db8:1:2::%x", 0x100 + i);
        assert_int_equal(registry_report(w->reg, "n1", who, REPORT_TLS, NULL),
                         REGISTRY_REPORT_OK);
    }
    assert_int_equal(registry_report(w->reg, "n1", "2001:db8:1:2::abcd", REPORT_TLS, NULL),
                     REGISTRY_REPORT_LIMITED);
    assert_int_equal(registry_report(w->reg, "n1", "2001:db8:1:3::abcd", REPORT_TLS, NULL),
                     REGISTRY_REPORT_OK);
    assert_int_equal(registry_report(w->reg, "n1", "10.0.0.9", REPORT_TLS, NULL),
                     REGISTRY_REPORT_OK);
}

/* A node in rotation registering again from the same process with a new
 * certificate digest is a change for clients caching by epoch. */
static void test_cert_change_bumps_epoch(void **state)
{
    struct world *w = world_of(state);
    struct hb_msg m = reg_msg("n1", 1);
    memset(m.cert_sha256, 'a', HB_CERT_SHA256_HEX);
    assert_int_equal(registry_register(w->reg, &m), 0);
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 1);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);
    uint64_t epoch = registry_epoch(w->reg);
    w->clock.now += INTERVAL;
    assert_int_equal(registry_register(w->reg, &m), 0); /* same digest: no change */
    assert_int_equal(registry_epoch(w->reg), epoch);
    memset(m.cert_sha256, 'b', HB_CERT_SHA256_HEX);
    w->clock.now += INTERVAL;
    assert_int_equal(registry_register(w->reg, &m), 0);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);
    assert_int_equal(registry_epoch(w->reg), epoch + 1);
    assert_int_equal(registry_find(w->reg, "n1")->cert_sha256[0], 'b');
}

/* ---- heartbeat connection closed ---- */

static void test_disconnected_blip_and_death(void **state)
{
    struct world *w = world_of(state);
    make_healthy(w, "n1", 1);
    make_healthy(w, "n2", 1);
    do_heartbeat(w, "n1", 1);
    assert_int_equal(registry_disconnected(w->reg, "n1", 2), REGISTRY_UNKNOWN);
    assert_int_equal(registry_disconnected(w->reg, "nope", 1), REGISTRY_UNKNOWN);
    assert_int_equal(registry_disconnected(w->reg, NULL, 1), REGISTRY_UNKNOWN);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);

    /* out of rotation at once, without waiting for silence */
    w->clock.now += INTERVAL / 2;
    assert_int_equal(registry_disconnected(w->reg, "n1", 1), REGISTRY_OK);
    assert_int_equal(state_of(w, "n1"), NODE_DOWN);
    assert_string_equal(registry_find(w->reg, "n1")->reason, "connection closed");
    assert_int_equal(registry_rotation_size(w->reg), 1);
    /* again: already out, nothing changes */
    size_t changes = w->nchanges;
    assert_int_equal(registry_disconnected(w->reg, "n1", 1), REGISTRY_UNCHANGED);
    assert_int_equal(w->nchanges, changes);
    /* a reconnect blip: the next heartbeat, within 1.5 intervals of the
     * last message, brings it back without rise */
    w->clock.now += INTERVAL / 2;
    do_heartbeat(w, "n1", 1);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);

    /* closed, and the node is heard of again only after a longer gap: rise */
    assert_int_equal(registry_disconnected(w->reg, "n1", 1), REGISTRY_OK);
    w->clock.now += 2 * INTERVAL;
    registry_reap(w->reg);
    assert_int_equal(state_of(w, "n1"), NODE_DOWN);
    do_heartbeat(w, "n1", 1);
    assert_int_equal(state_of(w, "n1"), NODE_DOWN);
    w->clock.now += INTERVAL;
    do_heartbeat(w, "n1", 1);
    assert_int_equal(state_of(w, "n1"), NODE_HEALTHY);

    /* a node out of rotation is left as it is */
    do_register(w, "n3", 1);
    assert_int_equal(registry_disconnected(w->reg, "n3", 1), REGISTRY_UNCHANGED);
    assert_int_equal(state_of(w, "n3"), NODE_JOINING);
    /* a dead node stays down and is forgotten as usual */
    assert_int_equal(registry_disconnected(w->reg, "n2", 1), REGISTRY_UNCHANGED);
    w->clock.now += FORGET + INTERVAL;
    registry_reap(w->reg);
    assert_null(registry_find(w->reg, "n2"));
}

/* A closed connection is a node gone, not a silent one: a mass close
 * enters no panic, and in panic a closed node leaves at once. */
static void test_disconnected_in_panic(void **state)
{
    struct world *w = world_of(state);
    struct panic_log log = {0};
    registry_on_panic(w->reg, record_panic, &log);
    bool alive[PANIC_NODES];
    panic_start(w, alive);
    char ids[PANIC_NODES][8];
    panic_ids(ids);
    /* 6 of 10 heartbeat connections close at once: they are gone */
    for (int i = 0; i < 6; i++) {
        alive[i] = false;
        assert_int_equal(registry_disconnected(w->reg, ids[i], 1), REGISTRY_OK);
    }
    assert_int_equal(registry_rotation_size(w->reg), PANIC_NODES - 6);
    run_spread(w, alive, 10 * INTERVAL);
    assert_false(registry_panic(w->reg));
    assert_int_equal(log.entered, 0);
    assert_int_equal(registry_rotation_size(w->reg), PANIC_NODES - 6);
    /* they come back (a blip): back in rotation with their next heartbeat
     * after a gap, through rise (rise is 1 here) */
    for (int i = 0; i < 6; i++)
        alive[i] = true;
    run_spread(w, alive, 2 * INTERVAL);
    assert_int_equal(registry_rotation_size(w->reg), PANIC_NODES);

    /* panic by silence (6 of 10 quiet), then one held node's connection
     * closes, and one live node's: both out at once, in panic */
    for (int i = 0; i < 6; i++)
        alive[i] = false;
    run_spread(w, alive, 4 * INTERVAL);
    assert_true(registry_panic(w->reg));
    assert_int_equal(registry_rotation_size(w->reg), PANIC_NODES);
    assert_int_equal(registry_disconnected(w->reg, ids[0], 1), REGISTRY_OK);
    assert_int_equal(registry_find(w->reg, ids[0])->state, NODE_DOWN);
    alive[7] = false;
    assert_int_equal(registry_disconnected(w->reg, ids[7], 1), REGISTRY_OK);
    assert_int_equal(registry_find(w->reg, ids[7])->state, NODE_DOWN);
    assert_int_equal(registry_rotation_size(w->reg), PANIC_NODES - 2);
    /* and panic, still on for the other silent ones, never puts them back */
    run_spread(w, alive, 2 * INTERVAL);
    assert_true(registry_panic(w->reg));
    assert_int_equal(registry_find(w->reg, ids[0])->state, NODE_DOWN);
    assert_int_equal(registry_find(w->reg, ids[7])->state, NODE_DOWN);
    assert_int_equal(registry_rotation_size(w->reg), PANIC_NODES - 2);
}

/* The last node in rotation dies: its close takes it out, panic does not
 * keep it (it did, for up to 0.8 s, when a close counted as silence). */
static void test_disconnected_last_node_not_held(void **state)
{
    struct world *w = world_of(state);
    do_register(w, "p0", 1);
    w->clock.now += INTERVAL;
    do_heartbeat(w, "p0", 1);
    registry_reap(w->reg);
    assert_int_equal(registry_rotation_size(w->reg), 1);
    assert_int_equal(registry_disconnected(w->reg, "p0", 1), REGISTRY_OK);
    for (int i = 0; i < 10; i++) {
        w->clock.now += INTERVAL / 5;
        registry_reap(w->reg);
        assert_false(registry_panic(w->reg));
        assert_int_equal(registry_rotation_size(w->reg), 0);
    }
}

/* ---- refused by the balancer (key revoked) ---- */

/* A revoked key's ids leave at once, do not trigger panic, and panic never
 * holds them. */
static void test_refuse_takes_out_and_panic_never_holds(void **state)
{
    struct world *w = world_of(state);
    struct panic_log log = {0};
    registry_on_panic(w->reg, record_panic, &log);
    bool alive[PANIC_NODES];
    panic_start(w, alive);
    char ids[PANIC_NODES][8];
    panic_ids(ids);
    assert_int_equal(registry_refuse(w->reg, "nope", "heartbeat key revoked"), REGISTRY_UNKNOWN);
    /* 6 of 10 were one stolen key's, revoked: its messages are refused,
     * so they go quiet all at once */
    for (int i = 0; i < 6; i++) {
        alive[i] = false;
        assert_int_equal(registry_refuse(w->reg, ids[i], "heartbeat key revoked"), REGISTRY_OK);
        assert_int_equal(registry_find(w->reg, ids[i])->state, NODE_DOWN);
        assert_string_equal(registry_find(w->reg, ids[i])->reason, "heartbeat key revoked");
    }
    assert_int_equal(registry_refuse(w->reg, ids[0], "again"), REGISTRY_UNCHANGED);
    assert_int_equal(registry_rotation_size(w->reg), 4);
    run_spread(w, alive, 20 * INTERVAL);
    assert_false(registry_panic(w->reg));
    assert_int_equal(log.entered, 0);
    assert_int_equal(registry_rotation_size(w->reg), 4);
    struct registry_guard_stats g;
    registry_guard_stats(w->reg, &g);
    assert_int_equal(g.refused, 6);

    /* the ids went quiet first (panic holds them), then the reload: out in
     * panic too */
    for (int i = 6; i < 9; i++)
        alive[i] = false;
    run_spread(w, alive, 4 * INTERVAL);
    assert_true(registry_panic(w->reg));
    assert_int_equal(registry_rotation_size(w->reg), 4);
    for (int i = 6; i < 9; i++)
        assert_int_equal(registry_refuse(w->reg, ids[i], "heartbeat key revoked"), REGISTRY_OK);
    assert_int_equal(registry_rotation_size(w->reg), 1);
    run_spread(w, alive, 2 * INTERVAL);
    assert_false(registry_panic(w->reg));
    assert_int_equal(registry_rotation_size(w->reg), 1);

    /* an accepted message again (the key was put back): a node as before */
    alive[0] = true;
    do_register(w, ids[0], 1);
    run_spread(w, alive, 2 * INTERVAL);
    assert_int_equal(registry_find(w->reg, ids[0])->state, NODE_HEALTHY);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state_names),
        cmocka_unit_test_setup_teardown(test_cert_and_balancers_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_register_new_node_joins, setup, teardown),
        cmocka_unit_test(test_rise_one_is_healthy_at_register),
        cmocka_unit_test(test_rise_needs_consecutive_heartbeats),
        cmocka_unit_test(test_rise_ignores_burst_of_queued_heartbeats),
        cmocka_unit_test(test_warmup_admits_at_once),
        cmocka_unit_test(test_max_nodes),
        cmocka_unit_test_setup_teardown(test_fall_exactly_at_fall_intervals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_silence_goes_straight_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_joining_falls_down, setup, teardown),
        cmocka_unit_test(test_suspect_recovers_without_rise),
        cmocka_unit_test_setup_teardown(test_down_needs_rise_to_return, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leave_drains, setup, teardown),
        cmocka_unit_test_setup_teardown(test_draining_flag, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unhealthy_self_report, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unhealthy_while_joining, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reregister_new_boot_resets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reregister_same_boot_keeps_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_joining_reregister_advances, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_epoch_only_on_rotation_change, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reap_looks_at_every_node, setup, teardown),
        cmocka_unit_test_setup_teardown(test_change_callback_sequence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_callback_is_fine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clock_going_back_is_harmless, setup, teardown),
        cmocka_unit_test(test_many_nodes_index),
        cmocka_unit_test(test_index_churn),
        cmocka_unit_test(test_free_null),
        cmocka_unit_test_setup_teardown(test_admin_drain_and_undrain_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_undrain_stale_goes_through_rise, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_admin_drained_node_dies_and_returns_drained, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_admin_undrain_keeps_self_draining, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_drain_while_joining_and_suspect, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_left_rotation_and_picks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flap_hold_grows_and_settles, setup_flap, teardown),
        cmocka_unit_test_setup_teardown(test_flapping_node_silent_goes_down_and_is_held_again,
                                        setup_flap, teardown),
        cmocka_unit_test_setup_teardown(test_flap_damping_off, setup, teardown),
        cmocka_unit_test_setup_teardown(test_panic_keeps_silent_majority, setup_panic, teardown),
        cmocka_unit_test_setup_teardown(test_panic_not_for_a_minority, setup_panic, teardown),
        cmocka_unit_test_setup_teardown(test_panic_ignores_leave_and_unhealthy, setup_panic,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_panic_all_silent_is_bounded, setup_panic,
                                        teardown),
        cmocka_unit_test(test_panic_hold_bound_configured),
        cmocka_unit_test(test_flap_no_floor_holds_both),
        cmocka_unit_test(test_flap_floor_releases_longest_healthy),
        cmocka_unit_test(test_flap_floor_never_empties),
        cmocka_unit_test(test_report_names),
        cmocka_unit_test_setup_teardown(test_report_quorum_ejects_then_returns, setup_reports,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_report_window, setup_reports, teardown),
        cmocka_unit_test_setup_teardown(test_report_one_reporter_cannot_eject, setup_reports,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_report_max_eject_percent, setup_reports, teardown),
        cmocka_unit_test_setup_teardown(test_report_slots_bounded_and_unknown, setup_reports,
                                        teardown),
        cmocka_unit_test(test_report_quorum_off),
        cmocka_unit_test_setup_teardown(test_report_ejection_doubles_and_settles, setup_reports,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ejected_node_dies_drains_restarts, setup_reports,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_disconnected_blip_and_death, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disconnected_in_panic, setup_panic, teardown),
        cmocka_unit_test_setup_teardown(test_disconnected_last_node_not_held, setup_panic,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_refuse_takes_out_and_panic_never_holds,
                                        setup_panic, teardown),
        cmocka_unit_test_setup_teardown(test_ejection_survives_down, setup_reports, teardown),
        cmocka_unit_test_setup_teardown(test_report_ipv6_by_64, setup_reports, teardown),
        cmocka_unit_test_setup_teardown(test_report_rate_holds_under_collisions, setup_reports,
                                        teardown),
        cmocka_unit_test(test_client_net),
        cmocka_unit_test_setup_teardown(test_cert_change_bumps_epoch, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
