/* Unit tests for node/peer_limit.c: per-address connection and handshake
 * limits, the address key (IPv4, IPv4-mapped, IPv6 /64), and the table
 * staying exact through growth and removals. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "peer_limit.h"

static struct peer_key key_of(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(text, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, text, &a->sin6_addr), 1);
        a->sin6_port = htons(1234);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, text, &a->sin_addr), 1);
        a->sin_port = htons(4321);
    }
    struct peer_key k;
    peer_key_from_sockaddr(&ss, &k);
    return k;
}

static void counts(struct peer_limit *pl, const char *addr, uint32_t conns, uint32_t hs)
{
    struct peer_key k = key_of(addr);
    uint32_t c = 99, h = 99;
    peer_limit_counts(pl, &k, &c, &h);
    assert_int_equal(c, conns);
    assert_int_equal(h, hs);
}

/* Handshakes in progress are capped per address; a finished handshake frees
 * its slot, the connection stays counted; other addresses are not affected. */
static void test_handshake_limit(void **state)
{
    (void)state;
    struct peer_limit *pl = peer_limit_new(0, 3);
    assert_non_null(pl);
    struct peer_key a = key_of("192.0.2.1"), b = key_of("192.0.2.2");
    for (int i = 0; i < 3; i++)
        assert_int_equal(peer_limit_admit(pl, &a), PEER_LIMIT_OK);
    assert_int_equal(peer_limit_admit(pl, &a), PEER_LIMIT_HANDSHAKES);
    counts(pl, "192.0.2.1", 3, 3); /* the refusal counted nothing */
    assert_int_equal(peer_limit_admit(pl, &b), PEER_LIMIT_OK);
    peer_limit_handshake_done(pl, &a);
    assert_int_equal(peer_limit_admit(pl, &a), PEER_LIMIT_OK);
    counts(pl, "192.0.2.1", 4, 3);
    /* A connection closed mid-handshake gives back both. */
    peer_limit_release(pl, &a, true);
    counts(pl, "192.0.2.1", 3, 2);
    peer_limit_release(pl, &a, false); /* the one whose handshake finished */
    peer_limit_release(pl, &a, true);
    peer_limit_release(pl, &a, true);
    counts(pl, "192.0.2.1", 0, 0);
    assert_int_equal(peer_limit_addresses(pl), 1);
    peer_limit_release(pl, &b, true);
    assert_int_equal(peer_limit_addresses(pl), 0);
    peer_limit_free(pl);
    peer_limit_free(NULL);
}

static void test_connection_limit(void **state)
{
    (void)state;
    struct peer_limit *pl = peer_limit_new(2, 0);
    assert_non_null(pl);
    struct peer_key a = key_of("198.51.100.7");
    assert_int_equal(peer_limit_admit(pl, &a), PEER_LIMIT_OK);
    assert_int_equal(peer_limit_admit(pl, &a), PEER_LIMIT_OK);
    peer_limit_handshake_done(pl, &a);
    peer_limit_handshake_done(pl, &a);
    /* Established connections count too: that is the point of this limit. */
    assert_int_equal(peer_limit_admit(pl, &a), PEER_LIMIT_CONNECTIONS);
    peer_limit_release(pl, &a, false);
    assert_int_equal(peer_limit_admit(pl, &a), PEER_LIMIT_OK);
    peer_limit_release(pl, &a, true);
    peer_limit_release(pl, &a, false);
    assert_int_equal(peer_limit_addresses(pl), 0);
    peer_limit_free(pl);
}

/* An IPv4 client on a dual-stack socket is the same client; every address
 * of one IPv6 /64 is one client, the next /64 another. */
static void test_keys(void **state)
{
    (void)state;
    struct peer_limit *pl = peer_limit_new(0, 2);
    assert_non_null(pl);
    struct peer_key v4 = key_of("203.0.113.9"), mapped = key_of("::ffff:203.0.113.9");
    assert_memory_equal(&v4, &mapped, sizeof(v4));
    struct peer_key x1 = key_of("2001:db8:1:2::1"), x2 = key_of("2001:db8:1:2:ffff::7");
    struct peer_key other = key_of("2001:db8:1:3::1");
    assert_memory_equal(&x1, &x2, sizeof(x1));
    assert_memory_not_equal(&x1, &other, sizeof(x1));
    assert_int_equal(peer_limit_admit(pl, &x1), PEER_LIMIT_OK);
    assert_int_equal(peer_limit_admit(pl, &x2), PEER_LIMIT_OK);
    assert_int_equal(peer_limit_admit(pl, &x1), PEER_LIMIT_HANDSHAKES);
    assert_int_equal(peer_limit_admit(pl, &other), PEER_LIMIT_OK);
    /* IPv4 1.2.3.4 and an IPv6 prefix starting 0102:0304 are different keys. */
    struct peer_key a4 = key_of("1.2.3.4"), a6 = key_of("102:304::");
    assert_memory_not_equal(&a4, &a6, sizeof(a4));
    peer_limit_release(pl, &x1, true);
    peer_limit_release(pl, &x2, true);
    peer_limit_release(pl, &other, true);
    assert_int_equal(peer_limit_addresses(pl), 0);
    peer_limit_free(pl);
}

/* Thousands of addresses (the table grows several times), removed in a
 * scrambled order: every count stays exact and the table ends empty, so
 * removal keeps every other entry findable. */
static void test_many_addresses(void **state)
{
    (void)state;
    enum { N = 5000 };
    struct peer_limit *pl = peer_limit_new(3, 0);
    assert_non_null(pl);
    static struct peer_key keys[N];
    for (unsigned i = 0; i < N; i++) {
        char text[32];
        snprintf(text, sizeof(text), "10.%u.%u.%u", i >> 16, (i >> 8) & 255, i & 255);
        keys[i] = key_of(text);
        for (unsigned k = 0; k <= i % 3; k++)
            assert_int_equal(peer_limit_admit(pl, &keys[i]), PEER_LIMIT_OK);
    }
    assert_int_equal(peer_limit_addresses(pl), N);
    uint32_t c, h;
    for (unsigned step = 0; step < N; step++) {
        unsigned i = (step * 2897u) % N; /* 2897 is prime to N: a permutation */
        peer_limit_counts(pl, &keys[i], &c, &h);
        assert_int_equal(c, i % 3 + 1);
        for (unsigned k = 0; k <= i % 3; k++)
            peer_limit_release(pl, &keys[i], true);
        peer_limit_counts(pl, &keys[i], &c, &h);
        assert_int_equal(c, 0);
        if (step % 500 == 0) {
            /* Every address not yet removed is still found with its count. */
            for (unsigned later = step + 1; later < N; later++) {
                unsigned j = (later * 2897u) % N;
                peer_limit_counts(pl, &keys[j], &c, &h);
                assert_int_equal(c, j % 3 + 1);
            }
        }
    }
    assert_int_equal(peer_limit_addresses(pl), 0);
    peer_limit_free(pl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake_limit),
        cmocka_unit_test(test_connection_limit),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_many_addresses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
