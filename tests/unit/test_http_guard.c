/* test_http_guard: balancer/http_guard.c: admission per client with the
 * reserve for new clients, and request deadlines that trickled bytes
 * cannot push back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "http_guard.h"
#include "registry.h"

struct expired {
    int fds[64];
    size_t n;
};

static void on_expired(void *ctx, int fd, void *owner)
{
    struct expired *e = ctx;
    (void)owner;
    assert_true(e->n < 64);
    e->fds[e->n++] = fd;
}

/* 16 addresses x per_net would take every slot; the reserve keeps the
 * last eighth for clients holding none, and the per-client count of an
 * IPv6 client is its /64's. */
static void test_admission(void **state)
{
    (void)state;
    struct http_guard_config cfg = {.limit = 32, .per_net = 4, .reserve = 4, .request_ms = 1000};
    struct http_guard *g = http_guard_new(&cfg);
    assert_non_null(g);
    char net[REGISTRY_CLIENT_NET_MAX];
    int fd = 0;
    /* 7 attackers x 4 = 28 = limit - reserve */
    for (int a = 0; a < 7; a++) {
        char addr[32];
        snprintf(addr, sizeof addr, "10.0.0.%d", a);
        for (int k = 0; k < 4; k++) {
            assert_int_equal(http_guard_admit(g, addr), HTTP_GUARD_OK);
            assert_non_null(http_guard_open(g, addr, fd++, NULL, 0));
        }
        assert_int_equal(http_guard_admit(g, addr), HTTP_GUARD_PER_NET);
    }
    /* an eighth attacker gets one, then only the reserve is left: it is
     * for clients holding none */
    assert_int_equal(http_guard_admit(g, "10.0.0.7"), HTTP_GUARD_OK);
    assert_non_null(http_guard_open(g, "10.0.0.7", fd++, NULL, 0));
    assert_int_equal(http_guard_admit(g, "10.0.0.7"), HTTP_GUARD_RESERVE);
    assert_int_equal(http_guard_admit(g, "10.0.0.0"), HTTP_GUARD_PER_NET);
    for (int k = 0; k < 3; k++) {
        char addr[32];
        snprintf(addr, sizeof addr, "192.0.2.%d", k);
        assert_int_equal(http_guard_admit(g, addr), HTTP_GUARD_OK);
        assert_non_null(http_guard_open(g, addr, fd++, NULL, 0));
    }
    assert_int_equal(http_guard_admit(g, "192.0.2.99"), HTTP_GUARD_FULL);
    struct http_guard_stats st;
    http_guard_stats(g, &st);
    assert_int_equal(st.open, 32);
    assert_int_equal(st.refused[HTTP_GUARD_FULL], 1);
    assert_int_equal(st.refused[HTTP_GUARD_RESERVE], 1);
    assert_int_equal(st.refused[HTTP_GUARD_PER_NET], 8);
    assert_string_equal(http_guard_verdict_name(HTTP_GUARD_PER_NET), "per_address");
    http_guard_free(g);

    /* IPv6: one /64 is one client, however many addresses it uses */
    g = http_guard_new(&cfg);
    assert_non_null(g);
    for (int k = 0; k < 4; k++) {
        char addr[64];
        snprintf(addr, sizeof addr, "2001:db8:1:2::%x", k + 1);
        registry_client_net(addr, net, sizeof net);
        assert_int_equal(http_guard_admit(g, net), HTTP_GUARD_OK);
        assert_non_null(http_guard_open(g, net, k, NULL, 0));
    }
    registry_client_net("2001:db8:1:2:ffff::1", net, sizeof net);
    assert_int_equal(http_guard_admit(g, net), HTTP_GUARD_PER_NET);
    registry_client_net("2001:db8:1:3::1", net, sizeof net);
    assert_int_equal(http_guard_admit(g, net), HTTP_GUARD_OK);
    http_guard_free(g);
}

/* The deadline is absolute: nothing but the request's completion clears
 * it, and keep-alive starts a new one. */
static void test_deadlines(void **state)
{
    (void)state;
    struct http_guard_config cfg = {.limit = 8, .per_net = 0, .reserve = 0, .request_ms = 1000};
    struct http_guard *g = http_guard_new(&cfg);
    assert_non_null(g);
    assert_int_equal(http_guard_next_ms(g, 0), -1);
    struct http_guard_conn *slow = http_guard_open(g, "10.0.0.1", 7, NULL, 100);
    struct http_guard_conn *fast = http_guard_open(g, "10.0.0.2", 8, NULL, 200);
    assert_int_equal(http_guard_next_ms(g, 100), 1000);
    struct expired e = {{0}, 0};
    assert_int_equal(http_guard_expire(g, 1099, on_expired, &e), 0);
    http_guard_answering(g, fast); /* its request is in */
    assert_int_equal(http_guard_expire(g, 1100, on_expired, &e), 1);
    assert_int_equal(e.fds[0], 7);
    /* once: the caller is ending it */
    assert_int_equal(http_guard_expire(g, 5000, on_expired, &e), 0);
    http_guard_close(g, slow);
    /* keep-alive: a new deadline from the end of the answer */
    http_guard_request_done(g, fast, 6000);
    assert_int_equal(http_guard_next_ms(g, 6500), 500);
    assert_int_equal(http_guard_expire(g, 6999, on_expired, &e), 0);
    assert_int_equal(http_guard_expire(g, 7000, on_expired, &e), 1);
    assert_int_equal(e.fds[1], 8);
    struct http_guard_stats st;
    http_guard_stats(g, &st);
    assert_int_equal(st.timed_out, 2);
    assert_int_equal(st.open, 1);
    http_guard_free(g); /* frees what is still open */
    http_guard_free(NULL);
    http_guard_close(NULL, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_admission),
        cmocka_unit_test(test_deadlines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
