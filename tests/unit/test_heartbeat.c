/* Unit tests for node/heartbeat.c against a ROUTER on inproc://, with the
 * heartbeat's clock faked (zmq_poll only waits for delivery). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "hb_msg.h"
#include "heartbeat.h"

#define T0 500000u

struct fx {
    void *ctx;
    void *router;
    struct heartbeat *hb;
    unsigned fills;
    char peer[256]; /* routing id of the last message */
    size_t peer_len;
};

static void fill(void *arg, struct hb_msg *m, uint64_t now)
{
    struct fx *f = arg;
    (void)now;
    f->fills++;
    m->sessions = 3;
    m->accepted = 10;
    m->msgs_per_sec = 12.5;
    m->healthy = false;
    snprintf(m->reason, sizeof(m->reason), "worker 0 stalled");
    m->nworkers = 1;
    m->workers[0].ticks = 99;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->ctx = zmq_ctx_new();
    assert_non_null(f->ctx);
    f->router = zmq_socket(f->ctx, ZMQ_ROUTER);
    assert_non_null(f->router);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(f->router, ZMQ_LINGER, &linger, sizeof(linger)), 0);
    assert_int_equal(zmq_bind(f->router, "inproc://hb-test"), 0);
    struct heartbeat_config cfg = {
        .endpoint = "inproc://hb-test",
        .node_id = "n1",
        .addr = "127.0.0.1:7001",
        .capacity = 50,
        .interval_ms = 250,
        .boot_id = 0xabcdef,
        .cert_sha256 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    };
    char err[256];
    f->hb = heartbeat_new(f->ctx, &cfg, fill, f, T0, err, sizeof(err));
    if (!f->hb)
        fail_msg("heartbeat_new: %s", err);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    heartbeat_free(f->hb, 0);
    zmq_close(f->router);
    zmq_ctx_term(f->ctx);
    free(f);
    return 0;
}

/* Receives one message at the ROUTER (waiting up to 1 s for delivery). */
static bool router_recv(struct fx *f, struct hb_msg *m, long wait_ms)
{
    zmq_pollitem_t it = {.socket = f->router, .events = ZMQ_POLLIN};
    if (zmq_poll(&it, 1, wait_ms) <= 0)
        return false;
    int n = zmq_recv(f->router, f->peer, sizeof(f->peer), 0);
    assert_true(n > 0);
    f->peer_len = (size_t)n;
    char body[HB_MAX_MESSAGE];
    n = zmq_recv(f->router, body, sizeof(body), 0);
    assert_true(n > 0);
    char err[256];
    if (hb_msg_decode(body, (size_t)n, m, err, sizeof(err)) != 0)
        fail_msg("decode: %s", err);
    return true;
}

static void router_reply(struct fx *f, enum hb_type type, uint32_t interval, const char *node)
{
    struct hb_msg m;
    memset(&m, 0, sizeof(m));
    m.type = type;
    snprintf(m.node_id, sizeof(m.node_id), "%s", node);
    m.interval_ms = interval;
    m.epoch = 7;
    size_t len;
    char err[256];
    char *data = hb_msg_encode(&m, &len, err, sizeof(err));
    if (!data)
        fail_msg("encode: %s", err);
    assert_int_equal(zmq_send(f->router, f->peer, f->peer_len, ZMQ_SNDMORE), (int)f->peer_len);
    assert_int_equal(zmq_send(f->router, data, len, 0), (int)len);
    free(data);
}

/* Lets the heartbeat read what the router sent. */
static void hb_read(struct fx *f, uint64_t now)
{
    zmq_pollitem_t it = {.socket = heartbeat_socket(f->hb), .events = ZMQ_POLLIN};
    assert_int_equal(zmq_poll(&it, 1, 1000), 1);
    heartbeat_on_readable(f->hb, now);
}

static void test_register_then_heartbeat(void **state)
{
    struct fx *f = *state;
    struct hb_msg m;
    assert_true(router_recv(f, &m, 1000));
    assert_int_equal(m.type, HB_REGISTER);
    assert_string_equal(m.node_id, "n1");
    assert_int_equal(m.boot_id, 0xabcdef);
    assert_string_equal(m.addr, "127.0.0.1:7001");
    assert_int_equal(m.capacity, 50);
    assert_int_equal(m.seq, 1);
    assert_false(heartbeat_connected(f->hb));

    router_reply(f, HB_ACK, 100, "n1");
    hb_read(f, T0 + 5);
    assert_true(heartbeat_connected(f->hb));
    assert_int_equal(heartbeat_interval_ms(f->hb), 100);
    /* The next send is due within the adopted interval (+10% jitter). */
    long wait = heartbeat_timeout_ms(f->hb, T0 + 5);
    assert_true(wait <= 110);
    heartbeat_tick(f->hb, T0 + 5 + (uint64_t)wait);
    assert_true(router_recv(f, &m, 1000));
    assert_int_equal(m.type, HB_HEARTBEAT);
    assert_int_equal(m.seq, 2);
    assert_int_equal(m.sessions, 3);
    assert_int_equal(m.accepted, 10);
    assert_false(m.healthy);
    assert_string_equal(m.reason, "worker 0 stalled");
    assert_int_equal(m.nworkers, 1);
    assert_int_equal(m.workers[0].ticks, 99);
    assert_int_equal(f->fills, 1);
    /* Nothing more before the next interval. */
    heartbeat_tick(f->hb, T0 + 5 + (uint64_t)wait + 50);
    assert_false(router_recv(f, &m, 0));
}

static void test_jitter_bounds(void **state)
{
    struct fx *f = *state;
    struct hb_msg m;
    assert_true(router_recv(f, &m, 1000));
    router_reply(f, HB_ACK, 1000, "n1");
    uint64_t now = T0;
    hb_read(f, now);
    /* The send already scheduled keeps its time; later ones use 1000 ms. */
    now += (uint64_t)heartbeat_timeout_ms(f->hb, now);
    heartbeat_tick(f->hb, now);
    assert_true(router_recv(f, &m, 1000));
    for (int i = 0; i < 20; i++) {
        long wait = heartbeat_timeout_ms(f->hb, now);
        assert_true(wait >= 900 && wait <= 1100);
        now += (uint64_t)wait;
        heartbeat_tick(f->hb, now);
        assert_true(router_recv(f, &m, 1000));
        assert_int_equal(m.type, HB_HEARTBEAT);
        router_reply(f, HB_ACK, 1000, "n1");
        hb_read(f, now);
    }
}

static void test_reregister(void **state)
{
    struct fx *f = *state;
    struct hb_msg m;
    assert_true(router_recv(f, &m, 1000));
    router_reply(f, HB_ACK, 250, "n1");
    hb_read(f, T0);
    router_reply(f, HB_REREGISTER, 250, "n1");
    hb_read(f, T0 + 10);
    /* REGISTER goes at once, not at the next interval. */
    assert_true(router_recv(f, &m, 1000));
    assert_int_equal(m.type, HB_REGISTER);
    /* Until acknowledged, the periodic message is REGISTER again. */
    heartbeat_tick(f->hb, T0 + 10 + 300);
    assert_true(router_recv(f, &m, 1000));
    assert_int_equal(m.type, HB_REGISTER);
}

static void test_reply_for_other_node_ignored(void **state)
{
    struct fx *f = *state;
    struct hb_msg m;
    assert_true(router_recv(f, &m, 1000));
    router_reply(f, HB_ACK, 100, "other");
    hb_read(f, T0 + 5);
    assert_false(heartbeat_connected(f->hb));
    assert_int_equal(heartbeat_interval_ms(f->hb), 250);
}

static void test_lost_reconnects(void **state)
{
    struct fx *f = *state;
    struct hb_msg m;
    assert_true(router_recv(f, &m, 1000));
    router_reply(f, HB_ACK, 250, "n1");
    hb_read(f, T0);
    char first_peer[256];
    size_t first_len = f->peer_len;
    memcpy(first_peer, f->peer, f->peer_len);
    /* Heartbeats go out, nothing comes back, until fall intervals pass. */
    uint64_t now = T0;
    while (heartbeat_connected(f->hb)) {
        long wait = heartbeat_timeout_ms(f->hb, now);
        now += (uint64_t)(wait > 0 ? wait : 1);
        heartbeat_tick(f->hb, now);
        assert_true(now < T0 + 2000);
    }
    /* Drain whatever heartbeats arrived, then check the reconnect's REGISTER. */
    bool saw_register = false;
    char reg_peer[256];
    size_t reg_len = 0;
    while (router_recv(f, &m, 200)) {
        if (m.type == HB_REGISTER) {
            saw_register = true;
            reg_len = f->peer_len;
            memcpy(reg_peer, f->peer, f->peer_len);
        }
    }
    assert_true(now >= T0 + 750);
    assert_false(heartbeat_connected(f->hb));
    assert_true(saw_register);
    /* A new socket, so the ROUTER sees a new peer identity. */
    assert_false(reg_len == first_len && memcmp(first_peer, reg_peer, first_len) == 0);
    memcpy(f->peer, reg_peer, reg_len);
    f->peer_len = reg_len;
    /* The balancer answers again: connected. */
    router_reply(f, HB_ACK, 250, "n1");
    hb_read(f, now + 1);
    assert_true(heartbeat_connected(f->hb));
}

static void test_leave(void **state)
{
    struct fx *f = *state;
    struct hb_msg m;
    assert_true(router_recv(f, &m, 1000));
    router_reply(f, HB_ACK, 250, "n1");
    hb_read(f, T0);
    heartbeat_leave(f->hb, T0 + 1);
    assert_true(router_recv(f, &m, 1000));
    assert_int_equal(m.type, HB_LEAVE);
    assert_string_equal(m.node_id, "n1");
    assert_int_equal(m.boot_id, 0xabcdef);
    /* A reregister while leaving: REGISTER, then LEAVE again. */
    router_reply(f, HB_REREGISTER, 250, "n1");
    hb_read(f, T0 + 2);
    assert_true(router_recv(f, &m, 1000));
    assert_int_equal(m.type, HB_REGISTER);
    assert_true(router_recv(f, &m, 1000));
    assert_int_equal(m.type, HB_LEAVE);
}

static void test_bad_endpoint(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    struct heartbeat_config cfg = {
        .endpoint = "nonsense://x", .node_id = "n1", .addr = "h:1", .capacity = 1,
        .interval_ms = 250, .boot_id = 1};
    char err[256];
    assert_null(heartbeat_new(ctx, &cfg, NULL, NULL, T0, err, sizeof(err)));
    assert_non_null(strstr(err, "nonsense://x"));
    cfg.endpoint = "tcp://127.0.0.1:1";
    cfg.node_id = "bad id!";
    assert_null(heartbeat_new(ctx, &cfg, NULL, NULL, T0, err, sizeof(err)));
    heartbeat_free(NULL, 0);
    zmq_ctx_term(ctx);
}

/* REGISTER carries the certificate digest; the peers list says whether
 * the balancer answered within HEARTBEAT_FALL intervals. */
static void test_cert_and_reached(void **state)
{
    struct fx *f = *state;
    struct hb_msg m;
    assert_true(router_recv(f, &m, 1000));
    assert_int_equal(m.type, HB_REGISTER);
    assert_string_equal(m.cert_sha256,
                        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");

    struct heartbeat *hbs[1] = {f->hb};
    struct hb_msg peers;
    memset(&peers, 0, sizeof(peers));
    assert_false(heartbeat_reached(f->hb, T0)); /* never answered */
    heartbeat_fill_peers(hbs, 1, &peers, T0);
    assert_int_equal(peers.nbalancers, 1);
    assert_string_equal(peers.balancers[0].endpoint, "inproc://hb-test");
    assert_false(peers.balancers[0].reached);

    router_reply(f, HB_ACK, 250, "n1");
    hb_read(f, T0 + 10);
    assert_true(heartbeat_reached(f->hb, T0 + 10));
    assert_true(heartbeat_reached(f->hb, T0 + 10 + HEARTBEAT_FALL * 250));
    assert_false(heartbeat_reached(f->hb, T0 + 11 + HEARTBEAT_FALL * 250));
    heartbeat_fill_peers(hbs, 1, &peers, T0 + 20);
    assert_true(peers.balancers[0].reached);
    /* the filled message encodes and decodes as a HEARTBEAT */
    peers.type = HB_HEARTBEAT;
    snprintf(peers.node_id, sizeof(peers.node_id), "n1");
    peers.healthy = true;
    size_t len;
    char err[256];
    char *data = hb_msg_encode(&peers, &len, err, sizeof(err));
    assert_non_null(data);
    struct hb_msg back;
    assert_int_equal(hb_msg_decode(data, len, &back, err, sizeof(err)), 0);
    free(data);
    assert_int_equal(back.nbalancers, 1);
    assert_true(back.balancers[0].reached);
}

static void test_bad_curve_config(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    struct keys_pair kp;
    memset(&kp, 1, sizeof(kp));
    struct heartbeat_config cfg = {
        .endpoint = "inproc://x", .node_id = "n1", .addr = "127.0.0.1:1", .capacity = 1,
        .interval_ms = 250, .boot_id = 1, .curve_keys = &kp, /* no balancer key */
    };
    char err[256];
    assert_null(heartbeat_new(ctx, &cfg, NULL, NULL, T0, err, sizeof(err)));
    assert_non_null(strstr(err, "CURVE"));
    cfg.curve_keys = NULL;
    cfg.cert_sha256 = "abc";
    assert_null(heartbeat_new(ctx, &cfg, NULL, NULL, T0, err, sizeof(err)));
    assert_non_null(strstr(err, "digest"));
    zmq_ctx_term(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_register_then_heartbeat, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jitter_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reregister, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_for_other_node_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lost_reconnects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leave, setup, teardown),
        cmocka_unit_test(test_bad_endpoint),
        cmocka_unit_test_setup_teardown(test_cert_and_reached, setup, teardown),
        cmocka_unit_test(test_bad_curve_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
