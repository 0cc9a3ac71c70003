/* Unit tests for shared/buf.c: append, consume, reserve/commit, compaction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "buf.h"

static void test_init_release(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    assert_null(b.data);
    assert_int_equal(buf_size(&b), 0);
    buf_release(&b);
    buf_release(&b); /* releasing twice is harmless: release re-inits */
    assert_null(b.data);
}

static void test_append_consume(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    assert_int_equal(buf_append(&b, "hello ", 6), 0);
    assert_int_equal(buf_append(&b, "world", 5), 0);
    assert_int_equal(buf_size(&b), 11);
    assert_memory_equal(buf_head(&b), "hello world", 11);

    buf_consume(&b, 6);
    assert_int_equal(buf_size(&b), 5);
    assert_memory_equal(buf_head(&b), "world", 5);

    /* Consuming everything resets to the front of the storage. */
    buf_consume(&b, 5);
    assert_int_equal(buf_size(&b), 0);
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 0);

    assert_int_equal(buf_append(&b, "x", 1), 0);
    assert_int_equal(b.off, 0);
    assert_memory_equal(buf_head(&b), "x", 1);

    /* Zero-length append is a no-op, even with a NULL pointer. */
    assert_int_equal(buf_append(&b, NULL, 0), 0);
    assert_int_equal(buf_size(&b), 1);

    buf_clear(&b);
    assert_int_equal(buf_size(&b), 0);
    buf_release(&b);
}

static void test_reserve_commit(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    assert_int_equal(buf_reserve(&b, 100), 0);
    assert_true(b.cap - b.len >= 100);
    memcpy(buf_tail(&b), "abc", 3);
    buf_commit(&b, 3);
    assert_int_equal(buf_size(&b), 3);
    assert_memory_equal(buf_head(&b), "abc", 3);

    /* Reserving what is already there does not move or grow anything. */
    uint8_t *data = b.data;
    size_t cap = b.cap;
    assert_int_equal(buf_reserve(&b, 10), 0);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, cap);

    /* An impossible size fails cleanly and leaves the content alone. */
    assert_int_equal(buf_reserve(&b, SIZE_MAX), -1);
    assert_int_equal(buf_size(&b), 3);
    assert_memory_equal(buf_head(&b), "abc", 3);
    buf_release(&b);
}

static void test_growth_keeps_content(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    uint8_t chunk[1000];
    for (size_t i = 0; i < 100; i++) {
        memset(chunk, (int)i, sizeof chunk);
        assert_int_equal(buf_append(&b, chunk, sizeof chunk), 0);
    }
    assert_int_equal(buf_size(&b), 100000);
    for (size_t i = 0; i < 100; i++)
        assert_int_equal(buf_head(&b)[i * 1000 + 999], (uint8_t)i);
    buf_release(&b);
}

static void test_compaction(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    uint8_t fill[200];
    memset(fill, 'a', sizeof fill);
    assert_int_equal(buf_append(&b, fill, sizeof fill), 0);
    size_t cap = b.cap;
    uint8_t *data = b.data;

    /* Consume most of it, then ask for more room than the tail has but less
     * than tail + consumed prefix: the content moves down, no new block. */
    buf_consume(&b, 190);
    assert_int_equal(b.off, 190);
    size_t want = cap - 20;
    assert_true(want > b.cap - b.len);
    assert_int_equal(buf_reserve(&b, want), 0);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, cap);
    assert_int_equal(b.off, 0);
    assert_int_equal(buf_size(&b), 10);
    assert_memory_equal(buf_head(&b), fill, 10);

    /* Growth also drops the consumed prefix. */
    buf_consume(&b, 5);
    assert_int_equal(buf_reserve(&b, cap * 4), 0);
    assert_int_equal(b.off, 0);
    assert_int_equal(buf_size(&b), 5);
    assert_true(b.cap - b.len >= cap * 4);
    buf_release(&b);
}

static void test_interleaved(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    /* A socket buffer read and written in turns must not grow without bound. */
    uint8_t in[97];
    uint64_t expect = 0, next = 0;
    for (int round = 0; round < 10000; round++) {
        for (size_t i = 0; i < sizeof in; i++)
            in[i] = (uint8_t)(next++ & 0xff);
        assert_int_equal(buf_append(&b, in, sizeof in), 0);
        size_t take = buf_size(&b) > 90 + (size_t)(round % 20) ? 90 + (size_t)(round % 20) : buf_size(&b);
        for (size_t i = 0; i < take; i++)
            assert_int_equal(buf_head(&b)[i], (uint8_t)(expect++ & 0xff));
        buf_consume(&b, take);
    }
    assert_true(b.cap <= 1024);
    buf_release(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_release),   cmocka_unit_test(test_append_consume),
        cmocka_unit_test(test_reserve_commit), cmocka_unit_test(test_growth_keeps_content),
        cmocka_unit_test(test_compaction),     cmocka_unit_test(test_interleaved),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
