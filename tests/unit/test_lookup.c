/* Unit tests for shared/lookup.c: the /v1/pick body parser against good,
 * malformed, truncated and hostile answers, HTTP error bodies, and the real
 * libcurl path against a one-shot HTTP server on 127.0.0.1 in a thread
 * (the request line it saw checks the escaping of key and exclude). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "lookup.h"

static enum lookup_status parse(const char *body, long status, struct lookup_node *n, char *err, size_t errlen)
{
    return lookup_parse_pick(body, body ? strlen(body) : 0, status, n, err, errlen);
}

static void test_parse_good(void **state)
{
    (void)state;
    struct lookup_node n;
    char err[256] = "";
    assert_int_equal(parse("{\"id\":\"n1\",\"addr\":\"127.0.0.1:7001\",\"epoch\":7,"
                           "\"policy\":\"least-loaded\"}",
                           200, &n, err, sizeof(err)),
                     0);
    assert_string_equal(n.id, "n1");
    assert_string_equal(n.addr, "127.0.0.1:7001");
    assert_int_equal(n.epoch, 7);

    /* IPv6, a host name, unknown members ignored, a 64-byte id. */
    assert_int_equal(parse("{\"id\":\"a.b_c-d\",\"addr\":\"[::1]:7001\",\"epoch\":0,\"x\":[1]}",
                           200, &n, err, sizeof(err)),
                     0);
    assert_string_equal(n.addr, "[::1]:7001");
    char body[512];
    char id64[65];
    memset(id64, 'x', 64);
    id64[64] = '\0';
    snprintf(body, sizeof(body), "{\"id\":\"%s\",\"addr\":\"node.example.org:443\",\"epoch\":1}",
             id64);
    assert_int_equal(parse(body, 200, &n, err, sizeof(err)), 0);
    assert_string_equal(n.id, id64);
    assert_string_equal(n.addr, "node.example.org:443");
    assert_string_equal(n.cert_sha256, "");

    /* The registered certificate digest comes along when the node gave one. */
    assert_int_equal(parse("{\"id\":\"n1\",\"addr\":\"127.0.0.1:7001\",\"epoch\":7,\"cert_sha256\":"
                           "\"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\"}",
                           200, &n, err, sizeof(err)),
                     0);
    assert_string_equal(n.cert_sha256,
                        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
}

/* The parse fails with class want_st, and err holds want. */
static void expect_bad_st(const char *body, long status, enum lookup_status want_st,
                          const char *want)
{
    struct lookup_node n;
    char err[512] = "";
    enum lookup_status st = parse(body, status, &n, err, sizeof(err));
    if (st != want_st)
        fail_msg("body %s, status %ld: class %d, want %d (%s)", body ? body : "(null)", status,
                 (int)st, (int)want_st, err);
    if (!strstr(err, want))
        fail_msg("body %s: error \"%s\" lacks \"%s\"", body ? body : "(null)", err, want);
}

/* A 2xx answer that is not the documented JSON, or another HTTP status. */
static void expect_bad(const char *body, long status, const char *want)
{
    expect_bad_st(body, status, status >= 200 && status <= 299 ? LOOKUP_E_ANSWER : LOOKUP_E_STATUS,
                  want);
}

static void test_parse_bad_fields(void **state)
{
    (void)state;
    expect_bad("{\"id\":\"n1\",\"addr\":\"127.0.0.1:7001\",\"epoch\":7,\"cert_sha256\":\"AB\"}", 200,
               "\"cert_sha256\" is not 64 lower-case hex digits");
    expect_bad("{\"id\":\"n1\",\"addr\":\"127.0.0.1:7001\",\"epoch\":7,\"cert_sha256\":1}", 200,
               "\"cert_sha256\"");
    expect_bad("{\"addr\":\"127.0.0.1:1\",\"epoch\":1}", 200, "\"id\": missing");
    expect_bad("{\"id\":7,\"addr\":\"127.0.0.1:1\",\"epoch\":1}", 200, "\"id\": missing or not");
    expect_bad("{\"id\":\"\",\"addr\":\"127.0.0.1:1\",\"epoch\":1}", 200, "is not a node id");
    expect_bad("{\"id\":\"n 1\",\"addr\":\"127.0.0.1:1\",\"epoch\":1}", 200, "is not a node id");
    expect_bad("{\"id\":\"n\\u001b[2J\",\"addr\":\"127.0.0.1:1\",\"epoch\":1}", 200,
               "\"n?[2J\" is not");
    char body[512], id65[66];
    memset(id65, 'x', 65);
    id65[65] = '\0';
    snprintf(body, sizeof(body), "{\"id\":\"%s\",\"addr\":\"127.0.0.1:1\",\"epoch\":1}", id65);
    expect_bad(body, 200, "is not a node id");

    expect_bad("{\"id\":\"n1\",\"epoch\":1}", 200, "\"addr\": missing");
    expect_bad("{\"id\":\"n1\",\"addr\":null,\"epoch\":1}", 200, "\"addr\": missing");
    expect_bad("{\"id\":\"n1\",\"addr\":\"127.0.0.1\",\"epoch\":1}", 200, "\"addr\" \"127.0.0.1\"");
    expect_bad("{\"id\":\"n1\",\"addr\":\"127.0.0.1:0\",\"epoch\":1}", 200, "\"addr\"");
    expect_bad("{\"id\":\"n1\",\"addr\":\"127.0.0.1:70000\",\"epoch\":1}", 200, "\"addr\"");
    expect_bad("{\"id\":\"n1\",\"addr\":\"::1:7001\",\"epoch\":1}", 200, "\"addr\"");
    char longaddr[400];
    memset(longaddr, 'h', 300);
    longaddr[300] = '\0';
    snprintf(body, sizeof(body), "{\"id\":\"n1\",\"addr\":\"%s:1\",\"epoch\":1}", longaddr);
    expect_bad(body, 200, "longer than");

    expect_bad("{\"id\":\"n1\",\"addr\":\"127.0.0.1:1\"}", 200, "\"epoch\"");
    expect_bad("{\"id\":\"n1\",\"addr\":\"127.0.0.1:1\",\"epoch\":\"7\"}", 200, "\"epoch\"");
    expect_bad("{\"id\":\"n1\",\"addr\":\"127.0.0.1:1\",\"epoch\":-1}", 200, "\"epoch\"");
    expect_bad("{\"id\":\"n1\",\"addr\":\"127.0.0.1:1\",\"epoch\":1.5}", 200, "\"epoch\"");
}

static void test_parse_not_json(void **state)
{
    (void)state;
    expect_bad("", 200, "empty body");
    expect_bad(NULL, 200, "empty body");
    expect_bad("<html>hi</html>", 200, "not JSON");
    expect_bad("{\"id\":\"n1\",\"addr\":\"127.0", 200, "not JSON"); /* truncated */
    expect_bad("[1,2]", 200, "not a JSON object");
    expect_bad("\"n1\"", 200, "not");

    /* A body with a NUL inside is not JSON either (len covers it). */
    struct lookup_node n;
    char err[256];
    const char nul[] = "{\"id\":\"n1\0\",\"addr\":\"127.0.0.1:1\",\"epoch\":1}";
    assert_int_equal(lookup_parse_pick(nul, sizeof(nul) - 1, 200, &n, err, sizeof(err)),
                     LOOKUP_E_ANSWER);
}

static void test_parse_http_errors(void **state)
{
    (void)state;
    expect_bad_st("{\"error\":\"no_healthy_node\",\"message\":\"no healthy node in rotation\"}",
                  503, LOOKUP_E_NO_NODE, "503 no_healthy_node: no healthy node in rotation");
    /* The class comes from the status and the "error" code, never from the
     * words: another message is still "no node", a message that quotes
     * the code is not, nor the code with another status. */
    expect_bad_st("{\"error\":\"no_healthy_node\",\"message\":\"keine Knoten\"}", 503,
                  LOOKUP_E_NO_NODE, "503 no_healthy_node: keine Knoten");
    expect_bad_st("{\"error\":\"no_healthy_node\"}", 503, LOOKUP_E_NO_NODE, "503 no_healthy_node");
    expect_bad("{\"error\":\"maintenance\",\"message\":\"not a no_healthy_node case\"}", 503,
               "503 maintenance: not a no_healthy_node case");
    expect_bad("{\"error\":\"no_healthy_node\"}", 500, "500 no_healthy_node");
    expect_bad("no_healthy_node", 503, "HTTP 503");
    expect_bad("{\"error\":\"bad_query\"}", 400, "400 bad_query");
    expect_bad("Bad Gateway", 502, "HTTP 502 (the body is not the documented JSON error)");
    expect_bad("", 500, "HTTP 500");
    expect_bad("{\"error\":5}", 500, "HTTP 500");
    /* Control characters from the server are neutralised. */
    expect_bad("{\"error\":\"x\",\"message\":\"a\\nb\\u001b\"}", 503, "503 x: a?b?");
    /* A 200 body is irrelevant for an error status; 3xx is an error too. */
    expect_bad("{\"id\":\"n1\",\"addr\":\"127.0.0.1:1\",\"epoch\":1}", 302, "HTTP 302");
}

static void test_new_rejects(void **state)
{
    (void)state;
    char err[256];
    assert_null(lookup_new("127.0.0.1:8080", 1000, err, sizeof(err)));
    assert_non_null(strstr(err, "must start with http://"));
    assert_null(lookup_new(NULL, 1000, err, sizeof(err)));
    assert_null(lookup_new("http://127.0.0.1:8080", 0, err, sizeof(err)));
    assert_non_null(strstr(err, "timeout"));
    assert_null(lookup_new("http://[::1:80/", 1000, err, sizeof(err)));
    lookup_free(NULL);
}

/* ---- a one-shot HTTP server ---- */

struct http_server {
    int listen_fd;
    int port;
    const char *response;  /* written as is after the request */
    char request[4096];    /* what the client sent, up to the blank line */
    pthread_t thread;
};

static void *http_server_run(void *arg)
{
    struct http_server *s = arg;
    int fd = accept(s->listen_fd, NULL, NULL);
    if (fd < 0)
        return NULL;
    /* Bounded: a test never hangs on a stuck client. */
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    size_t len = 0;
    while (len + 1 < sizeof(s->request)) {
        ssize_t n = read(fd, s->request + len, sizeof(s->request) - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        s->request[len] = '\0';
        if (strstr(s->request, "\r\n\r\n"))
            break;
    }
    size_t off = 0, total = strlen(s->response);
    while (off < total) {
        ssize_t n = write(fd, s->response + off, total - off);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    close(fd);
    return NULL;
}

static void http_server_start(struct http_server *s, const char *response)
{
    memset(s, 0, sizeof(*s));
    s->response = response;
    s->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(s->listen_fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s->listen_fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(s->listen_fd, 4), 0);
    socklen_t sl = sizeof(sin);
    assert_int_equal(getsockname(s->listen_fd, (struct sockaddr *)&sin, &sl), 0);
    s->port = ntohs(sin.sin_port);
    assert_int_equal(pthread_create(&s->thread, NULL, http_server_run, s), 0);
}

static void http_server_stop(struct http_server *s)
{
    assert_int_equal(pthread_join(s->thread, NULL), 0);
    close(s->listen_fd);
}

static struct lookup *lookup_for(const struct http_server *s, const char *suffix)
{
    char url[128], err[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", s->port, suffix);
    struct lookup *l = lookup_new(url, 5000, err, sizeof(err));
    if (!l)
        fail_msg("lookup_new: %s", err);
    return l;
}

#define JSON_200(body)                                                                         \
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" body

static void test_pick_over_http(void **state)
{
    (void)state;
    struct http_server s;
    http_server_start(&s, JSON_200("{\"id\":\"n2\",\"addr\":\"127.0.0.1:7002\",\"epoch\":3}"));
    struct lookup *l = lookup_for(&s, "/"); /* a trailing slash is dropped */
    const char *exclude[] = {"n1", "n3"};
    struct lookup_node n;
    char err[512];
    int rc = lookup_pick(l, "a b&c=d/\xc3\xa9", exclude, 2, &n, err, sizeof(err));
    http_server_stop(&s);
    if (rc != 0)
        fail_msg("lookup_pick: %s", err);
    assert_string_equal(n.id, "n2");
    assert_string_equal(n.addr, "127.0.0.1:7002");
    assert_int_equal(n.epoch, 3);
    const char *want = "GET /v1/pick?key=a%20b%26c%3Dd%2F%C3%A9&exclude=n1,n3 HTTP/1.1\r\n";
    if (strncmp(s.request, want, strlen(want)) != 0)
        fail_msg("request line: %.120s", s.request);
    lookup_free(l);

    /* No key, exclude only. */
    http_server_start(&s, JSON_200("{\"id\":\"n2\",\"addr\":\"127.0.0.1:7002\",\"epoch\":3}"));
    l = lookup_for(&s, "");
    rc = lookup_pick(l, NULL, exclude, 1, &n, err, sizeof(err));
    http_server_stop(&s);
    assert_int_equal(rc, 0);
    const char *want2 = "GET /v1/pick?exclude=n1 HTTP/1.1\r\n";
    assert_memory_equal(s.request, want2, strlen(want2));
    lookup_free(l);
}

static void test_report(void **state)
{
    (void)state;
    struct http_server s;
    http_server_start(&s, "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
                          "Connection: close\r\n\r\n{\"node\":\"n1\",\"reporters\":1,\"ejected\":false}");
    struct lookup *l = lookup_for(&s, "");
    char err[512];
    int rc = lookup_report(l, "n1", LOOKUP_REPORT_TLS, "handshake\nfailed", err, sizeof(err));
    http_server_stop(&s);
    if (rc != 0)
        fail_msg("lookup_report: %s", err);
    assert_memory_equal(s.request, "POST /v1/reports HTTP/1.1\r\n", 27);
    assert_non_null(strstr(s.request, "Content-Type: application/json\r\n"));
    lookup_free(l);

    http_server_start(&s, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                          "Connection: close\r\n\r\n"
                          "{\"error\":\"unknown_node\",\"message\":\"no node n1\"}");
    l = lookup_for(&s, "");
    rc = lookup_report(l, "n1", LOOKUP_REPORT_CONNECT, NULL, err, sizeof(err));
    http_server_stop(&s);
    assert_int_equal(rc, -1);
    assert_non_null(strstr(err, "404 unknown_node: no node n1"));
    /* Not a node id: refused before any request. */
    assert_int_equal(lookup_report(l, "a b", LOOKUP_REPORT_CONNECT, NULL, err, sizeof(err)), -1);
    lookup_free(l);
}

static void test_pick_http_error(void **state)
{
    (void)state;
    struct http_server s;
    http_server_start(&s, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                          "Connection: close\r\n\r\n"
                          "{\"error\":\"no_healthy_node\",\"message\":\"no healthy node in rotation\"}");
    struct lookup *l = lookup_for(&s, "");
    struct lookup_node n;
    char err[512], want[256];
    int rc = lookup_pick(l, NULL, NULL, 0, &n, err, sizeof(err));
    http_server_stop(&s);
    assert_int_equal(rc, LOOKUP_E_NO_NODE);
    snprintf(want, sizeof(want),
             "balancer http://127.0.0.1:%d: 503 no_healthy_node: no healthy node in rotation",
             s.port);
    assert_string_equal(err, want);
    lookup_free(l);

    /* lookup_get_json: the same error path, and a good answer. */
    http_server_start(&s, JSON_200("{\"status\":\"ok\"}"));
    l = lookup_for(&s, "");
    char *body = NULL;
    rc = lookup_get_json(l, "/healthz", &body, err, sizeof(err));
    http_server_stop(&s);
    assert_int_equal(rc, 0);
    assert_string_equal(body, "{\"status\":\"ok\"}");
    assert_memory_equal(s.request, "GET /healthz HTTP/1.1", 21);
    free(body);
    assert_int_equal(lookup_get_json(l, "healthz", &body, err, sizeof(err)), -1);
    assert_null(body);
    lookup_free(l);

    http_server_start(&s, JSON_200("not json"));
    l = lookup_for(&s, "");
    rc = lookup_get_json(l, "/v1/health", &body, err, sizeof(err));
    http_server_stop(&s);
    assert_int_equal(rc, -1);
    assert_null(body);
    assert_non_null(strstr(err, "not a JSON object"));
    lookup_free(l);
}

static void test_pick_transport_failure(void **state)
{
    (void)state;
    /* A port nobody listens on: bind one, learn it, close it. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    socklen_t sl = sizeof(sin);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
    close(fd);
    char url[64], err[512];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", ntohs(sin.sin_port));
    struct lookup *l = lookup_new(url, 2000, err, sizeof(err));
    assert_non_null(l);
    struct lookup_node n;
    assert_int_equal(lookup_pick(l, NULL, NULL, 0, &n, err, sizeof(err)), LOOKUP_E_TRANSPORT);
    assert_memory_equal(err, "balancer ", 9);
    assert_non_null(strstr(err, url));
    lookup_free(l);

    /* A server that hangs up without answering. */
    struct http_server s;
    http_server_start(&s, "");
    l = lookup_for(&s, "");
    int rc = lookup_pick(l, NULL, NULL, 0, &n, err, sizeof(err));
    http_server_stop(&s);
    assert_int_equal(rc, LOOKUP_E_TRANSPORT);
    assert_memory_equal(err, "balancer ", 9);
    lookup_free(l);
}

int main(void)
{
    char err[256];
    if (lookup_global_init(err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),
        cmocka_unit_test(test_parse_bad_fields),
        cmocka_unit_test(test_parse_not_json),
        cmocka_unit_test(test_parse_http_errors),
        cmocka_unit_test(test_new_rejects),
        cmocka_unit_test(test_pick_over_http),
        cmocka_unit_test(test_pick_http_error),
        cmocka_unit_test(test_report),
        cmocka_unit_test(test_pick_transport_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
