/* Unit tests for shared/feed_msg.c: every message round-trips through
 * encode and decode; wrong lengths, names with NUL or too long, unknown
 * types and over-long error texts are refused; error codes have names. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "feed_msg.h"

static void roundtrip(const struct feed_msg *in, size_t want_len)
{
    uint8_t b[FEED_MSG_MAX + FEED_ERROR_TEXT_MAX];
    size_t n = feed_msg_encode(in, b, sizeof(b));
    assert_int_equal(n, want_len);
    struct feed_msg out;
    assert_int_equal(feed_msg_decode(b, n, &out), 0);
    assert_int_equal(out.type, in->type);
    assert_int_equal(out.seq, in->seq);
    assert_int_equal(out.next_seq, in->next_seq);
    assert_int_equal(out.credit, in->credit);
    assert_int_equal(out.name_len, in->name_len);
    if (in->name_len)
        assert_memory_equal(out.name, in->name, in->name_len);
    assert_int_equal(out.code, in->code);
    assert_int_equal(out.body_len, in->body_len);
    /* and one byte short or long is malformed (a BYE has nothing to lose) */
    if (n > 1 && in->type != FEED_MSG_ERROR)
        assert_int_equal(feed_msg_decode(b, n - 1, &out), -1);
    b[n] = 0;
    if (in->type != FEED_MSG_ERROR)
        assert_int_equal(feed_msg_decode(b, n + 1, &out), -1);
    /* too small an output buffer is refused, not overrun */
    assert_int_equal(feed_msg_encode(in, b, n - 1), 0);
}

static void test_roundtrip(void **state)
{
    (void)state;
    roundtrip(&(struct feed_msg){.type = FEED_MSG_SUBSCRIBE, .seq = 7, .credit = 1024}, 13);
    roundtrip(&(struct feed_msg){.type = FEED_MSG_SUBSCRIBE, .seq = 0, .credit = 5,
                                 .name = "archive", .name_len = 7}, 21);
    roundtrip(&(struct feed_msg){.type = FEED_MSG_CREDIT, .credit = 99}, 5);
    roundtrip(&(struct feed_msg){.type = FEED_MSG_CONFIRM, .seq = UINT64_MAX}, 9);
    roundtrip(&(struct feed_msg){.type = FEED_MSG_BYE}, 1);
    roundtrip(&(struct feed_msg){.type = FEED_MSG_WELCOME, .name = "node1", .name_len = 5,
                                 .seq = 3, .next_seq = 10}, 23);
    roundtrip(&(struct feed_msg){.type = FEED_MSG_ERROR, .code = FEED_ERR_NOT_SUBSCRIBED,
                                 .body = (const uint8_t *)"not subscribed", .body_len = 14}, 16);
}

static void test_malformed(void **state)
{
    (void)state;
    struct feed_msg m;
    assert_int_equal(feed_msg_decode((const uint8_t *)"", 0, &m), -1);
    assert_int_equal(feed_msg_decode((const uint8_t *)"Z", 1, &m), -1);
    assert_int_equal(feed_msg_decode((const uint8_t *)"E", 1, &m), -1); /* no code */
    /* a durable name with a NUL, or of length 0 */
    uint8_t s[] = {'S', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 3, 'a', 0, 'b'};
    assert_int_equal(feed_msg_decode(s, sizeof(s), &m), -1);
    uint8_t s0[] = {'S', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0};
    assert_int_equal(feed_msg_decode(s0, sizeof(s0), &m), -1);
    /* a name over FEED_NAME_MAX is refused on both sides */
    char longname[FEED_NAME_MAX + 2];
    memset(longname, 'n', sizeof(longname));
    uint8_t b[256];
    assert_int_equal(feed_msg_encode(&(struct feed_msg){.type = FEED_MSG_SUBSCRIBE,
                                                        .name = longname,
                                                        .name_len = FEED_NAME_MAX + 1},
                                     b, sizeof(b)),
                     0);
    b[0] = 'S';
    memset(b + 1, 0, 12);
    b[13] = FEED_NAME_MAX + 1;
    memset(b + 14, 'n', FEED_NAME_MAX + 1);
    assert_int_equal(feed_msg_decode(b, 14 + FEED_NAME_MAX + 1, &m), -1);
    /* a welcome with no node id */
    uint8_t w[18] = {'W', 0};
    assert_int_equal(feed_msg_decode(w, sizeof(w), &m), -1);
    /* RECORD is the type byte and the record, whatever it holds */
    assert_int_equal(feed_msg_decode((const uint8_t *)"Rxyz", 4, &m), 0);
    assert_int_equal(m.body_len, 3);
    /* error texts are bounded */
    char text[FEED_ERROR_TEXT_MAX + 1];
    memset(text, 't', sizeof(text));
    assert_int_equal(feed_msg_encode(&(struct feed_msg){.type = FEED_MSG_ERROR, .code = 1,
                                                        .body = (const uint8_t *)text,
                                                        .body_len = sizeof(text)},
                                     b, sizeof(b)),
                     0);
}

static void test_error_names(void **state)
{
    (void)state;
    assert_string_equal(feed_err_name(FEED_ERR_NOT_SUBSCRIBED), "not_subscribed");
    assert_string_equal(feed_err_name(FEED_ERR_UNKNOWN_NAME), "unknown_consumer");
    assert_string_equal(feed_err_name(0), "unknown");
    assert_string_equal(feed_err_name(200), "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_error_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
