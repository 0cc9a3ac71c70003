/* test_client_retry: the client's backoff with jitter and its list of
 * just-failed nodes, on numbers only (no clock, no sleep), and the public
 * API's argument checks and error texts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "berth/berth.h"
#include "retry.h"

static void test_backoff_grows_and_caps(void **state)
{
    (void)state;
    /* rnd 0 gives the low end (cap/2), UINT32_MAX-ish something in range. */
    assert_int_equal(retry_delay_ms(0, 100, 2000, 0), 50);
    assert_int_equal(retry_delay_ms(1, 100, 2000, 0), 100);
    assert_int_equal(retry_delay_ms(2, 100, 2000, 0), 200);
    assert_int_equal(retry_delay_ms(4, 100, 2000, 0), 800);
    assert_int_equal(retry_delay_ms(5, 100, 2000, 0), 1000); /* cap 2000 reached */
    assert_int_equal(retry_delay_ms(63, 100, 2000, 0), 1000);
    assert_int_equal(retry_delay_ms(1000, 100, 2000, 0), 1000); /* no overflow */
    for (uint32_t r = 0; r < 5000; r += 7) {
        long d = retry_delay_ms(3, 100, 2000, r * 2654435761u);
        assert_true(d >= 400 && d <= 800);
    }
    assert_int_equal(retry_delay_ms(3, 0, 2000, 5), 0);
    assert_int_equal(retry_delay_ms(3, 100, 10, 0), 50); /* max below base: base wins */
}

static void test_jitter_spreads(void **state)
{
    (void)state;
    long lo = 1 << 30, hi = 0;
    for (uint32_t r = 0; r < 1000; r++) {
        long d = retry_delay_ms(2, 100, 2000, r * 2654435761u);
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
    }
    assert_true(lo <= 210 && hi >= 390); /* covers [200, 400] */
}

static void test_exclusion_expires(void **state)
{
    (void)state;
    struct retry_exclude x;
    retry_exclude_init(&x);
    retry_exclude_add(&x, "n1", 1000, 5000);
    retry_exclude_add(&x, "n2", 2000, 1000);
    assert_true(retry_excluded(&x, "n1", 5999));
    assert_false(retry_excluded(&x, "n1", 6000));
    assert_true(retry_excluded(&x, "n2", 2999));
    assert_false(retry_excluded(&x, "n3", 2000));
    const char *ids[4];
    assert_int_equal(retry_exclude_list(&x, 2500, ids, 4), 2);
    assert_int_equal(retry_exclude_list(&x, 3500, ids, 4), 1);
    assert_string_equal(ids[0], "n1");
    /* Adding again extends, never shortens. */
    retry_exclude_add(&x, "n1", 5000, 100);
    assert_true(retry_excluded(&x, "n1", 5999));
    retry_exclude_add(&x, "n1", 5000, 3000);
    assert_true(retry_excluded(&x, "n1", 7999));
    /* Bad ids are ignored. */
    char longid[100];
    memset(longid, 'a', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    retry_exclude_add(&x, longid, 0, 1000);
    retry_exclude_add(&x, "", 0, 1000);
    retry_exclude_add(&x, NULL, 0, 1000);
    assert_int_equal(retry_exclude_list(&x, 5000, ids, 4), 1);
}

static void test_exclusion_full_replaces_soonest(void **state)
{
    (void)state;
    struct retry_exclude x;
    retry_exclude_init(&x);
    char id[16];
    for (int i = 0; i < RETRY_EXCLUDE_MAX; i++) {
        snprintf(id, sizeof(id), "n%d", i);
        retry_exclude_add(&x, id, 0, 1000 + i);
    }
    retry_exclude_add(&x, "new", 0, 5000);
    assert_true(retry_excluded(&x, "new", 10));
    assert_false(retry_excluded(&x, "n0", 10)); /* it expired first */
    assert_true(retry_excluded(&x, "n1", 10));
}

static void test_api_checks(void **state)
{
    (void)state;
    assert_string_equal(berth_strerror(BERTH_OK), "success");
    assert_string_equal(berth_strerror(BERTH_E_LOOKUP), "no balancer answered");
    assert_string_equal(berth_strerror(BERTH_E_COUNT), "unknown error");
    assert_string_equal(berth_strerror((berth_err)-1), "unknown error");
    struct berth_options o;
    berth_options_init(&o);
    berth_client *c = NULL;
    assert_int_equal(berth_client_new(NULL, &c), BERTH_E_INVALID);
    assert_int_equal(berth_client_new(&o, NULL), BERTH_E_INVALID);
    o.name = "";
    assert_int_equal(berth_client_new(&o, &c), BERTH_E_INVALID);
    assert_null(c);
    berth_options_init(&o);
    const char *bad[] = {"ftp://x"};
    o.balancers = bad;
    assert_int_equal(berth_client_new(&o, &c), BERTH_E_INVALID);
    berth_options_init(&o);
    o.timeout_ms = 0;
    assert_int_equal(berth_client_new(&o, &c), BERTH_E_INVALID);
    berth_options_init(&o);
    assert_int_equal(berth_client_new(&o, &c), BERTH_OK);
    assert_string_equal(berth_node_id(c), "");
    assert_int_equal(berth_unacked(c), 0);
    assert_int_equal(berth_send(c, 1, NULL, 5), BERTH_E_INVALID);
    berth_client_free(c);
    berth_client_free(NULL);
}

static void on_ack_unused(void *arg, const struct berth_ack *a)
{
    (void)arg;
    (void)a;
    fail_msg("no ACK without a session");
}

/* What the CLI relies on: the accessors before any session, NULL-safe
 * setters, the options copied (the caller's strings may go away). */
static void test_api_before_session(void **state)
{
    (void)state;
    char key[16], name[16], node[32];
    snprintf(key, sizeof(key), "user-42");
    snprintf(name, sizeof(name), "berth-cli");
    snprintf(node, sizeof(node), "127.0.0.1:1");
    struct berth_options o;
    berth_options_init(&o);
    assert_null(o.key);
    o.key = key;
    o.name = name;
    o.node = node;
    o.timeout_ms = 200;
    o.max_retries = 0;
    berth_client *c = NULL;
    assert_int_equal(berth_client_new(&o, &c), BERTH_OK);
    memset(key, 'x', sizeof(key));
    memset(name, 'x', sizeof(name));
    memset(node, 0, sizeof(node));
    assert_string_equal(berth_node_addr(c), "");
    assert_int_equal(berth_max_message(c), 0);
    assert_int_equal(berth_idle_timeout_ms(c), 0);
    assert_string_equal(berth_error(c), "");
    berth_set_ack_handler(c, on_ack_unused, NULL);
    berth_set_ack_handler(NULL, on_ack_unused, NULL);
    assert_int_equal(berth_info(c, NULL), BERTH_E_INVALID);
    assert_int_equal(berth_info(NULL, NULL), BERTH_E_INVALID);
    /* Nothing listens on port 1: a connection failure that names the node
     * (the copy of --node, not the wiped buffer) and the attempts. */
    char *json = (char *)1;
    assert_int_equal(berth_info(c, &json), BERTH_E_CONNECT);
    assert_null(json);
    assert_non_null(strstr(berth_error(c), "127.0.0.1:1"));
    assert_non_null(strstr(berth_error(c), "gave up after 1 attempts"));
    assert_int_equal(berth_ping(c, NULL), BERTH_E_CONNECT);
    assert_int_equal(berth_unacked(c), 0);
    berth_client_free(c);
    assert_string_equal(berth_node_addr(NULL), "");
    assert_int_equal(berth_max_message(NULL), 0);
    assert_int_equal(berth_idle_timeout_ms(NULL), 0);
}

/* A port on 127.0.0.1 that nobody listens on: bound, learnt, closed. */
static int dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    socklen_t sl = sizeof(sin);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
    close(fd);
    return ntohs(sin.sin_port);
}

/* The class of a lookup failure travels as a code: an unreachable balancer
 * whose URL happens to hold the words "no_healthy_node" is still "no
 * balancer answered", not "no node in rotation". */
static void test_lookup_class_not_from_text(void **state)
{
    (void)state;
    char url[96];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/no_healthy_node", dead_port());
    const char *balancers[] = {url};
    struct berth_options o;
    berth_options_init(&o);
    o.balancers = balancers;
    o.nbalancers = 1;
    o.timeout_ms = 1000;
    o.max_retries = 0;
    o.no_reports = 1;
    berth_client *c = NULL;
    assert_int_equal(berth_client_new(&o, &c), BERTH_OK);
    berth_err r = berth_connect(c);
    if (r != BERTH_E_LOOKUP)
        fail_msg("berth_connect: %s (%d): %s", berth_strerror(r), (int)r, berth_error(c));
    /* The text is still there for people. */
    assert_non_null(strstr(berth_error(c), url));
    berth_client_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backoff_grows_and_caps),
        cmocka_unit_test(test_jitter_spreads),
        cmocka_unit_test(test_exclusion_expires),
        cmocka_unit_test(test_exclusion_full_replaces_soonest),
        cmocka_unit_test(test_api_checks),
        cmocka_unit_test(test_api_before_session),
        cmocka_unit_test(test_lookup_class_not_from_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
