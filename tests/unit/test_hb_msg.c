/* Unit tests for shared/hb_msg.c: round trips of every message type and
 * rejection of bad input (garbage, wrong shapes, missing/mistyped fields,
 * out-of-range values, long strings, bad ids and addresses). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hb_msg.h"

static char err[256];

static void fill_register(struct hb_msg *m)
{
    memset(m, 0, sizeof *m);
    m->type = HB_REGISTER;
    strcpy(m->node_id, "node-1");
    m->boot_id = 0xfedcba9876543210u;
    m->seq = 1;
    strcpy(m->addr, "127.0.0.1:7001");
    m->capacity = 1000;
    strcpy(m->version, "0.1.0");
}

static void fill_heartbeat(struct hb_msg *m)
{
    memset(m, 0, sizeof *m);
    m->type = HB_HEARTBEAT;
    strcpy(m->node_id, "node_2.x");
    m->boot_id = 0x0123456789abcdefu;
    m->seq = 99;
    m->sessions = 12;
    m->accepted = 345;
    m->msgs_per_sec = 1234.5;
    m->healthy = false;
    m->draining = true;
    strcpy(m->reason, "worker 1 stalled");
    m->nworkers = 3;
    for (uint32_t i = 0; i < m->nworkers; i++) {
        m->workers[i].ticks = 1000 + i;
        m->workers[i].handshakes_ok = 10 + i;
        m->workers[i].handshakes_failed = i;
    }
}

static void fill_leave(struct hb_msg *m)
{
    memset(m, 0, sizeof *m);
    m->type = HB_LEAVE;
    strcpy(m->node_id, "n");
    m->boot_id = 1;
    m->seq = 7;
}

static void fill_ack(struct hb_msg *m, enum hb_type t)
{
    memset(m, 0, sizeof *m);
    m->type = t;
    strcpy(m->node_id, "node-1");
    m->interval_ms = 250;
    m->epoch = 17;
}

/* Encodes m, decodes the result, and returns it in out. */
static void roundtrip(const struct hb_msg *m, struct hb_msg *out)
{
    size_t len = 0;
    char *json = hb_msg_encode(m, &len, err, sizeof err);
    assert_non_null(json);
    assert_int_equal(len, strlen(json));
    int rc = hb_msg_decode(json, len, out, err, sizeof err);
    if (rc != 0)
        fail_msg("decode of %s failed: %s", json, err);
    free(json);
}

static void test_type_names(void **state)
{
    (void)state;
    assert_string_equal(hb_type_name(HB_REGISTER), "register");
    assert_string_equal(hb_type_name(HB_HEARTBEAT), "heartbeat");
    assert_string_equal(hb_type_name(HB_LEAVE), "leave");
    assert_string_equal(hb_type_name(HB_ACK), "ack");
    assert_string_equal(hb_type_name(HB_REREGISTER), "reregister");
    assert_string_equal(hb_type_name(HB_TYPE_COUNT), "unknown");
}

static void test_roundtrip_register(void **state)
{
    (void)state;
    struct hb_msg m, got;
    fill_register(&m);
    roundtrip(&m, &got);
    assert_int_equal(got.type, HB_REGISTER);
    assert_string_equal(got.node_id, "node-1");
    assert_int_equal(got.boot_id, 0xfedcba9876543210u);
    assert_int_equal(got.seq, 1);
    assert_string_equal(got.addr, "127.0.0.1:7001");
    assert_int_equal(got.capacity, 1000);
    assert_string_equal(got.version, "0.1.0");

    /* Bracketed IPv6 and host names; extremes of the integer ranges. */
    strcpy(m.addr, "[2001:db8::1]:65535");
    m.capacity = UINT32_MAX;
    m.seq = INT64_MAX;
    m.boot_id = UINT64_MAX;
    roundtrip(&m, &got);
    assert_string_equal(got.addr, "[2001:db8::1]:65535");
    assert_int_equal(got.capacity, UINT32_MAX);
    assert_int_equal(got.seq, INT64_MAX);
    assert_int_equal(got.boot_id, UINT64_MAX);
}

static void test_roundtrip_heartbeat(void **state)
{
    (void)state;
    struct hb_msg m, got;
    fill_heartbeat(&m);
    roundtrip(&m, &got);
    assert_int_equal(got.type, HB_HEARTBEAT);
    assert_string_equal(got.node_id, "node_2.x");
    assert_int_equal(got.boot_id, 0x0123456789abcdefu);
    assert_int_equal(got.seq, 99);
    assert_int_equal(got.sessions, 12);
    assert_int_equal(got.accepted, 345);
    assert_true(got.msgs_per_sec == 1234.5);
    assert_false(got.healthy);
    assert_true(got.draining);
    assert_string_equal(got.reason, "worker 1 stalled");
    assert_int_equal(got.nworkers, 3);
    for (uint32_t i = 0; i < 3; i++) {
        assert_int_equal(got.workers[i].ticks, 1000 + i);
        assert_int_equal(got.workers[i].handshakes_ok, 10 + i);
        assert_int_equal(got.workers[i].handshakes_failed, i);
    }

    /* The largest worker table and an empty reason. */
    m.nworkers = HB_MAX_WORKERS;
    for (uint32_t i = 0; i < HB_MAX_WORKERS; i++)
        m.workers[i] = (struct hb_worker){INT64_MAX, i, INT64_MAX - i};
    m.reason[0] = '\0';
    m.healthy = true;
    m.draining = false;
    m.msgs_per_sec = 0;
    roundtrip(&m, &got);
    assert_int_equal(got.nworkers, HB_MAX_WORKERS);
    assert_int_equal(got.workers[63].handshakes_failed, INT64_MAX - 63);
    assert_string_equal(got.reason, "");
    assert_true(got.healthy);
    assert_false(got.draining);
}

static void test_roundtrip_leave_ack(void **state)
{
    (void)state;
    struct hb_msg m, got;
    fill_leave(&m);
    roundtrip(&m, &got);
    assert_int_equal(got.type, HB_LEAVE);
    assert_string_equal(got.node_id, "n");
    assert_int_equal(got.boot_id, 1);
    assert_int_equal(got.seq, 7);

    const enum hb_type types[] = {HB_ACK, HB_REREGISTER};
    for (size_t i = 0; i < 2; i++) {
        fill_ack(&m, types[i]);
        roundtrip(&m, &got);
        assert_int_equal(got.type, types[i]);
        assert_string_equal(got.node_id, "node-1");
        assert_int_equal(got.interval_ms, 250);
        assert_int_equal(got.epoch, 17);
    }
}

/* The wire shape is what DESIGN.md shows. */
static void test_wire_shape(void **state)
{
    (void)state;
    struct hb_msg m;
    fill_heartbeat(&m);
    size_t len;
    char *json = hb_msg_encode(&m, &len, err, sizeof err);
    assert_non_null(json);
    json_error_t jerr;
    json_t *o = json_loadb(json, len, 0, &jerr);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "type")), "heartbeat");
    assert_string_equal(json_string_value(json_object_get(o, "boot")), "0123456789abcdef");
    json_t *w = json_array_get(json_object_get(o, "workers"), 1);
    assert_int_equal(json_integer_value(json_object_get(w, "ticks")), 1001);
    assert_int_equal(json_integer_value(json_object_get(w, "hs_ok")), 11);
    assert_int_equal(json_integer_value(json_object_get(w, "hs_failed")), 1);
    json_decref(o);
    free(json);
}

static void test_encode_rejects(void **state)
{
    (void)state;
    struct hb_msg m;
    size_t len;

    fill_register(&m);
    strcpy(m.node_id, "bad id");
    assert_null(hb_msg_encode(&m, &len, err, sizeof err));
    assert_non_null(strstr(err, "\"node\""));

    fill_register(&m);
    strcpy(m.addr, "nohost");
    assert_null(hb_msg_encode(&m, &len, err, sizeof err));
    assert_non_null(strstr(err, "\"addr\""));

    fill_register(&m);
    m.capacity = 0;
    assert_null(hb_msg_encode(&m, &len, err, sizeof err));
    assert_non_null(strstr(err, "\"capacity\""));

    fill_register(&m);
    m.seq = (uint64_t)INT64_MAX + 1;
    assert_null(hb_msg_encode(&m, &len, err, sizeof err));
    assert_non_null(strstr(err, "\"seq\""));

    fill_heartbeat(&m);
    m.msgs_per_sec = NAN;
    assert_null(hb_msg_encode(&m, &len, err, sizeof err));
    m.msgs_per_sec = INFINITY;
    assert_null(hb_msg_encode(&m, &len, err, sizeof err));
    m.msgs_per_sec = -1;
    assert_null(hb_msg_encode(&m, &len, err, sizeof err));
    assert_non_null(strstr(err, "\"msgs_per_sec\""));
    /* a huge finite rate would overflow the integers the balancer makes of it */
    m.msgs_per_sec = 1e300;
    assert_null(hb_msg_encode(&m, &len, err, sizeof err));
    m.msgs_per_sec = HB_RATE_MAX;
    char *ok = hb_msg_encode(&m, &len, err, sizeof err);
    assert_non_null(ok);
    free(ok);

    fill_heartbeat(&m);
    m.nworkers = HB_MAX_WORKERS + 1;
    assert_null(hb_msg_encode(&m, &len, err, sizeof err));
    assert_non_null(strstr(err, "\"workers\""));

    fill_heartbeat(&m);
    strcpy(m.reason, "\xff\xfe not utf-8");
    assert_null(hb_msg_encode(&m, &len, err, sizeof err));
    assert_non_null(strstr(err, "\"reason\""));

    fill_ack(&m, HB_ACK);
    m.interval_ms = 0;
    assert_null(hb_msg_encode(&m, &len, err, sizeof err));
    assert_non_null(strstr(err, "\"interval_ms\""));

    fill_ack(&m, HB_ACK);
    m.type = HB_TYPE_COUNT;
    assert_null(hb_msg_encode(&m, &len, err, sizeof err));
}

/* Decodes a C string and expects failure with `want` in the message. */
static void reject(const char *json, const char *want)
{
    struct hb_msg m;
    err[0] = '\0';
    int rc = hb_msg_decode(json, strlen(json), &m, err, sizeof err);
    if (rc != -1)
        fail_msg("accepted: %s", json);
    if (want != NULL && strstr(err, want) == NULL)
        fail_msg("for %s: error \"%s\" does not contain \"%s\"", json, err, want);
}

static void accept_json(const char *json, struct hb_msg *m)
{
    if (hb_msg_decode(json, strlen(json), m, err, sizeof err) != 0)
        fail_msg("rejected %s: %s", json, err);
}

static void test_decode_garbage(void **state)
{
    (void)state;
    struct hb_msg m;
    const uint8_t bin[] = {0x00, 0xff, 0x13, 0x37, 0x80, '{', 0x01};
    assert_int_equal(hb_msg_decode(bin, sizeof bin, &m, err, sizeof err), -1);
    assert_int_equal(hb_msg_decode(NULL, 0, &m, err, sizeof err), -1);
    assert_int_equal(hb_msg_decode("", 0, &m, err, sizeof err), -1);
    /* A NUL inside the buffer is not the end of the message. */
    const char nul[] = "{\"type\":\"leave\"}\0garbage";
    assert_int_equal(hb_msg_decode(nul, sizeof nul - 1, &m, err, sizeof err), -1);

    reject("not json", "not valid JSON");
    reject("{", "not valid JSON");
    reject("{\"type\":\"leave\",}", "not valid JSON");
    reject("[]", "JSON object");
    reject("[{\"type\":\"leave\",\"node\":\"n\",\"boot\":\"0000000000000001\",\"seq\":1}]",
           "JSON object");
    reject("\"leave\"", "JSON object");
    reject("42", "JSON object");
    reject("null", "JSON object");
    reject("{}", "missing field \"type\"");
    /* A NUL inside a string would hide the rest from every check on the C
     * string; jansson refuses it while parsing (no JSON_ALLOW_NUL). */
    reject("{\"type\":\"leave\",\"node\":\"n1\\u0000x\",\"boot\":\"0000000000000001\",\"seq\":1}",
           "not allowed");
    reject("{\"type\":7}", "field \"type\" must be a string");
    reject("{\"type\":\"bogus\",\"node\":\"n\"}", "unknown type \"bogus\"");
    reject("{\"type\":\"Leave\",\"node\":\"n\"}", "unknown type");

    /* Error buffers may be NULL or tiny. */
    assert_int_equal(hb_msg_decode("[]", 2, &m, NULL, 0), -1);
    char tiny[4];
    assert_int_equal(hb_msg_decode("[]", 2, &m, tiny, sizeof tiny), -1);
    assert_int_equal(strlen(tiny), 3);
}

static void test_decode_too_long(void **state)
{
    (void)state;
    /* Valid JSON, but over the limit: refused before parsing. */
    size_t n = HB_MAX_MESSAGE + 1;
    char *big = malloc(n + 1);
    assert_non_null(big);
    const char *head = "{\"type\":\"leave\",\"node\":\"n\",\"boot\":\"0000000000000001\",\"seq\":1,\"pad\":\"";
    memset(big, 'x', n);
    memcpy(big, head, strlen(head));
    memcpy(big + n - 2, "\"}", 2);
    big[n] = '\0';
    struct hb_msg m;
    assert_int_equal(hb_msg_decode(big, n, &m, err, sizeof err), -1);
    assert_non_null(strstr(err, "longer than"));
    /* One byte less of padding fits. */
    memcpy(big + n - 3, "\"}", 3);
    assert_int_equal(hb_msg_decode(big, n - 1, &m, err, sizeof err), 0);
    free(big);
}

/* A valid object of each type, as text, for the field-by-field tests. */
static const char *const valid_json[HB_TYPE_COUNT] = {
    [HB_REGISTER] = "{\"type\":\"register\",\"node\":\"n1\",\"boot\":\"00000000000000ff\","
                    "\"seq\":0,\"addr\":\"node1:7001\",\"capacity\":1,\"version\":\"0.1.0\"}",
    [HB_HEARTBEAT] = "{\"type\":\"heartbeat\",\"node\":\"n1\",\"boot\":\"00000000000000ff\","
                     "\"seq\":3,\"sessions\":0,\"accepted\":0,\"msgs_per_sec\":0,"
                     "\"healthy\":true,\"draining\":false,\"reason\":\"\","
                     "\"workers\":[{\"ticks\":1,\"hs_ok\":0,\"hs_failed\":0}]}",
    [HB_LEAVE] = "{\"type\":\"leave\",\"node\":\"n1\",\"boot\":\"00000000000000ff\",\"seq\":4}",
    [HB_ACK] = "{\"type\":\"ack\",\"node\":\"n1\",\"interval_ms\":250,\"epoch\":0}",
    [HB_REREGISTER] = "{\"type\":\"reregister\",\"node\":\"n1\",\"interval_ms\":1,\"epoch\":5}",
};

static const char *const required[HB_TYPE_COUNT][10] = {
    [HB_REGISTER] = {"node", "boot", "seq", "addr", "capacity", "version"},
    [HB_HEARTBEAT] = {"node", "boot", "seq", "sessions", "accepted", "msgs_per_sec", "healthy",
                      "draining", "workers"},
    [HB_LEAVE] = {"node", "boot", "seq"},
    [HB_ACK] = {"node", "interval_ms", "epoch"},
    [HB_REREGISTER] = {"node", "interval_ms", "epoch"},
};

/* Parses valid_json[t], applies one change through jansson, and decodes. */
static int decode_modified(enum hb_type t, const char *key, json_t *value, struct hb_msg *m)
{
    json_error_t jerr;
    json_t *o = json_loads(valid_json[t], 0, &jerr);
    assert_non_null(o);
    if (value == NULL)
        assert_int_equal(json_object_del(o, key), 0);
    else
        assert_int_equal(json_object_set_new(o, key, value), 0);
    char *text = json_dumps(o, JSON_COMPACT);
    assert_non_null(text);
    int rc = hb_msg_decode(text, strlen(text), m, err, sizeof err);
    free(text);
    json_decref(o);
    return rc;
}

static void expect_modified_fails(enum hb_type t, const char *key, json_t *value, const char *want)
{
    struct hb_msg m;
    if (decode_modified(t, key, value, &m) != -1)
        fail_msg("%s: %s accepted", hb_type_name(t), key);
    if (strstr(err, want) == NULL)
        fail_msg("%s.%s: error \"%s\" does not contain \"%s\"", hb_type_name(t), key, err, want);
}

static void test_valid_samples(void **state)
{
    (void)state;
    struct hb_msg m;
    for (int t = 0; t < HB_TYPE_COUNT; t++) {
        accept_json(valid_json[t], &m);
        assert_int_equal(m.type, t);
    }
}

static void test_each_missing_field(void **state)
{
    (void)state;
    char want[64];
    for (int t = 0; t < HB_TYPE_COUNT; t++) {
        for (int i = 0; i < 10 && required[t][i] != NULL; i++) {
            snprintf(want, sizeof want, "missing field \"%s\"", required[t][i]);
            expect_modified_fails((enum hb_type)t, required[t][i], NULL, want);
        }
    }
    /* reason is optional. */
    struct hb_msg m;
    assert_int_equal(decode_modified(HB_HEARTBEAT, "reason", NULL, &m), 0);
    assert_string_equal(m.reason, "");
}

static void test_wrong_types(void **state)
{
    (void)state;
    /* Strings where numbers belong, and the other way round. */
    for (int t = 0; t < HB_TYPE_COUNT; t++) {
        for (int i = 0; i < 10 && required[t][i] != NULL; i++) {
            const char *key = required[t][i];
            char want[64];
            snprintf(want, sizeof want, "\"%s\"", key);
            json_t *wrong;
            if (strcmp(key, "node") == 0 || strcmp(key, "boot") == 0 ||
                strcmp(key, "addr") == 0 || strcmp(key, "version") == 0)
                wrong = json_integer(1);
            else
                wrong = json_string("1");
            expect_modified_fails((enum hb_type)t, key, wrong, want);
            expect_modified_fails((enum hb_type)t, key, json_null(), want);
            expect_modified_fails((enum hb_type)t, key, json_object(), want);
        }
    }
    expect_modified_fails(HB_REGISTER, "capacity", json_real(5.0),
                          "field \"capacity\" must be a non-negative integer");
    expect_modified_fails(HB_HEARTBEAT, "sessions", json_real(1.5),
                          "field \"sessions\" must be a non-negative integer");
    expect_modified_fails(HB_HEARTBEAT, "sessions", json_true(),
                          "field \"sessions\" must be a non-negative integer");
    expect_modified_fails(HB_HEARTBEAT, "healthy", json_integer(1),
                          "field \"healthy\" must be a boolean");
    expect_modified_fails(HB_HEARTBEAT, "draining", json_string("false"),
                          "field \"draining\" must be a boolean");
    expect_modified_fails(HB_HEARTBEAT, "msgs_per_sec", json_string("3"),
                          "field \"msgs_per_sec\" must be a number");
    expect_modified_fails(HB_HEARTBEAT, "reason", json_integer(3),
                          "field \"reason\" must be a string");
    expect_modified_fails(HB_HEARTBEAT, "workers", json_object(),
                          "field \"workers\" must be an array");
}

static void test_numbers(void **state)
{
    (void)state;
    expect_modified_fails(HB_HEARTBEAT, "sessions", json_integer(-1),
                          "field \"sessions\" must be a non-negative integer");
    expect_modified_fails(HB_REGISTER, "seq", json_integer(-5), "\"seq\"");
    expect_modified_fails(HB_REGISTER, "capacity", json_integer(0), "\"capacity\"");
    expect_modified_fails(HB_REGISTER, "capacity", json_integer(4294967296LL), "\"capacity\"");
    expect_modified_fails(HB_HEARTBEAT, "sessions", json_integer(4294967296LL), "\"sessions\"");
    expect_modified_fails(HB_ACK, "interval_ms", json_integer(0), "\"interval_ms\"");
    expect_modified_fails(HB_ACK, "interval_ms", json_integer(INT64_MAX), "\"interval_ms\"");
    expect_modified_fails(HB_HEARTBEAT, "msgs_per_sec", json_real(-0.5), "\"msgs_per_sec\"");
    expect_modified_fails(HB_HEARTBEAT, "msgs_per_sec", json_integer(-1), "\"msgs_per_sec\"");

    struct hb_msg m;
    assert_int_equal(decode_modified(HB_REGISTER, "capacity", json_integer(UINT32_MAX), &m), 0);
    assert_int_equal(m.capacity, UINT32_MAX);
    assert_int_equal(decode_modified(HB_HEARTBEAT, "msgs_per_sec", json_integer(7), &m), 0);
    assert_true(m.msgs_per_sec == 7.0);
    assert_int_equal(decode_modified(HB_ACK, "epoch", json_integer(INT64_MAX), &m), 0);
    assert_int_equal(m.epoch, INT64_MAX);

    /* Numbers jansson cannot hold fail as JSON, not as a wrapped value. */
    reject("{\"type\":\"leave\",\"node\":\"n1\",\"boot\":\"00000000000000ff\","
           "\"seq\":99999999999999999999999}",
           "not valid JSON");
    reject("{\"type\":\"heartbeat\",\"node\":\"n1\",\"boot\":\"00000000000000ff\","
           "\"seq\":3,\"sessions\":0,\"accepted\":0,\"msgs_per_sec\":1e400,"
           "\"healthy\":true,\"draining\":false,\"workers\":[]}",
           "not valid JSON");
    reject("{\"type\":\"leave\",\"node\":\"n1\",\"boot\":\"00000000000000ff\",\"seq\":NaN}",
           "not valid JSON");
}

static json_t *repeat_string(char c, size_t n)
{
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, c, n);
    s[n] = '\0';
    json_t *v = json_string(s);
    free(s);
    return v;
}

static void test_strings(void **state)
{
    (void)state;
    struct hb_msg m;
    /* Each string at its limit passes; one byte more fails. */
    assert_int_equal(decode_modified(HB_REGISTER, "node", repeat_string('a', 64), &m), 0);
    expect_modified_fails(HB_REGISTER, "node", repeat_string('a', 65), "\"node\"");
    assert_int_equal(decode_modified(HB_REGISTER, "version", repeat_string('v', 32), &m), 0);
    expect_modified_fails(HB_REGISTER, "version", repeat_string('v', 33), "\"version\"");
    expect_modified_fails(HB_REGISTER, "version", json_string(""), "\"version\"");
    assert_int_equal(decode_modified(HB_HEARTBEAT, "reason", repeat_string('r', 127), &m), 0);
    expect_modified_fails(HB_HEARTBEAT, "reason", repeat_string('r', 128), "\"reason\"");

    char addr[300];
    memset(addr, 'h', 253);
    strcpy(addr + 253, ":7001");
    assert_int_equal(decode_modified(HB_REGISTER, "addr", json_string(addr), &m), 0);
    memset(addr, 'h', 254);
    strcpy(addr + 254, ":7001");
    expect_modified_fails(HB_REGISTER, "addr", json_string(addr), "\"addr\"");
    expect_modified_fails(HB_REGISTER, "addr", repeat_string('h', 5000), "\"addr\"");

    /* A NUL escape inside a string is refused by the JSON layer. */
    reject("{\"type\":\"ack\",\"node\":\"n\\u00001\",\"interval_ms\":1,\"epoch\":0}", NULL);
}

static void test_node_ids(void **state)
{
    (void)state;
    assert_true(hb_node_id_valid("a"));
    assert_true(hb_node_id_valid("Node-01.eu_west"));
    assert_false(hb_node_id_valid(NULL));
    assert_false(hb_node_id_valid(""));
    assert_false(hb_node_id_valid("a b"));
    assert_false(hb_node_id_valid("a/b"));
    assert_false(hb_node_id_valid("a:b"));
    assert_false(hb_node_id_valid("caf\xc3\xa9"));
    assert_false(hb_node_id_valid("x\n"));
    char id[80];
    memset(id, 'z', 64);
    id[64] = '\0';
    assert_true(hb_node_id_valid(id));
    id[64] = 'z';
    id[65] = '\0';
    assert_false(hb_node_id_valid(id));

    const char *bad[] = {"a b", "", "../etc", "n\xc3\xa9", "<script>"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_modified_fails(HB_ACK, "node", json_string(bad[i]), "\"node\"");
}

static void test_boot(void **state)
{
    (void)state;
    struct hb_msg m;
    assert_int_equal(decode_modified(HB_LEAVE, "boot", json_string("ffffffffffffffff"), &m), 0);
    assert_int_equal(m.boot_id, UINT64_MAX);
    const char *bad[] = {"FFFFFFFFFFFFFFFF", "fffffffffffffff", "fffffffffffffffff",
                         "0x00000000000001", "000000000000000g", " 00000000000001f", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_modified_fails(HB_LEAVE, "boot", json_string(bad[i]), "\"boot\"");
    expect_modified_fails(HB_LEAVE, "boot", json_integer(255), "\"boot\"");
}

static void test_addrs(void **state)
{
    (void)state;
    struct hb_msg m;
    const char *good[] = {"127.0.0.1:7001", "node-1.example.com:443", "[::1]:7001",
                          "[2001:db8::1]:1", "berth_node_1:65535", "[::ffff:10.0.0.1]:80"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        if (decode_modified(HB_REGISTER, "addr", json_string(good[i]), &m) != 0)
            fail_msg("%s rejected: %s", good[i], err);
        assert_string_equal(m.addr, good[i]);
    }
    const char *bad[] = {"host", ":80", "host:", "host:0", "host:65536", "host:abc",
                         "host:+80", "host:123456", "::1:80", "[::1]", "[]:80", "[::1:80",
                         "[::1]x:80", "[host]:80", "ho st:80", "host:80 ", "host:-1",
                         "[::1]:0", "http://host:80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_modified_fails(HB_REGISTER, "addr", json_string(bad[i]),
                              "field \"addr\" must be host:port");
}

static void test_workers(void **state)
{
    (void)state;
    json_t *arr = json_array();
    for (int i = 0; i < HB_MAX_WORKERS + 1; i++)
        json_array_append_new(arr, json_pack("{s:i,s:i,s:i}", "ticks", 1, "hs_ok", 0,
                                             "hs_failed", 0));
    expect_modified_fails(HB_HEARTBEAT, "workers", arr, "more than 64");

    struct hb_msg m;
    assert_int_equal(decode_modified(HB_HEARTBEAT, "workers", json_array(), &m), 0);
    assert_int_equal(m.nworkers, 0);

    expect_modified_fails(HB_HEARTBEAT, "workers", json_pack("[i]", 1),
                          "field \"workers[0]\" must be an object");
    expect_modified_fails(HB_HEARTBEAT, "workers",
                          json_pack("[{s:i,s:i,s:i},{s:i,s:i}]", "ticks", 1, "hs_ok", 0,
                                    "hs_failed", 0, "ticks", 1, "hs_ok", 0),
                          "missing field \"workers[1].hs_failed\"");
    expect_modified_fails(HB_HEARTBEAT, "workers",
                          json_pack("[{s:i,s:i,s:i}]", "ticks", -1, "hs_ok", 0, "hs_failed", 0),
                          "field \"workers[0].ticks\" must be a non-negative integer");
    expect_modified_fails(HB_HEARTBEAT, "workers",
                          json_pack("[{s:i,s:s,s:i}]", "ticks", 1, "hs_ok", "0", "hs_failed", 0),
                          "\"workers[0].hs_ok\"");
}

static void test_cert_and_balancers(void **state)
{
    (void)state;
    struct hb_msg m, got;
    fill_register(&m);
    strcpy(m.cert_sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
    roundtrip(&m, &got);
    assert_string_equal(got.cert_sha256, m.cert_sha256);
    fill_register(&m); /* absent: "" both ways */
    roundtrip(&m, &got);
    assert_string_equal(got.cert_sha256, "");
    strcpy(m.cert_sha256, "2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824");
    size_t len;
    assert_null(hb_msg_encode(&m, &len, err, sizeof err));
    assert_non_null(strstr(err, "cert_sha256"));
    expect_modified_fails(HB_REGISTER, "cert_sha256", json_string("abc"), "\"cert_sha256\"");
    expect_modified_fails(HB_REGISTER, "cert_sha256", json_integer(1), "\"cert_sha256\"");

    fill_heartbeat(&m);
    m.nbalancers = 2;
    strcpy(m.balancers[0].endpoint, "tcp://10.0.0.1:7100");
    m.balancers[0].reached = true;
    strcpy(m.balancers[1].endpoint, "tcp://[::1]:7100");
    roundtrip(&m, &got);
    assert_int_equal(got.nbalancers, 2);
    assert_string_equal(got.balancers[0].endpoint, "tcp://10.0.0.1:7100");
    assert_true(got.balancers[0].reached);
    assert_string_equal(got.balancers[1].endpoint, "tcp://[::1]:7100");
    assert_false(got.balancers[1].reached);
    m.nbalancers = HB_MAX_BALANCERS + 1;
    assert_null(hb_msg_encode(&m, &len, err, sizeof err));
    m.nbalancers = 1;
    strcpy(m.balancers[0].endpoint, "tcp://a b");
    assert_null(hb_msg_encode(&m, &len, err, sizeof err));
    assert_non_null(strstr(err, "printable"));

    json_t *arr = json_array();
    for (int i = 0; i < HB_MAX_BALANCERS + 1; i++)
        json_array_append_new(arr, json_pack("{s:s,s:b}", "endpoint", "tcp://x:1", "reached", 1));
    expect_modified_fails(HB_HEARTBEAT, "balancers", arr, "more than 8");
    expect_modified_fails(HB_HEARTBEAT, "balancers", json_pack("[{s:s}]", "endpoint", "tcp://x:1"),
                          "\"balancers[0].reached\" must be a boolean");
    expect_modified_fails(HB_HEARTBEAT, "balancers", json_pack("[{s:s,s:b}]", "endpoint", "",
                                                               "reached", 1),
                          "\"balancers[0].endpoint\"");
    expect_modified_fails(HB_HEARTBEAT, "balancers", json_pack("[{s:s,s:b}]", "endpoint",
                                                               "tcp://x:1\n", "reached", 1),
                          "printable");
    expect_modified_fails(HB_HEARTBEAT, "balancers", json_string("x"), "must be an array");
}

/* The forwarder's figures: optional, all or nothing, bounded like the rest. */
static void test_forward(void **state)
{
    (void)state;
    struct hb_msg m, got;
    fill_heartbeat(&m);
    roundtrip(&m, &got);
    assert_false(got.forward.present);
    m.forward = (struct hb_forward){.present = true, .healthy = false, .forwarded_seq = 41,
                                    .lag_records = 7, .lag_ms = 1500, .errors = 3,
                                    .duplicates = 2};
    roundtrip(&m, &got);
    assert_true(got.forward.present);
    assert_false(got.forward.healthy);
    assert_int_equal(got.forward.forwarded_seq, 41);
    assert_int_equal(got.forward.lag_records, 7);
    assert_int_equal(got.forward.lag_ms, 1500);
    assert_int_equal(got.forward.errors, 3);
    assert_int_equal(got.forward.duplicates, 2);
    expect_modified_fails(HB_HEARTBEAT, "forward", json_string("x"), "must be an object");
    expect_modified_fails(HB_HEARTBEAT, "forward",
                          json_pack("{s:i,s:i,s:i,s:i,s:i}", "seq", 1, "lag_records", 0, "lag_ms",
                                    0, "errors", 0, "duplicates", 0),
                          "\"healthy\"");
    expect_modified_fails(HB_HEARTBEAT, "forward",
                          json_pack("{s:i,s:i,s:i,s:i,s:i,s:b}", "seq", -1, "lag_records", 0,
                                    "lag_ms", 0, "errors", 0, "duplicates", 0, "healthy", 1),
                          "\"forward.seq\"");
}

static void test_duplicates_and_extras(void **state)
{
    (void)state;
    reject("{\"type\":\"ack\",\"node\":\"a\",\"node\":\"b\",\"interval_ms\":1,\"epoch\":0}",
           "not valid JSON");
    /* Unknown fields are ignored so that newer nodes can add load fields. */
    struct hb_msg m;
    accept_json("{\"type\":\"ack\",\"node\":\"a\",\"interval_ms\":1,\"epoch\":0,"
                "\"cpu\":0.5,\"extra\":{\"x\":[1,2]}}",
                &m);
    assert_int_equal(m.type, HB_ACK);
    /* Whitespace around the object is fine. */
    accept_json(" \n{\"type\":\"ack\",\"node\":\"a\",\"interval_ms\":1,\"epoch\":0}\n ", &m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_names),
        cmocka_unit_test(test_roundtrip_register),
        cmocka_unit_test(test_roundtrip_heartbeat),
        cmocka_unit_test(test_roundtrip_leave_ack),
        cmocka_unit_test(test_wire_shape),
        cmocka_unit_test(test_encode_rejects),
        cmocka_unit_test(test_decode_garbage),
        cmocka_unit_test(test_decode_too_long),
        cmocka_unit_test(test_valid_samples),
        cmocka_unit_test(test_each_missing_field),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_node_ids),
        cmocka_unit_test(test_boot),
        cmocka_unit_test(test_addrs),
        cmocka_unit_test(test_workers),
        cmocka_unit_test(test_cert_and_balancers),
        cmocka_unit_test(test_forward),
        cmocka_unit_test(test_duplicates_and_extras),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
