/* Unit tests for shared/addr.c: valid and invalid "host:port" forms,
 * formatting round trips, IP literal detection and loopback resolution. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "addr.h"

static void test_valid(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        const char *host;
        uint16_t port;
        const char *formatted;
    } ok[] = {
        {"1.2.3.4:80", "1.2.3.4", 80, "1.2.3.4:80"},
        {"127.0.0.1:65535", "127.0.0.1", 65535, "127.0.0.1:65535"},
        {"[::1]:7443", "::1", 7443, "[::1]:7443"},
        {"[2001:db8::1]:1", "2001:db8::1", 1, "[2001:db8::1]:1"},
        {"[fe80::1%eth0]:80", "fe80::1%eth0", 80, "[fe80::1%eth0]:80"},
        {"[::ffff:1.2.3.4]:80", "::ffff:1.2.3.4", 80, "[::ffff:1.2.3.4]:80"},
        {"example.org:443", "example.org", 443, "example.org:443"},
        {"my_host-1.internal:8080", "my_host-1.internal", 8080, "my_host-1.internal:8080"},
        {"localhost:00080", "localhost", 80, "localhost:80"},
        {"balancer:7100", "balancer", 7100, "balancer:7100"},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        struct addr a;
        char err[128] = "";
        if (addr_parse(ok[i].text, false, &a, err, sizeof(err)) != 0)
            fail_msg("%s: %s", ok[i].text, err);
        assert_string_equal(a.host, ok[i].host);
        assert_int_equal(a.port, ok[i].port);
        char out[300];
        int n = addr_format(&a, out, sizeof(out));
        assert_int_equal(n, (int)strlen(ok[i].formatted));
        assert_string_equal(out, ok[i].formatted);
    }
}

static void test_port_zero(void **state)
{
    (void)state;
    struct addr a;
    char err[128];
    assert_int_equal(addr_parse("0.0.0.0:0", true, &a, err, sizeof(err)), 0);
    assert_int_equal(a.port, 0);
    assert_int_equal(addr_parse("[::]:0", true, &a, err, sizeof(err)), 0);
    assert_string_equal(a.host, "::");
    assert_int_equal(addr_parse("0.0.0.0:0", false, &a, err, sizeof(err)), -1);
    assert_string_equal(err, "port 0 is out of range (1-65535)");
}

static void expect_bad(const char *text, const char *want)
{
    struct addr a;
    memset(&a, 0x5a, sizeof(a));
    struct addr before = a;
    char err[128] = "";
    if (addr_parse(text, false, &a, err, sizeof(err)) != -1)
        fail_msg("\"%s\" was accepted", text);
    if (!strstr(err, want))
        fail_msg("\"%s\": message \"%s\" lacks \"%s\"", text, err, want);
    assert_memory_equal(&a, &before, sizeof(a)); /* untouched on failure */
}

static void test_invalid(void **state)
{
    (void)state;
    expect_bad("", "empty address");
    expect_bad(NULL, "empty address");
    expect_bad("localhost", "missing port");
    expect_bad("1.2.3.4", "missing port");
    expect_bad("1.2.3.4:", "missing port");
    expect_bad(":80", "empty host");
    expect_bad("[]:80", "empty host");
    expect_bad("host:0", "out of range");
    expect_bad("host:65536", "port 65536 is out of range");
    expect_bad("host:99999999999999999999", "out of range");
    expect_bad("host:-1", "is not a number");
    expect_bad("host:+80", "is not a number");
    expect_bad("host:80a", "is not a number");
    expect_bad("host:http", "port \"http\" is not a number");
    expect_bad("host: 80", "is not a number");
    expect_bad("::1:80", "needs brackets");
    expect_bad("2001:db8::1:80", "needs brackets");
    expect_bad("[::1:80", "unterminated '['");
    expect_bad("[::1]", "missing port");
    expect_bad("[::1]:", "missing port");
    expect_bad("[::1]80", "unexpected text after ']'");
    expect_bad("[1.2.3.4]:80", "not an IPv6 address");
    expect_bad("[example.org]:80", "not an IPv6 address");
    expect_bad("[fe80::1%]:80", "not an IPv6 address");
    expect_bad("[fe80::1%e/0]:80", "not an IPv6 address");
    expect_bad("exa mple:80", "invalid byte 0x20 in host");
    expect_bad("exa/mple:80", "invalid character '/' in host");
    expect_bad("*:80", "invalid character '*' in host");
    expect_bad("host\n:80", "invalid byte 0x0a in host");
    expect_bad("h\xc3\xa9:80", "invalid byte 0xc3 in host");
    expect_bad("tcp://host:80", "invalid character");

    char longhost[ADDR_HOST_MAX + 20];
    memset(longhost, 'a', ADDR_HOST_MAX + 1);
    strcpy(longhost + ADDR_HOST_MAX + 1, ":80");
    expect_bad(longhost, "too long");
    /* Exactly at the limit is fine. */
    struct addr a;
    char err[128];
    memset(longhost, 'a', ADDR_HOST_MAX);
    strcpy(longhost + ADDR_HOST_MAX, ":80");
    assert_int_equal(addr_parse(longhost, false, &a, err, sizeof(err)), 0);
    assert_int_equal(strlen(a.host), ADDR_HOST_MAX);
    char out[ADDR_HOST_MAX + 8];
    assert_int_equal(addr_format(&a, out, sizeof(out)), ADDR_HOST_MAX + 3);
    /* A short output buffer truncates and reports the needed length. */
    char tiny[8];
    assert_int_equal(addr_format(&a, tiny, sizeof(tiny)), ADDR_HOST_MAX + 3);
    assert_int_equal(strlen(tiny), 7);

    /* A tiny error buffer is never overrun. */
    char small[4];
    assert_int_equal(addr_parse("nope", false, &a, small, sizeof(small)), -1);
    assert_int_equal(strlen(small), 3);
    assert_int_equal(addr_parse("nope", false, &a, NULL, 0), -1);
}

static void test_ip_literal(void **state)
{
    (void)state;
    assert_true(addr_is_ip_literal("127.0.0.1"));
    assert_true(addr_is_ip_literal("::1"));
    assert_true(addr_is_ip_literal("::"));
    assert_true(addr_is_ip_literal("2001:db8::1"));
    assert_true(addr_is_ip_literal("fe80::1%eth0"));
    assert_false(addr_is_ip_literal("localhost"));
    assert_false(addr_is_ip_literal("1.2.3"));
    assert_false(addr_is_ip_literal("1.2.3.256"));
    assert_false(addr_is_ip_literal("[::1]"));
    assert_false(addr_is_ip_literal(""));
    assert_false(addr_is_ip_literal(NULL));
}

static void test_resolve(void **state)
{
    (void)state;
    struct addr a;
    char err[256];
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    assert_int_equal(addr_parse("127.0.0.1:7443", false, &a, err, sizeof(err)), 0);
    assert_int_equal(addr_resolve(&a, SOCK_STREAM, &ss, &len, err, sizeof(err)), 0);
    assert_int_equal(ss.ss_family, AF_INET);
    assert_int_equal(len, sizeof(struct sockaddr_in));
    const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
    assert_int_equal(ntohs(in->sin_port), 7443);
    assert_int_equal(ntohl(in->sin_addr.s_addr), INADDR_LOOPBACK);

    assert_int_equal(addr_parse("[::1]:80", false, &a, err, sizeof(err)), 0);
    len = sizeof(ss);
    assert_int_equal(addr_resolve(&a, SOCK_STREAM, &ss, &len, err, sizeof(err)), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(ntohs(((const struct sockaddr_in6 *)&ss)->sin6_port), 80);

    assert_int_equal(addr_parse("0.0.0.0:0", true, &a, err, sizeof(err)), 0);
    len = sizeof(ss);
    assert_int_equal(addr_resolve(&a, SOCK_STREAM, &ss, &len, err, sizeof(err)), 0);
    assert_int_equal(ss.ss_family, AF_INET);

    /* localhost comes from /etc/hosts: no network needed. */
    assert_int_equal(addr_parse("localhost:9", false, &a, err, sizeof(err)), 0);
    len = sizeof(ss);
    assert_int_equal(addr_resolve(&a, SOCK_STREAM, &ss, &len, err, sizeof(err)), 0);
    assert_true(ss.ss_family == AF_INET || ss.ss_family == AF_INET6);

    /* .invalid never resolves (RFC 6761). */
    assert_int_equal(addr_parse("no-such-host.invalid:80", false, &a, err, sizeof(err)), 0);
    len = sizeof(ss);
    assert_int_equal(addr_resolve(&a, SOCK_STREAM, &ss, &len, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "cannot resolve no-such-host.invalid"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_port_zero),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_ip_literal),
        cmocka_unit_test(test_resolve),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
