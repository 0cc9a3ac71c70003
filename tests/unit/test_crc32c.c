/* crc32c: the standard check value, known vectors (RFC 3720 B.4), chaining,
 * and the hardware and table paths agreeing on every length and offset. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "crc32c.h"

static void test_check_value(void **state)
{
    (void)state;
    assert_int_equal(crc32c(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(crc32c_sw(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(crc32c(0, "", 0), 0);
}

static void test_rfc3720_vectors(void **state)
{
    (void)state;
    uint8_t b[32];
    memset(b, 0, sizeof(b));
    assert_int_equal(crc32c(0, b, 32), 0x8A9136AAu);
    memset(b, 0xff, sizeof(b));
    assert_int_equal(crc32c(0, b, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++)
        b[i] = (uint8_t)i;
    assert_int_equal(crc32c(0, b, 32), 0x46DD794Eu);
    for (int i = 0; i < 32; i++)
        b[i] = (uint8_t)(31 - i);
    assert_int_equal(crc32c(0, b, 32), 0x113FDB5Cu);
}

static void test_chaining_and_paths_agree(void **state)
{
    (void)state;
    uint8_t b[1031];
    for (size_t i = 0; i < sizeof(b); i++)
        b[i] = (uint8_t)(i * 131 + 7);
    for (size_t off = 0; off < 9; off++) {
        for (size_t len = 0; off + len <= sizeof(b); len += 13) {
            uint32_t hw = crc32c(0, b + off, len);
            assert_int_equal(hw, crc32c_sw(0, b + off, len));
            size_t cut = len / 3;
            assert_int_equal(hw, crc32c(crc32c(0, b + off, cut), b + off + cut, len - cut));
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_value),
        cmocka_unit_test(test_rfc3720_vectors),
        cmocka_unit_test(test_chaining_and_paths_agree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
