/* Unit tests for node/session.c: the protocol state machine fed bytes
 * directly (no sockets, fake clock), then the real TLS path over a
 * socketpair with a throwaway certificate. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "buf.h"
#include "frame.h"
#include "journal.h"
#include "session.h"
#include "tls_conn.h"
#include "tls_ctx.h"
#include "test_certs.h"

#define T0 1000000u /* fake clock start */

struct fx {
    struct node_worker_stats ws[2];
    struct node_stats stats;
    struct session_env env;
    struct session *s;
    struct buf req;   /* frames the test is about to send */
    struct buf last;  /* copy of the last reply's payload */
    uint64_t now;
};

static int fx_setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->stats.nworkers = 2;
    f->stats.workers = f->ws;
    f->env.node_id = "n1";
    f->env.advertise = "127.0.0.1:7443";
    f->env.start_ms = T0 - 5000;
    f->env.max_frame = 1024;
    f->env.idle_timeout_ms = 30000;
    f->env.handshake_timeout_ms = 10000;
    f->env.max_connections = 100;
    f->env.max_output = 1u << 20;
    f->env.max_inflight = 1024;
    f->env.stats = &f->stats;
    f->now = T0;
    buf_init(&f->req);
    buf_init(&f->last);
    f->s = session_new(&f->env, &f->ws[0], 42, "127.0.0.1:5555", NULL, f->now);
    assert_non_null(f->s);
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;
    session_free(f->s);
    buf_release(&f->req);
    buf_release(&f->last);
    free(f);
    return 0;
}

/* Sends everything queued in f->req to the session at once. */
static void fx_send(struct fx *f)
{
    assert_int_equal(session_feed(f->s, buf_head(&f->req), buf_size(&f->req), f->now), 0);
    buf_clear(&f->req);
}

static size_t fx_pending(struct fx *f) { return buf_size(session_output(f->s)); }

/* Takes the next reply, checks its type and request id, keeps its payload
 * in f->last and returns the frame (payload pointing into f->last). */
static struct frame fx_take(struct fx *f, uint8_t type, uint64_t rid)
{
    struct buf *out = session_output(f->s);
    struct frame fr;
    enum frame_error err = FRAME_ERR_NONE;
    assert_true(buf_size(out) >= FRAME_HEADER_SIZE);
    long n = frame_decode(buf_head(out), buf_size(out), UINT32_MAX, &fr, &err);
    assert_true(n > 0);
    assert_int_equal(fr.h.type, type);
    assert_int_equal(fr.h.request_id, rid);
    buf_clear(&f->last);
    assert_int_equal(buf_append(&f->last, fr.payload, fr.h.length), 0);
    fr.payload = fr.h.length ? buf_head(&f->last) : NULL;
    session_output_consume(f->s, (size_t)n);
    return fr;
}

static void fx_take_error(struct fx *f, uint64_t rid, enum frame_error code)
{
    struct frame fr = fx_take(f, FRAME_ERROR, rid);
    struct frame_error_body eb;
    assert_int_equal(frame_parse_error(&fr, &eb), 0);
    assert_int_equal(eb.code, code);
}

static void fx_hello(struct fx *f)
{
    assert_int_equal(frame_append_hello(&f->req, 1, FRAME_VERSION, "tester"), 0);
    fx_send(f);
    struct frame fr = fx_take(f, FRAME_WELCOME, 1);
    struct frame_welcome w;
    assert_int_equal(frame_parse_welcome(&fr, &w), 0);
    assert_int_equal(w.version, FRAME_VERSION);
    assert_int_equal(w.session_id, 42);
    assert_int_equal(w.max_payload, 1024);
    assert_int_equal(w.idle_timeout_ms, 30000);
    assert_string_equal(w.node_id, "n1");
}

/* A header with arbitrary fields, for frames the encoder refuses to build. */
static void fx_raw_header(struct fx *f, uint32_t len, uint8_t version, uint8_t type,
                          uint16_t flags, uint64_t rid)
{
    uint8_t h[FRAME_HEADER_SIZE];
    h[0] = (uint8_t)(len >> 24);
    h[1] = (uint8_t)(len >> 16);
    h[2] = (uint8_t)(len >> 8);
    h[3] = (uint8_t)len;
    h[4] = version;
    h[5] = type;
    h[6] = (uint8_t)(flags >> 8);
    h[7] = (uint8_t)flags;
    for (int i = 0; i < 8; i++)
        h[8 + i] = (uint8_t)(rid >> (56 - 8 * i));
    assert_int_equal(buf_append(&f->req, h, sizeof(h)), 0);
}

static void test_hello_welcome(void **state)
{
    struct fx *f = *state;
    fx_hello(f);
    assert_int_equal(fx_pending(f), 0);
    assert_int_equal(session_state(f->s), SESSION_OPEN);
    assert_int_equal(node_stats_get(&f->ws[0].requests), 1);
}

static void test_request_before_hello(void **state)
{
    struct fx *f = *state;
    assert_int_equal(frame_append(&f->req, FRAME_PING, 7, "x", 1), 0);
    fx_send(f);
    fx_take_error(f, 7, FRAME_ERR_NOT_READY);
    assert_int_equal(session_state(f->s), SESSION_CLOSING);
    /* Nothing more is answered once the session is closing. */
    assert_int_equal(frame_append_hello(&f->req, 8, FRAME_VERSION, "late"), 0);
    fx_send(f);
    assert_int_equal(fx_pending(f), 0);
}

static void test_pipelined_in_order(void **state)
{
    struct fx *f = *state;
    assert_int_equal(frame_append_hello(&f->req, 1, FRAME_VERSION, "pipe"), 0);
    assert_int_equal(frame_append(&f->req, FRAME_PING, 2, "abc", 3), 0);
    assert_int_equal(frame_append(&f->req, FRAME_ECHO, 3, "hello", 5), 0);
    assert_int_equal(frame_append(&f->req, FRAME_INFO, 4, NULL, 0), 0);
    assert_int_equal(frame_append(&f->req, FRAME_PING, 5, NULL, 0), 0);
    fx_send(f);

    fx_take(f, FRAME_WELCOME, 1);
    struct frame fr = fx_take(f, FRAME_PONG, 2);
    assert_int_equal(fr.h.length, 3);
    assert_memory_equal(fr.payload, "abc", 3);
    fr = fx_take(f, FRAME_ECHO_REPLY, 3);
    assert_int_equal(fr.h.length, 5);
    assert_memory_equal(fr.payload, "hello", 5);

    fr = fx_take(f, FRAME_INFO_REPLY, 4);
    json_error_t jerr;
    json_t *j = json_loadb((const char *)fr.payload, fr.h.length, 0, &jerr);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "node")), "n1");
    assert_string_equal(json_string_value(json_object_get(j, "addr")), "127.0.0.1:7443");
    assert_int_equal(json_integer_value(json_object_get(j, "uptime_ms")), 5000);
    assert_int_equal(json_integer_value(json_object_get(j, "workers")), 2);
    json_t *sj = json_object_get(j, "session");
    assert_int_equal(json_integer_value(json_object_get(sj, "id")), 42);
    assert_string_equal(json_string_value(json_object_get(sj, "client")), "pipe");
    assert_string_equal(json_string_value(json_object_get(sj, "peer")), "127.0.0.1:5555");
    assert_int_equal(json_integer_value(json_object_get(sj, "requests")), 3);
    json_t *lj = json_object_get(j, "limits");
    assert_int_equal(json_integer_value(json_object_get(lj, "max_frame")), 1024);
    assert_int_equal(json_integer_value(json_object_get(lj, "max_connections")), 100);
    assert_true(json_is_null(json_object_get(json_object_get(j, "tls"), "protocol")));
    json_decref(j);

    fx_take(f, FRAME_PONG, 5);
    assert_int_equal(fx_pending(f), 0);
    assert_int_equal(node_stats_get(&f->ws[0].requests), 5);
}

static void test_byte_at_a_time(void **state)
{
    struct fx *f = *state;
    assert_int_equal(frame_append_hello(&f->req, 1, FRAME_VERSION, "slow"), 0);
    assert_int_equal(frame_append(&f->req, FRAME_ECHO, 2, "0123456789", 10), 0);
    assert_int_equal(frame_append_send(&f->req, 3, 99, "abc", 3), 0);
    size_t n = buf_size(&f->req);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(session_feed(f->s, buf_head(&f->req) + i, 1, f->now), 0);
    buf_clear(&f->req);
    fx_take(f, FRAME_WELCOME, 1);
    struct frame fr = fx_take(f, FRAME_ECHO_REPLY, 2);
    assert_memory_equal(fr.payload, "0123456789", 10);
    fx_take(f, FRAME_ACK, 3);
    assert_int_equal(fx_pending(f), 0);
}

static void test_send_ack_sha256(void **state)
{
    struct fx *f = *state;
    /* FIPS 180-2 test vector: SHA-256("abc"). */
    static const uint8_t abc[FRAME_SHA256_LEN] = {
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
        0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    static const uint8_t empty[FRAME_SHA256_LEN] = {
        0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
        0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};
    fx_hello(f);
    assert_int_equal(frame_append_send(&f->req, 10, 0x1122334455667788ull, "abc", 3), 0);
    assert_int_equal(frame_append_send(&f->req, 11, 5, NULL, 0), 0);
    fx_send(f);
    struct frame_ack ack;
    struct frame fr = fx_take(f, FRAME_ACK, 10);
    assert_int_equal(frame_parse_ack(&fr, &ack), 0);
    assert_int_equal(ack.message_id, 0x1122334455667788ull);
    assert_memory_equal(ack.sha256, abc, FRAME_SHA256_LEN);
    fr = fx_take(f, FRAME_ACK, 11);
    assert_int_equal(frame_parse_ack(&fr, &ack), 0);
    assert_int_equal(ack.message_id, 5);
    assert_memory_equal(ack.sha256, empty, FRAME_SHA256_LEN);
}

static void test_oversized_header(void **state)
{
    struct fx *f = *state;
    fx_hello(f);
    /* Only the header arrives: the verdict must not wait for 1 GiB. */
    fx_raw_header(f, 1u << 30, FRAME_VERSION, FRAME_ECHO, 0, 77);
    fx_send(f);
    fx_take_error(f, 77, FRAME_ERR_TOO_LARGE);
    assert_int_equal(session_state(f->s), SESSION_CLOSING);
    /* The payload that follows is ignored, not buffered. */
    uint8_t junk[512];
    memset(junk, 'j', sizeof(junk));
    assert_int_equal(session_feed(f->s, junk, sizeof(junk), f->now), 0);
    assert_int_equal(fx_pending(f), 0);
}

static void test_unknown_type(void **state)
{
    struct fx *f = *state;
    fx_hello(f);
    fx_raw_header(f, 0, FRAME_VERSION, 0x42, 0, 9);
    fx_send(f);
    fx_take_error(f, 9, FRAME_ERR_UNKNOWN_TYPE);
    assert_int_equal(session_state(f->s), SESSION_CLOSING);
}

static void test_bad_version_body(void **state)
{
    struct fx *f = *state;
    assert_int_equal(frame_append_hello(&f->req, 3, 0, "zero"), 0);
    fx_send(f);
    fx_take_error(f, 3, FRAME_ERR_BAD_VERSION);
    assert_int_equal(session_state(f->s), SESSION_CLOSING);
}

static void test_later_version_negotiated(void **state)
{
    struct fx *f = *state;
    /* A client that also speaks version 3 offers it; the session runs at
     * this node's highest, 2. */
    assert_int_equal(frame_append_hello(&f->req, 3, 3, "future"), 0);
    fx_send(f);
    struct frame fr = fx_take(f, FRAME_WELCOME, 3);
    struct frame_welcome w;
    assert_int_equal(frame_parse_welcome(&fr, &w), 0);
    assert_int_equal(w.version, FRAME_PROTOCOL_MAX);
    assert_int_equal(session_state(f->s), SESSION_OPEN);
}

static void test_drain_before_hello(void **state)
{
    struct fx *f = *state;
    session_drain(f->s, f->now);
    fx_take_error(f, 0, FRAME_ERR_SHUTTING_DOWN);
    assert_int_equal(session_state(f->s), SESSION_CLOSING);
}

static void test_drain_partial_hello(void **state)
{
    struct fx *f = *state;
    assert_int_equal(frame_append_hello(&f->req, 5, FRAME_VERSION, "halfway"), 0);
    assert_int_equal(session_feed(f->s, buf_head(&f->req), buf_size(&f->req) - 3, f->now), 0);
    buf_clear(&f->req);
    session_drain(f->s, f->now);
    fx_take_error(f, 0, FRAME_ERR_SHUTTING_DOWN);
    assert_int_equal(fx_pending(f), 0);
}

static void test_hello_timeout(void **state)
{
    struct fx *f = *state;
    /* TLS is up (no transport here) but HELLO never comes. */
    session_sweep(f->s, T0 + 9999);
    assert_int_equal(session_state(f->s), SESSION_OPEN);
    session_sweep(f->s, T0 + 10000);
    fx_take_error(f, 0, FRAME_ERR_TIMEOUT);
    assert_string_equal(session_close_reason(f->s), "hello_timeout");
}

static void test_partial_bytes_are_not_activity(void **state)
{
    struct fx *f = *state;
    fx_hello(f);
    /* A trickle of bytes that never completes a request does not keep the
     * session alive. */
    assert_int_equal(frame_append(&f->req, FRAME_ECHO, 2, "slowloris", 9), 0);
    for (size_t i = 0; i + 1 < buf_size(&f->req); i++)
        assert_int_equal(session_feed(f->s, buf_head(&f->req) + i, 1, T0 + 1000 * (i + 1)), 0);
    buf_clear(&f->req);
    session_sweep(f->s, T0 + 30000);
    fx_take_error(f, 0, FRAME_ERR_TIMEOUT);
}

static void test_bad_version_header(void **state)
{
    struct fx *f = *state;
    fx_raw_header(f, 0, 2, FRAME_PING, 0, 4);
    fx_send(f);
    fx_take_error(f, 4, FRAME_ERR_BAD_VERSION);
}

static void test_second_hello(void **state)
{
    struct fx *f = *state;
    fx_hello(f);
    assert_int_equal(frame_append_hello(&f->req, 2, FRAME_VERSION, "again"), 0);
    fx_send(f);
    fx_take_error(f, 2, FRAME_ERR_UNEXPECTED);
    assert_int_equal(session_state(f->s), SESSION_CLOSING);
}

static void test_reply_type_from_client(void **state)
{
    struct fx *f = *state;
    fx_hello(f);
    assert_int_equal(frame_append(&f->req, FRAME_PONG, 6, NULL, 0), 0);
    fx_send(f);
    fx_take_error(f, 6, FRAME_ERR_UNEXPECTED);
}

/* The reply-type check comes before the HELLO-first one: a reply type is
 * unexpected wherever it comes, also as the first frame. */
static void test_reply_type_before_hello(void **state)
{
    struct fx *f = *state;
    assert_int_equal(frame_append(&f->req, FRAME_PONG, 6, NULL, 0), 0);
    fx_send(f);
    fx_take_error(f, 6, FRAME_ERR_UNEXPECTED);
    assert_int_equal(session_state(f->s), SESSION_CLOSING);
    session_free(f->s);
    f->s = session_new(&f->env, &f->ws[0], 42, "127.0.0.1:5555", NULL, f->now);
    assert_non_null(f->s);
    uint8_t err_body[] = {0, 2, 'x'};
    assert_int_equal(frame_append(&f->req, FRAME_ERROR, 9, err_body, sizeof err_body), 0);
    fx_send(f);
    fx_take_error(f, 9, FRAME_ERR_UNEXPECTED);
}

/* Version negotiation, one rule: HELLO's version is the highest the client
 * speaks; the node answers with the highest both speak; only when there is
 * none (version 0) is it bad_version. The largest u16 gets our highest, 2. */
static void test_hello_version_max(void **state)
{
    struct fx *f = *state;
    assert_int_equal(frame_append_hello(&f->req, 3, 0xFFFF, "far-future"), 0);
    fx_send(f);
    struct frame fr = fx_take(f, FRAME_WELCOME, 3);
    struct frame_welcome w;
    assert_int_equal(frame_parse_welcome(&fr, &w), 0);
    assert_int_equal(w.version, FRAME_PROTOCOL_MAX);
}

static void test_malformed(void **state)
{
    struct fx *f = *state;
    fx_hello(f);
    /* SEND shorter than its message id; and a second test: bad flags. */
    fx_raw_header(f, 4, FRAME_VERSION, FRAME_SEND, 0, 12);
    assert_int_equal(buf_append(&f->req, "abcd", 4), 0);
    fx_send(f);
    fx_take_error(f, 12, FRAME_ERR_MALFORMED);
}

static void test_bad_flags(void **state)
{
    struct fx *f = *state;
    fx_hello(f);
    fx_raw_header(f, 0, FRAME_VERSION, FRAME_PING, 1, 13);
    fx_send(f);
    fx_take_error(f, 13, FRAME_ERR_MALFORMED);
}

static void test_malformed_hello(void **state)
{
    struct fx *f = *state;
    /* Name length byte says 10, only 2 bytes follow. */
    fx_raw_header(f, 5, FRAME_VERSION, FRAME_HELLO, 0, 1);
    static const uint8_t body[5] = {0, 1, 10, 'a', 'b'};
    assert_int_equal(buf_append(&f->req, body, sizeof(body)), 0);
    fx_send(f);
    fx_take_error(f, 1, FRAME_ERR_MALFORMED);
}

static void test_truncated_waits(void **state)
{
    struct fx *f = *state;
    fx_hello(f);
    assert_int_equal(frame_append(&f->req, FRAME_ECHO, 2, "truncated", 9), 0);
    /* All but the last byte: no answer yet, no error. */
    assert_int_equal(session_feed(f->s, buf_head(&f->req), buf_size(&f->req) - 1, f->now), 0);
    assert_int_equal(fx_pending(f), 0);
    assert_int_equal(session_state(f->s), SESSION_OPEN);
    assert_int_equal(session_feed(f->s, buf_head(&f->req) + buf_size(&f->req) - 1, 1, f->now), 0);
    buf_clear(&f->req);
    fx_take(f, FRAME_ECHO_REPLY, 2);
}

static void test_bye(void **state)
{
    struct fx *f = *state;
    fx_hello(f);
    assert_int_equal(frame_append(&f->req, FRAME_BYE, 9, NULL, 0), 0);
    assert_int_equal(frame_append(&f->req, FRAME_PING, 10, NULL, 0), 0);
    fx_send(f);
    fx_take(f, FRAME_BYE, 9);
    assert_int_equal(fx_pending(f), 0); /* the PING after BYE is not answered */
    assert_int_equal(session_state(f->s), SESSION_CLOSING);
    assert_string_equal(session_close_reason(f->s), "bye");
}

static void test_backpressure(void **state)
{
    struct fx *f = *state;
    f->env.max_output = 4096;
    fx_hello(f);
    char payload[1000];
    memset(payload, 'p', sizeof(payload));
    for (uint64_t i = 0; i < 10; i++)
        assert_int_equal(frame_append(&f->req, FRAME_ECHO, 100 + i, payload, sizeof(payload)), 0);
    fx_send(f);
    /* Parsing stops once the output is above the limit. */
    size_t first = fx_pending(f);
    assert_true(first >= 4096);
    assert_true(first < 4096 + sizeof(payload) + FRAME_HEADER_SIZE);
    uint64_t next = 100;
    for (int round = 0; round < 20 && next < 110; round++) {
        while (fx_pending(f) > 0)
            fx_take(f, FRAME_ECHO_REPLY, next++);
        assert_int_equal(session_feed(f->s, NULL, 0, f->now), 0); /* resume */
    }
    assert_int_equal(next, 110);
    assert_int_equal(fx_pending(f), 0);
}

static void test_drain(void **state)
{
    struct fx *f = *state;
    f->env.max_output = 4096;
    fx_hello(f);
    char payload[1000];
    memset(payload, 'd', sizeof(payload));
    for (uint64_t i = 0; i < 6; i++)
        assert_int_equal(frame_append(&f->req, FRAME_ECHO, 200 + i, payload, sizeof(payload)), 0);
    /* And half a frame, which drain leaves unanswered. */
    assert_int_equal(frame_append(&f->req, FRAME_PING, 300, "half", 4), 0);
    assert_int_equal(session_feed(f->s, buf_head(&f->req), buf_size(&f->req) - 2, f->now), 0);
    buf_clear(&f->req);
    session_drain(f->s, f->now);
    uint64_t next = 200;
    for (int round = 0; round < 20 && session_state(f->s) == SESSION_OPEN; round++) {
        while (fx_pending(f) > 0)
            fx_take(f, FRAME_ECHO_REPLY, next++);
        assert_int_equal(session_feed(f->s, NULL, 0, f->now), 0);
    }
    while (next < 206)
        fx_take(f, FRAME_ECHO_REPLY, next++);
    fx_take(f, FRAME_BYE, 0);
    assert_int_equal(fx_pending(f), 0);
    assert_int_equal(session_state(f->s), SESSION_CLOSING);
    assert_string_equal(session_close_reason(f->s), "drain");
}

static void test_idle_timeout(void **state)
{
    struct fx *f = *state;
    fx_hello(f);
    session_sweep(f->s, f->now + 29999);
    assert_int_equal(session_state(f->s), SESSION_OPEN);
    assert_int_equal(fx_pending(f), 0);
    /* Activity moves the deadline. */
    f->now += 20000;
    assert_int_equal(frame_append(&f->req, FRAME_PING, 2, NULL, 0), 0);
    fx_send(f);
    fx_take(f, FRAME_PONG, 2);
    session_sweep(f->s, T0 + 30000);
    assert_int_equal(session_state(f->s), SESSION_OPEN);
    session_sweep(f->s, f->now + 30000);
    fx_take_error(f, 0, FRAME_ERR_TIMEOUT);
    assert_int_equal(session_state(f->s), SESSION_CLOSING);
    /* A closing session that cannot flush is dropped after the linger. */
    session_sweep(f->s, f->now + 30000 + SESSION_CLOSE_LINGER_MS);
    assert_int_equal(session_state(f->s), SESSION_CLOSED);
}

/* --- the node-wide memory budget: every session's buffers are counted in
 * stats.session_memory as they grow and shrink, and given back when it is
 * freed; an evicted session closes at once. */
static void test_memory_accounting(void **state)
{
    struct fx *f = *state;
    fx_hello(f);
    assert_int_equal(node_stats_get(&f->stats.session_memory), session_memory(f->s));
    /* Replies nobody reads pile up (up to --max-output). */
    uint8_t payload[1000];
    memset(payload, 'm', sizeof payload);
    for (uint64_t i = 0; i < 200; i++)
        assert_int_equal(frame_append(&f->req, FRAME_ECHO, 10 + i, payload, sizeof payload), 0);
    fx_send(f);
    size_t m = session_memory(f->s);
    assert_true(m >= 200 * (FRAME_HEADER_SIZE + sizeof payload));
    assert_int_equal(node_stats_get(&f->stats.session_memory), m);
    assert_true(session_slow_reader(f->s));
    /* A second session's memory adds up. */
    struct session *other = session_new(&f->env, &f->ws[1], 44, "127.0.0.1:6666", NULL, f->now);
    assert_non_null(other);
    assert_int_equal(frame_append_hello(&f->req, 1, FRAME_VERSION, "other"), 0);
    assert_int_equal(session_feed(other, buf_head(&f->req), buf_size(&f->req), f->now), 0);
    buf_clear(&f->req);
    assert_int_equal(node_stats_get(&f->stats.session_memory), m + session_memory(other));
    session_free(other);
    assert_int_equal(node_stats_get(&f->stats.session_memory), m);

    f->env.max_session_memory = 4096;
    session_evict(f->s, m, f->now);
    assert_int_equal(session_state(f->s), SESSION_CLOSED);
    assert_string_equal(session_close_reason(f->s), "memory_budget");
    assert_int_equal(node_stats_get(&f->ws[0].memory_evictions), 1);
    assert_false(session_slow_reader(f->s));
    session_free(f->s);
    f->s = NULL;
    assert_int_equal(node_stats_get(&f->stats.session_memory), 0);
}

/* --- with a journal: ACKs carry the seq and wait for the fsync, with
 * every reply after them (request order); a SEND the journal cannot store
 * is refused with ERROR internal, never ACKed. */

static int jfail;
static ssize_t jfail_writev(int fd, const struct iovec *iov, int n)
{
    if (jfail) {
        errno = ENOSPC;
        return -1;
    }
    return writev(fd, iov, n);
}

/* Takes the next reply from what the session lets go now. */
static struct frame jx_take(struct fx *f, uint8_t type, uint64_t rid)
{
    struct buf *out = session_output(f->s);
    size_t ready = session_output_ready(f->s);
    struct frame fr;
    enum frame_error err = FRAME_ERR_NONE;
    long n = frame_decode(buf_head(out), ready, UINT32_MAX, &fr, &err);
    assert_true(n > 0);
    assert_int_equal(fr.h.type, type);
    assert_int_equal(fr.h.request_id, rid);
    buf_clear(&f->last);
    assert_int_equal(buf_append(&f->last, fr.payload, fr.h.length), 0);
    fr.payload = fr.h.length ? buf_head(&f->last) : NULL;
    session_output_consume(f->s, (size_t)n);
    return fr;
}

/* A journal in a new temp dir (its name into dir) that fsyncs only when
 * the test calls journal_sync_now. */
static struct journal *jx_open(char *dir)
{
    assert_non_null(mkdtemp(dir));
    struct journal_config jc = {.dir = dir, .fsync = JOURNAL_FSYNC_BATCH, .fsync_interval_ms = 2,
                                .fsync_batch = 1024, .segment_bytes = 1 << 20,
                                .manual_sync = true, .writev_hook = jfail_writev};
    char err[256];
    struct journal *j = journal_open(&jc, err, sizeof(err));
    if (!j)
        fail_msg("journal_open: %s", err);
    return j;
}

static void jx_remove(struct journal *j, const char *dir)
{
    journal_free(j);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* Replaces the fixture's session with one that journals into j. */
static void fx_use_journal(struct fx *f, struct journal *j)
{
    session_free(f->s);
    f->env.journal = j;
    f->s = session_new(&f->env, &f->ws[0], 43, "127.0.0.1:5555", NULL, f->now);
    assert_non_null(f->s);
}

static void test_journal_holds_replies(void **state)
{
    struct fx *f = *state;
    char dir[] = "/tmp/berth-test-session-journal-XXXXXX";
    struct journal *j = jx_open(dir);
    fx_use_journal(f, j);

    assert_int_equal(frame_append_hello(&f->req, 1, FRAME_VERSION, "tester"), 0);
    fx_send(f);
    jx_take(f, FRAME_WELCOME, 1);
    assert_int_equal(frame_append_send(&f->req, 2, 77, "abc", 3), 0);
    assert_int_equal(frame_append_send(&f->req, 3, 78, "def", 3), 0);
    assert_int_equal(frame_append(&f->req, FRAME_PING, 4, "p", 1), 0);
    fx_send(f);
    /* Three replies are queued, none may go before the fsync. */
    assert_true(fx_pending(f) > 0);
    assert_int_equal(session_output_ready(f->s), 0);
    assert_true(session_journal_wait(f->s));
    journal_sync_now(j);
    assert_int_equal(session_output_ready(f->s), fx_pending(f));
    assert_false(session_journal_wait(f->s));
    struct frame fr = jx_take(f, FRAME_ACK, 2);
    struct frame_ack ack;
    assert_int_equal(frame_parse_ack(&fr, &ack), 0);
    assert_int_equal(ack.message_id, 77);
    assert_int_equal(ack.seq, 1);
    fr = jx_take(f, FRAME_ACK, 3);
    assert_int_equal(frame_parse_ack(&fr, &ack), 0);
    assert_int_equal(ack.seq, 2);
    jx_take(f, FRAME_PONG, 4);

    /* The disk is full: ERROR internal with the cause, no ACK. */
    jfail = 1;
    assert_int_equal(frame_append_send(&f->req, 5, 79, "ghi", 3), 0);
    fx_send(f);
    jfail = 0;
    fr = jx_take(f, FRAME_ERROR, 5);
    struct frame_error_body eb;
    assert_int_equal(frame_parse_error(&fr, &eb), 0);
    assert_int_equal(eb.code, FRAME_ERR_INTERNAL);
    assert_non_null(strstr(eb.text, "No space left on device"));
    /* The text is fixed: the journal's directory stays on the node. */
    assert_string_equal(eb.text, "journal: cannot store the message: No space left on device");
    assert_null(strstr(eb.text, dir));
    assert_null(strstr(eb.text, "/tmp"));
    assert_int_equal(session_state(f->s), SESSION_CLOSING);
    assert_false(journal_healthy(j, NULL, 0));

    session_free(f->s);
    f->s = NULL;
    jx_remove(j, dir);
}

/* --- --max-inflight: a session with that many requests unanswered (reply
 * not written) parses nothing more, whatever is buffered, until replies go. */

/* Whole frames in the output now. */
static size_t fx_count_frames(struct fx *f)
{
    struct buf *out = session_output(f->s);
    size_t off = 0, count = 0;
    for (;;) {
        struct frame fr;
        enum frame_error err = FRAME_ERR_NONE;
        long n = frame_decode(buf_head(out) + off, buf_size(out) - off, UINT32_MAX, &fr, &err);
        assert_true(n >= 0);
        if (n == 0)
            return count;
        off += (size_t)n;
        count++;
    }
}

static void test_inflight_limit(void **state)
{
    struct fx *f = *state;
    f->env.max_inflight = 10;
    assert_int_equal(frame_append_hello(&f->req, 1, FRAME_VERSION, "pipe"), 0);
    for (uint64_t i = 0; i < 100; i++)
        assert_int_equal(frame_append(&f->req, FRAME_PING, 2 + i, "x", 1), 0);
    fx_send(f);
    /* HELLO and 9 PINGs answered; the other 91 stay unparsed in the input. */
    assert_int_equal(session_inflight(f->s), 10);
    assert_int_equal(node_stats_get(&f->ws[0].requests), 10);
    assert_int_equal(fx_count_frames(f), 10);
    /* Feeding more changes nothing while nothing is written. */
    assert_int_equal(session_feed(f->s, NULL, 0, f->now), 0);
    assert_int_equal(session_inflight(f->s), 10);
    assert_int_equal(node_stats_get(&f->ws[0].requests), 10);

    /* Half a reply written does not answer it. */
    session_output_consume(f->s, FRAME_HEADER_SIZE);
    assert_int_equal(session_inflight(f->s), 10);
    session_output_consume(f->s, fx_pending(f) - 9 * (FRAME_HEADER_SIZE + 1));
    assert_int_equal(session_inflight(f->s), 9);
    assert_int_equal(session_feed(f->s, NULL, 0, f->now), 0);
    assert_int_equal(session_inflight(f->s), 10);

    /* The client reads as it goes: every PING answered once, in order. */
    uint64_t next = 2;
    for (int round = 0; round < 200 && next < 102; round++) {
        while (fx_pending(f) > 0)
            fx_take(f, FRAME_PONG, next++);
        assert_int_equal(session_feed(f->s, NULL, 0, f->now), 0);
        assert_true(session_inflight(f->s) <= 10);
    }
    assert_int_equal(next, 102);
    assert_int_equal(fx_pending(f), 0);
    assert_int_equal(session_inflight(f->s), 0);
    assert_int_equal(session_state(f->s), SESSION_OPEN);
}

static void test_inflight_journal(void **state)
{
    struct fx *f = *state;
    char dir[] = "/tmp/berth-test-session-inflight-XXXXXX";
    struct journal *j = jx_open(dir);
    f->env.max_inflight = 8;
    fx_use_journal(f, j);
    assert_int_equal(frame_append_hello(&f->req, 1, FRAME_VERSION, "tester"), 0);
    fx_send(f);
    jx_take(f, FRAME_WELCOME, 1);
    /* 20 SENDs pipelined; the disk has not fsynced yet. */
    for (uint64_t i = 0; i < 20; i++)
        assert_int_equal(frame_append_send(&f->req, 2 + i, 500 + i, "data", 4), 0);
    fx_send(f);
    /* 8 stored, their ACKs held; the other 12 not even parsed. */
    assert_int_equal(session_inflight(f->s), 8);
    assert_int_equal(journal_next_seq(j), 9);
    assert_int_equal(session_output_ready(f->s), 0);
    assert_int_equal(session_feed(f->s, NULL, 0, f->now), 0);
    assert_int_equal(journal_next_seq(j), 9);

    uint64_t next = 2;
    for (int round = 0; round < 10 && next < 22; round++) {
        journal_sync_now(j);
        while (session_output_ready(f->s) > 0) {
            struct frame fr = jx_take(f, FRAME_ACK, next);
            struct frame_ack ack;
            assert_int_equal(frame_parse_ack(&fr, &ack), 0);
            assert_int_equal(ack.message_id, 500 + next - 2);
            assert_int_equal(ack.seq, next - 1);
            next++;
        }
        assert_int_equal(session_feed(f->s, NULL, 0, f->now), 0);
        assert_true(session_inflight(f->s) <= 8);
    }
    assert_int_equal(next, 22);
    assert_int_equal(journal_next_seq(j), 21);
    assert_int_equal(session_inflight(f->s), 0);

    session_free(f->s);
    f->s = NULL;
    jx_remove(j, dir);
}

/* ---- TLS over a socketpair ---------------------------------------------- */

struct tlsfx {
    struct node_worker_stats ws[1];
    struct node_stats stats;
    struct session_env env;
    char dir[64], cert[96], key[96];
    SSL_CTX *sctx, *cctx;
    struct session *s;
    struct tls_conn *cl;
    struct buf in; /* what the client read */
};

static void write_cert(const char *cert, const char *key)
{
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    assert_non_null(pk);
    X509 *x = X509_new();
    assert_non_null(x);
    assert_int_equal(X509_set_version(x, 2), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 1), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), -60));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 3600));
    assert_int_equal(X509_set_pubkey(x, pk), 1);
    X509_NAME *name = X509_get_subject_name(x);
    assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                                (const unsigned char *)"localhost", -1, -1, 0), 1);
    assert_int_equal(X509_set_issuer_name(x, name), 1);
    assert_true(X509_sign(x, pk, EVP_sha256()) > 0);
    FILE *fc = fopen(cert, "w"), *fk = fopen(key, "w");
    assert_non_null(fc);
    assert_non_null(fk);
    assert_int_equal(PEM_write_X509(fc, x), 1);
    assert_int_equal(PEM_write_PrivateKey(fk, pk, NULL, NULL, 0, NULL, NULL), 1);
    fclose(fc);
    fclose(fk);
    X509_free(x);
    EVP_PKEY_free(pk);
}

static int tls_setup(void **state)
{
    struct tlsfx *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    snprintf(t->dir, sizeof(t->dir), "/tmp/berth-test-session-XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    snprintf(t->cert, sizeof(t->cert), "%s/cert.pem", t->dir);
    snprintf(t->key, sizeof(t->key), "%s/key.pem", t->dir);
    write_cert(t->cert, t->key);
    char err[256];
    t->sctx = tls_ctx_server_new(t->cert, t->key, err, sizeof(err));
    if (!t->sctx)
        fail_msg("tls_ctx_server_new: %s", err);
    t->cctx = tls_ctx_client_new(NULL, false, err, sizeof(err));
    if (!t->cctx)
        fail_msg("tls_ctx_client_new: %s", err);

    t->stats.nworkers = 1;
    t->stats.workers = t->ws;
    t->env.node_id = "tls-node";
    t->env.advertise = "127.0.0.1:7443";
    t->env.start_ms = T0;
    t->env.max_frame = 1u << 20;
    t->env.idle_timeout_ms = 30000;
    t->env.handshake_timeout_ms = 10000;
    t->env.max_connections = 10;
    t->env.max_output = 65536;
    t->env.max_inflight = 1024;
    t->env.stats = &t->stats;

    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    struct tls_conn *srv = tls_conn_new_server(t->sctx, sv[0]);
    assert_non_null(srv);
    t->s = session_new(&t->env, &t->ws[0], 7, "unix", srv, T0);
    assert_non_null(t->s);
    t->cl = tls_conn_new_client(t->cctx, sv[1], NULL, err, sizeof(err));
    if (!t->cl)
        fail_msg("tls_conn_new_client: %s", err);
    buf_init(&t->in);
    *state = t;
    return 0;
}

static int tls_teardown(void **state)
{
    struct tlsfx *t = *state;
    session_free(t->s);
    tls_conn_free(t->cl);
    SSL_CTX_free(t->sctx);
    SSL_CTX_free(t->cctx);
    buf_release(&t->in);
    unlink(t->cert);
    unlink(t->key);
    rmdir(t->dir);
    free(t);
    return 0;
}

static void tls_handshake_both(struct tlsfx *t)
{
    bool client_done = false;
    for (int i = 0; i < 100 && !(client_done && session_state(t->s) == SESSION_OPEN); i++) {
        if (!client_done) {
            enum tls_status st = tls_conn_handshake(t->cl);
            assert_true(st == TLS_DONE || st == TLS_AGAIN);
            client_done = st == TLS_DONE;
        }
        session_handle(t->s, EPOLLIN | EPOLLOUT, T0);
    }
    assert_true(client_done);
    assert_int_equal(session_state(t->s), SESSION_OPEN);
    assert_int_equal(node_stats_get(&t->ws[0].handshakes_ok), 1);
}

/* Client reads whatever is there into t->in; returns TLS status of the last read. */
static enum tls_status tls_client_read(struct tlsfx *t)
{
    for (;;) {
        uint8_t tmp[16384];
        size_t n = 0;
        enum tls_status st = tls_conn_read(t->cl, tmp, sizeof(tmp), &n);
        if (st != TLS_DONE)
            return st;
        assert_int_equal(buf_append(&t->in, tmp, n), 0);
    }
}

/* Next complete reply from what the client read, or false. */
static bool tls_next(struct tlsfx *t, struct frame *fr, long *len)
{
    enum frame_error err;
    if (buf_size(&t->in) == 0)
        return false;
    long n = frame_decode(buf_head(&t->in), buf_size(&t->in), UINT32_MAX, fr, &err);
    assert_true(n >= 0);
    *len = n;
    return n > 0;
}

static void test_tls_session(void **state)
{
    struct tlsfx *t = *state;
    tls_handshake_both(t);

    struct buf req;
    buf_init(&req);
    assert_int_equal(frame_append_hello(&req, 1, FRAME_VERSION, "tls-client"), 0);
    for (uint64_t i = 0; i < 20; i++)
        assert_int_equal(frame_append(&req, FRAME_ECHO, 2 + i, "pipelined", 9), 0);
    assert_int_equal(frame_append(&req, FRAME_INFO, 22, NULL, 0), 0);
    size_t n = 0;
    assert_int_equal(tls_conn_write(t->cl, buf_head(&req), buf_size(&req), &n), TLS_DONE);
    assert_int_equal(n, buf_size(&req));
    buf_release(&req);

    uint64_t want = 1;
    for (int i = 0; i < 100 && want <= 22; i++) {
        session_handle(t->s, EPOLLIN, T0 + 1);
        assert_int_equal(tls_client_read(t), TLS_AGAIN);
        struct frame fr;
        long len = 0;
        while (tls_next(t, &fr, &len)) {
            assert_int_equal(fr.h.request_id, want);
            if (want == 1) {
                assert_int_equal(fr.h.type, FRAME_WELCOME);
            } else if (want == 22) {
                assert_int_equal(fr.h.type, FRAME_INFO_REPLY);
                json_t *j = json_loadb((const char *)fr.payload, fr.h.length, 0, NULL);
                assert_non_null(j);
                json_t *tj = json_object_get(j, "tls");
                assert_string_equal(json_string_value(json_object_get(tj, "protocol")), "TLSv1.3");
                assert_non_null(json_string_value(json_object_get(tj, "cipher")));
                assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "session"),
                                                                    "requests")), 21);
                json_decref(j);
            } else {
                assert_int_equal(fr.h.type, FRAME_ECHO_REPLY);
                assert_memory_equal(fr.payload, "pipelined", 9);
            }
            buf_consume(&t->in, (size_t)len);
            want++;
        }
    }
    assert_int_equal(want, 23);
    /* Idle again: waiting for input only. */
    assert_int_equal(session_events(t->s), EPOLLIN);
}

/* Frames cut anywhere across TLS records: whole ones are answered from the
 * read itself, the cut one waits in the input until its rest comes; and the
 * sweep's switching of TLS record buffers (busy, then quiet) keeps the
 * stream intact. */
static void tls_expect_echoes(struct tlsfx *t, uint64_t *want, uint64_t last, uint64_t now)
{
    for (int i = 0; i < 100 && *want <= last; i++) {
        session_handle(t->s, EPOLLIN, now);
        assert_int_equal(tls_client_read(t), TLS_AGAIN);
        struct frame fr;
        long len = 0;
        while (tls_next(t, &fr, &len)) {
            assert_int_equal(fr.h.request_id, *want);
            if (*want > 1) {
                char body[16];
                int bl = snprintf(body, sizeof(body), "e%03u", (unsigned)*want);
                assert_int_equal(fr.h.type, FRAME_ECHO_REPLY);
                assert_int_equal(fr.h.length, bl);
                assert_memory_equal(fr.payload, body, (size_t)bl);
            }
            buf_consume(&t->in, (size_t)len);
            (*want)++;
        }
    }
    assert_int_equal(*want, last + 1);
}

static void tls_send_records(struct tlsfx *t, const struct buf *req, const size_t *cuts,
                             size_t ncuts)
{
    size_t at = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : buf_size(req);
        while (at < end) {
            size_t n = 0;
            assert_int_equal(tls_conn_write(t->cl, buf_head(req) + at, end - at, &n), TLS_DONE);
            at += n;
        }
        /* The session reads each record by itself. */
        session_handle(t->s, EPOLLIN, T0 + 1);
    }
}

static void test_tls_split_frames(void **state)
{
    struct tlsfx *t = *state;
    tls_handshake_both(t);

    struct buf req;
    buf_init(&req);
    assert_int_equal(frame_append_hello(&req, 1, FRAME_VERSION, "tls-split"), 0);
    for (uint64_t id = 2; id <= 6; id++) {
        char body[16];
        int bl = snprintf(body, sizeof(body), "e%03u", (unsigned)id);
        assert_int_equal(frame_append(&req, FRAME_ECHO, id, body, (size_t)bl), 0);
    }
    size_t hello_len = buf_size(&req) - 5 * (FRAME_HEADER_SIZE + 4);
    /* HELLO and half a header; the header's rest and half a body; the body's
     * rest, two whole frames and one byte; the rest. */
    size_t cuts[] = {hello_len + 7, hello_len + FRAME_HEADER_SIZE + 2,
                     hello_len + 3 * (FRAME_HEADER_SIZE + 4) + 1};
    tls_send_records(t, &req, cuts, sizeof(cuts) / sizeof(cuts[0]));
    buf_release(&req);
    uint64_t want = 1;
    tls_expect_echoes(t, &want, 6, T0 + 1);

    /* Busy: enough requests between two sweeps keep the record buffers. */
    uint64_t now = T0 + 2;
    session_sweep(t->s, now);
    buf_init(&req);
    for (uint64_t id = 7; id <= 30; id++) {
        char body[16];
        int bl = snprintf(body, sizeof(body), "e%03u", (unsigned)id);
        assert_int_equal(frame_append(&req, FRAME_ECHO, id, body, (size_t)bl), 0);
    }
    size_t cut2[] = {5, 100, 101};
    tls_send_records(t, &req, cut2, 3);
    buf_release(&req);
    tls_expect_echoes(t, &want, 30, now);
    session_sweep(t->s, now + 250); /* busy: buffers kept */
    buf_init(&req);
    assert_int_equal(frame_append(&req, FRAME_ECHO, 31, "e031", 4), 0);
    tls_send_records(t, &req, NULL, 0);
    buf_release(&req);
    tls_expect_echoes(t, &want, 31, now + 250);
    session_sweep(t->s, now + 500); /* quiet: buffers given back */
    session_sweep(t->s, now + 750);
    buf_init(&req);
    assert_int_equal(frame_append(&req, FRAME_ECHO, 32, "e032", 4), 0);
    size_t cut3[] = {3};
    tls_send_records(t, &req, cut3, 1);
    buf_release(&req);
    tls_expect_echoes(t, &want, 32, now + 750);
    assert_int_equal(session_state(t->s), SESSION_OPEN);
    assert_int_equal(session_inflight(t->s), 0);
    assert_int_equal(session_events(t->s), EPOLLIN);
}

static void test_tls_backpressure(void **state)
{
    struct tlsfx *t = *state;
    tls_handshake_both(t);

    /* 64 ECHOs of 64 KiB: far more than the socket buffers and --max-output. */
    enum { COUNT = 64, SIZE = 65536 };
    struct buf req;
    buf_init(&req);
    assert_int_equal(frame_append_hello(&req, 1, FRAME_VERSION, "bp"), 0);
    uint8_t *payload = malloc(SIZE);
    assert_non_null(payload);
    for (uint64_t i = 0; i < COUNT; i++) {
        memset(payload, (int)('a' + i % 26), SIZE);
        assert_int_equal(frame_append(&req, FRAME_ECHO, 2 + i, payload, SIZE), 0);
    }
    free(payload);

    /* The client writes without reading until it cannot write any more. */
    bool blocked = false;
    for (int i = 0; i < 10000 && buf_size(&req) > 0 && !blocked; i++) {
        size_t n = 0;
        enum tls_status st = tls_conn_write(t->cl, buf_head(&req), buf_size(&req), &n);
        if (st == TLS_DONE) {
            buf_consume(&req, n);
        } else {
            assert_int_equal(st, TLS_AGAIN);
            session_handle(t->s, EPOLLIN | EPOLLOUT, T0);
            size_t again = 0;
            st = tls_conn_write(t->cl, buf_head(&req), buf_size(&req), &again);
            if (st == TLS_DONE)
                buf_consume(&req, again);
            else
                blocked = !(session_events(t->s) & EPOLLIN);
        }
    }
    /* The session stopped reading: output above the limit, waiting to write. */
    assert_true(blocked);
    uint32_t ev = session_events(t->s);
    assert_false(ev & EPOLLIN);
    assert_true(ev & EPOLLOUT);
    assert_true(buf_size(session_output(t->s)) >= t->env.max_output);

    /* Now the client reads; every reply arrives, in order. */
    uint64_t want = 1;
    for (int i = 0; i < 100000 && want <= COUNT + 1; i++) {
        if (buf_size(&req) > 0) {
            size_t n = 0;
            if (tls_conn_write(t->cl, buf_head(&req), buf_size(&req), &n) == TLS_DONE)
                buf_consume(&req, n);
        }
        session_handle(t->s, EPOLLIN | EPOLLOUT, T0);
        assert_int_equal(tls_client_read(t), TLS_AGAIN);
        struct frame fr;
        long len = 0;
        while (tls_next(t, &fr, &len)) {
            assert_int_equal(fr.h.request_id, want);
            if (want > 1) {
                assert_int_equal(fr.h.type, FRAME_ECHO_REPLY);
                assert_int_equal(fr.h.length, SIZE);
                assert_int_equal(fr.payload[SIZE - 1], 'a' + (want - 2) % 26);
            }
            buf_consume(&t->in, (size_t)len);
            want++;
        }
    }
    assert_int_equal(want, COUNT + 2);
    buf_release(&req);
}

static void test_tls_drain(void **state)
{
    struct tlsfx *t = *state;
    tls_handshake_both(t);
    struct buf req;
    buf_init(&req);
    assert_int_equal(frame_append_hello(&req, 1, FRAME_VERSION, "drain"), 0);
    assert_int_equal(frame_append(&req, FRAME_PING, 2, NULL, 0), 0);
    size_t n = 0;
    assert_int_equal(tls_conn_write(t->cl, buf_head(&req), buf_size(&req), &n), TLS_DONE);
    buf_release(&req);
    /* The requests sit in the socket; drain still answers what is received. */
    session_handle(t->s, EPOLLIN, T0);
    session_drain(t->s, T0);
    for (int i = 0; i < 10 && session_state(t->s) != SESSION_CLOSED; i++)
        session_handle(t->s, EPOLLOUT, T0);
    assert_int_equal(session_state(t->s), SESSION_CLOSED);
    assert_int_equal(tls_client_read(t), TLS_CLOSED);
    struct frame fr;
    long len = 0; /* tls_next sets it when it returns true; -O3 cannot see that */
    assert_true(tls_next(t, &fr, &len));
    assert_int_equal(fr.h.type, FRAME_WELCOME);
    buf_consume(&t->in, (size_t)len);
    assert_true(tls_next(t, &fr, &len));
    assert_int_equal(fr.h.type, FRAME_PONG);
    assert_int_equal(fr.h.request_id, 2);
    buf_consume(&t->in, (size_t)len);
    assert_true(tls_next(t, &fr, &len));
    assert_int_equal(fr.h.type, FRAME_BYE);
    assert_int_equal(fr.h.request_id, 0);
}

static void test_tls_handshake_garbage(void **state)
{
    struct tlsfx *t = *state;
    /* Not TLS at all: the handshake fails and the session closes. */
    int fd = tls_conn_fd(t->cl);
    static const char junk[] = "GET / HTTP/1.0\r\n\r\n";
    assert_int_equal(write(fd, junk, sizeof(junk) - 1), (ssize_t)(sizeof(junk) - 1));
    for (int i = 0; i < 10 && session_state(t->s) != SESSION_CLOSED; i++)
        session_handle(t->s, EPOLLIN, T0);
    assert_int_equal(session_state(t->s), SESSION_CLOSED);
    assert_int_equal(node_stats_get(&t->ws[0].handshakes_failed), 1);
}

static void test_tls_handshake_timeout(void **state)
{
    struct tlsfx *t = *state;
    session_handle(t->s, EPOLLIN, T0);
    assert_int_equal(session_state(t->s), SESSION_HANDSHAKE);
    session_sweep(t->s, T0 + 9999);
    assert_int_equal(session_state(t->s), SESSION_HANDSHAKE);
    session_sweep(t->s, T0 + 10000);
    assert_int_equal(session_state(t->s), SESSION_CLOSED);
    assert_string_equal(session_close_reason(t->s), "handshake_timeout");
}

/* --first-byte-timeout: a connection that sent nothing is closed at that
 * deadline, well before the handshake timeout, and counted. */
static void test_tls_first_byte_timeout(void **state)
{
    struct tlsfx *t = *state;
    t->env.first_byte_timeout_ms = 2000;
    session_handle(t->s, 0, T0);
    session_sweep(t->s, T0 + 1999);
    assert_int_equal(session_state(t->s), SESSION_HANDSHAKE);
    assert_false(session_got_bytes(t->s));
    session_sweep(t->s, T0 + 2000);
    assert_int_equal(session_state(t->s), SESSION_CLOSED);
    assert_string_equal(session_close_reason(t->s), "first_byte_timeout");
    assert_int_equal(node_stats_get(&t->ws[0].first_byte_timeouts), 1);
    assert_int_equal(node_stats_get(&t->ws[0].handshakes_failed), 1);
}

/* A client whose ClientHello arrived is under the handshake timeout only. */
static void test_tls_first_byte_then_stall(void **state)
{
    struct tlsfx *t = *state;
    t->env.first_byte_timeout_ms = 2000;
    assert_int_equal(tls_conn_handshake(t->cl), TLS_AGAIN); /* ClientHello sent */
    session_handle(t->s, EPOLLIN, T0 + 10);
    assert_true(session_got_bytes(t->s));
    /* The client never answers the ServerHello. */
    session_sweep(t->s, T0 + 2000);
    assert_int_equal(session_state(t->s), SESSION_HANDSHAKE);
    session_sweep(t->s, T0 + 10000);
    assert_int_equal(session_state(t->s), SESSION_CLOSED);
    assert_string_equal(session_close_reason(t->s), "handshake_timeout");
    assert_int_equal(node_stats_get(&t->ws[0].first_byte_timeouts), 0);
}

static void test_tls_inflight(void **state)
{
    struct tlsfx *t = *state;
    t->env.max_inflight = 16;
    tls_handshake_both(t);
    /* 2000 PINGs of 1 KiB written without reading: far more than the
     * socket buffers hold, while 16 replies are far below --max-output, so
     * the in-flight limit is what stops the reading. */
    enum { COUNT = 2000, SIZE = 1000 };
    static uint8_t payload[SIZE];
    memset(payload, 'q', sizeof(payload));
    struct buf req;
    buf_init(&req);
    assert_int_equal(frame_append_hello(&req, 1, FRAME_VERSION, "inflight"), 0);
    for (uint64_t i = 0; i < COUNT; i++)
        assert_int_equal(frame_append(&req, FRAME_PING, 2 + i, payload, SIZE), 0);
    for (int i = 0; i < 1000 && buf_size(&req) > 0; i++) {
        size_t n = 0;
        enum tls_status st = tls_conn_write(t->cl, buf_head(&req), buf_size(&req), &n);
        assert_true(st == TLS_DONE || st == TLS_AGAIN);
        if (st == TLS_DONE)
            buf_consume(&req, n);
        else if (!(session_events(t->s) & EPOLLIN))
            break;
        session_handle(t->s, EPOLLIN | EPOLLOUT, T0);
    }
    /* The client never read: the session holds 16 requests unanswered
     * (their replies in the socket or the output) and waits. A few replies
     * fit the socket buffer, so count what is in flight now. */
    for (int i = 0; i < 10; i++)
        session_handle(t->s, EPOLLIN | EPOLLOUT, T0);
    assert_int_equal(session_inflight(t->s), 16);
    assert_false(session_events(t->s) & EPOLLIN);
    assert_true(buf_size(session_output(t->s)) < t->env.max_output);
    uint64_t answered = node_stats_get(&t->ws[0].requests);
    assert_true(answered < COUNT / 2);

    /* The client reads: every PING answered, in order. */
    uint64_t want = 1;
    for (int i = 0; i < 100000 && want <= COUNT + 1; i++) {
        if (buf_size(&req) > 0) {
            size_t n = 0;
            if (tls_conn_write(t->cl, buf_head(&req), buf_size(&req), &n) == TLS_DONE)
                buf_consume(&req, n);
        }
        session_handle(t->s, EPOLLIN | EPOLLOUT, T0);
        assert_int_equal(tls_client_read(t), TLS_AGAIN);
        struct frame fr;
        long len = 0;
        while (tls_next(t, &fr, &len)) {
            assert_int_equal(fr.h.request_id, want);
            assert_int_equal(fr.h.type, want == 1 ? FRAME_WELCOME : FRAME_PONG);
            assert_int_equal(fr.h.length, want == 1 ? fr.h.length : SIZE);
            buf_consume(&t->in, (size_t)len);
            want++;
        }
        assert_true(session_inflight(t->s) <= 16);
    }
    assert_int_equal(want, COUNT + 2);
    buf_release(&req);
}

/* ---- mutual TLS: --client-ca ------------------------------------------- */

static struct test_certs pki;

static int pki_setup(void **state)
{
    (void)state;
    return test_certs_make(&pki, "/tmp/berth-session-mtls");
}

static int pki_teardown(void **state)
{
    (void)state;
    test_certs_remove(&pki);
    return 0;
}

/* A node context that requires client certificates from pki's CA, a
 * session on it, and a client presenting cert/key (NULL: none). */
static int mtls_open(struct tlsfx *t, const char *cert, const char *key)
{
    char err[256];
    memset(t, 0, sizeof(*t));
    t->sctx = tls_ctx_server_new(pki.leaf_pem, pki.leaf_key, err, sizeof(err));
    if (!t->sctx || tls_ctx_require_client_cert(t->sctx, pki.ca_pem, err, sizeof(err)) != 0)
        fail_msg("server context: %s", err);
    t->cctx = tls_ctx_client_new(pki.ca_pem, true, err, sizeof(err));
    if (!t->cctx)
        fail_msg("tls_ctx_client_new: %s", err);
    if (cert && tls_ctx_use_client_cert(t->cctx, cert, key, err, sizeof(err)) != 0)
        fail_msg("tls_ctx_use_client_cert: %s", err);
    t->stats.nworkers = 1;
    t->stats.workers = t->ws;
    t->env.node_id = "mtls-node";
    t->env.advertise = "127.0.0.1:7443";
    t->env.start_ms = T0;
    t->env.max_frame = 1u << 20;
    t->env.idle_timeout_ms = 30000;
    t->env.handshake_timeout_ms = 10000;
    t->env.max_connections = 10;
    t->env.max_output = 65536;
    t->env.max_inflight = 1024;
    t->env.stats = &t->stats;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    struct tls_conn *srv = tls_conn_new_server(t->sctx, sv[0]);
    assert_non_null(srv);
    t->s = session_new(&t->env, &t->ws[0], 9, "unix", srv, T0);
    assert_non_null(t->s);
    t->cl = tls_conn_new_client(t->cctx, sv[1], "localhost", err, sizeof(err));
    if (!t->cl)
        fail_msg("tls_conn_new_client: %s", err);
    buf_init(&t->in);
    return 0;
}

static void mtls_close(struct tlsfx *t)
{
    session_free(t->s);
    tls_conn_free(t->cl);
    SSL_CTX_free(t->sctx);
    SSL_CTX_free(t->cctx);
    buf_release(&t->in);
}

/* SHA-256 of a PEM certificate's DER. */
static void pem_sha256(const char *path, uint8_t md[32])
{
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    X509 *x = PEM_read_X509(fp, NULL, NULL, NULL);
    fclose(fp);
    assert_non_null(x);
    unsigned int n = 0;
    assert_int_equal(X509_digest(x, EVP_sha256(), md, &n), 1);
    assert_int_equal(n, 32);
    X509_free(x);
}

static void test_mtls_identity(void **state)
{
    (void)state;
    struct tlsfx t;
    mtls_open(&t, pki.leaf_pem, pki.leaf_key);
    char dir[] = "/tmp/berth-test-session-mtls-XXXXXX";
    struct journal *j = jx_open(dir);
    t.env.journal = j;
    tls_handshake_both(&t);

    struct buf req;
    buf_init(&req);
    assert_int_equal(frame_append_hello(&req, 1, FRAME_VERSION, "mtls-client"), 0);
    assert_int_equal(frame_append(&req, FRAME_INFO, 2, NULL, 0), 0);
    assert_int_equal(frame_append_send(&req, 3, 4242, "signed", 6), 0);
    size_t n = 0;
    assert_int_equal(tls_conn_write(t.cl, buf_head(&req), buf_size(&req), &n), TLS_DONE);
    assert_int_equal(n, buf_size(&req));
    buf_release(&req);

    uint8_t md[32];
    char hex[65];
    pem_sha256(pki.leaf_pem, md);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    uint64_t want = 1;
    for (int i = 0; i < 100 && want <= 3; i++) {
        session_handle(t.s, EPOLLIN, T0 + 1);
        journal_sync_now(j);
        session_handle(t.s, EPOLLOUT, T0 + 1);
        assert_int_equal(tls_client_read(&t), TLS_AGAIN);
        struct frame fr;
        long len = 0;
        while (tls_next(&t, &fr, &len)) {
            assert_int_equal(fr.h.request_id, want);
            if (want == 2) {
                assert_int_equal(fr.h.type, FRAME_INFO_REPLY);
                json_t *jj = json_loadb((const char *)fr.payload, fr.h.length, 0, NULL);
                assert_non_null(jj);
                json_t *sj = json_object_get(jj, "session");
                assert_string_equal(json_string_value(json_object_get(sj, "client_cert")),
                                    "localhost");
                assert_string_equal(json_string_value(json_object_get(sj, "client_cert_sha256")),
                                    hex);
                json_decref(jj);
            } else if (want == 3) {
                assert_int_equal(fr.h.type, FRAME_ACK);
            }
            buf_consume(&t.in, (size_t)len);
            want++;
        }
    }
    assert_int_equal(want, 4);

    /* The record names the certificate: its digest, then its CN. */
    struct journal_reader *r = journal_reader_new(dir, 1);
    assert_non_null(r);
    struct buf raw;
    buf_init(&raw);
    struct journal_record rec;
    char err[256];
    assert_int_equal(journal_reader_next(r, UINT64_MAX, &raw, &rec, err, sizeof(err)), 1);
    assert_int_equal(rec.message_id, 4242);
    assert_int_equal(rec.ident_kind, JOURNAL_IDENT_CERT);
    assert_int_equal(rec.cert_len, 32 + 9);
    assert_memory_equal(rec.cert, md, 32);
    assert_memory_equal(rec.cert + 32, "localhost", 9);
    assert_int_equal(rec.len, 6);
    assert_memory_equal(rec.data, "signed", 6);
    assert_int_equal(rec.name_len, 11);
    assert_memory_equal(rec.name, "mtls-client", 11);
    buf_release(&raw);
    journal_reader_free(r);
    mtls_close(&t);
    jx_remove(j, dir);
}

/* Runs both ends until the node's session is closed or open. */
static void mtls_run(struct tlsfx *t)
{
    for (int i = 0; i < 100 && session_state(t->s) == SESSION_HANDSHAKE; i++) {
        enum tls_status st = tls_conn_handshake(t->cl);
        (void)st; /* TLS 1.3: the client may finish before the node says no */
        session_handle(t->s, EPOLLIN | EPOLLOUT, T0);
    }
}

static void test_mtls_refused(void **state)
{
    (void)state;
    /* No certificate, then one the CA did not sign (a self-signed CA's). */
    const char *certs[2][2] = {{NULL, NULL}, {pki.other_ca_pem, pki.other_key}};
    for (int k = 0; k < 2; k++) {
        struct tlsfx t;
        mtls_open(&t, certs[k][0], certs[k][1]);
        mtls_run(&t);
        assert_int_equal(session_state(t.s), SESSION_CLOSED);
        assert_string_equal(session_close_reason(t.s), "handshake_failed");
        assert_int_equal(node_stats_get(&t.ws[0].handshakes_failed), 1);
        assert_int_equal(node_stats_get(&t.ws[0].handshakes_ok), 0);
        /* The client learns it: an alert, not a session. */
        uint8_t b[64];
        size_t n = 0;
        enum tls_status st = TLS_AGAIN;
        for (int i = 0; i < 10 && st == TLS_AGAIN; i++) {
            st = tls_conn_handshake(t.cl);
            if (st == TLS_DONE)
                st = tls_conn_read(t.cl, b, sizeof(b), &n);
        }
        assert_true(st == TLS_ERROR || st == TLS_CLOSED);
        mtls_close(&t);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hello_welcome, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_request_before_hello, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_in_order, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_byte_at_a_time, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_send_ack_sha256, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_oversized_header, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_unknown_type, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_version_body, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_version_header, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_later_version_negotiated, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_drain_before_hello, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_drain_partial_hello, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_hello_timeout, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_partial_bytes_are_not_activity, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_second_hello, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_reply_type_from_client, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_reply_type_before_hello, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_hello_version_max, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_malformed, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_flags, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_malformed_hello, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_truncated_waits, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bye, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_backpressure, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_drain, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_journal_holds_replies, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_inflight_limit, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_memory_accounting, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_inflight_journal, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tls_session, tls_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_split_frames, tls_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_backpressure, tls_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_drain, tls_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_handshake_garbage, tls_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_handshake_timeout, tls_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_inflight, tls_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_first_byte_timeout, tls_setup, tls_teardown),
        cmocka_unit_test_setup_teardown(test_tls_first_byte_then_stall, tls_setup, tls_teardown),
        cmocka_unit_test(test_mtls_identity),
        cmocka_unit_test(test_mtls_refused),
    };
    return cmocka_run_group_tests(tests, pki_setup, pki_teardown);
}
