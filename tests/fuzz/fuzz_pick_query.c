/* fuzz_pick_query: libFuzzer target for the balancer's GET /v1/pick query
 * handling (key=, exclude=, percent-decoding, repeated and unknown
 * arguments), end to end through the real HTTP API: the input becomes the
 * query string of a request sent over loopback to an in-process http_api,
 * on a registry holding three healthy nodes. The connection is kept alive
 * between inputs so a run does not use up loopback ports. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <zmq.h>

#include "hb_msg.h"
#include "hb_server.h"
#include "history.h"
#include "http_api.h"
#include "log.h"
#include "metrics.h"
#include "picker.h"
#include "registry.h"

#define FUZZ_QUERY_MAX 8192     /* the request must fit MHD's per-connection memory */
#define FUZZ_REPLY_MAX 65536
#define FUZZ_DEADLINE_MS 3000   /* an answer slower than this is a hang */

static struct registry *reg;
static struct picker *pick;
static void *zctx;
static struct hb_server *hb;
static struct metrics *metrics;
static struct history *history;
static struct http_api *api;
static int client = -1;

/* Moves only while the nodes join (rise counts heartbeats an interval
 * apart), then stands still: nothing ages out while fuzzing. */
static uint64_t fake_now = 100000;

static uint64_t fake_clock(void *ctx)
{
    (void)ctx;
    return fake_now;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void add_node(const char *id, const char *addr, uint64_t boot)
{
    struct hb_msg m;
    memset(&m, 0, sizeof m);
    m.type = HB_REGISTER;
    snprintf(m.node_id, sizeof m.node_id, "%s", id);
    m.boot_id = boot;
    snprintf(m.addr, sizeof m.addr, "%s", addr);
    m.capacity = 100;
    snprintf(m.version, sizeof m.version, "0.1.0");
    if (registry_register(reg, &m) != 0)
        abort();
    for (int i = 0; i < 4; i++) {
        fake_now += 250;
        memset(&m, 0, sizeof m);
        m.type = HB_HEARTBEAT;
        snprintf(m.node_id, sizeof m.node_id, "%s", id);
        m.boot_id = boot;
        m.seq = (uint64_t)i + 1;
        m.healthy = true;
        if (registry_heartbeat(reg, &m) != REGISTRY_OK)
            abort();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_setup(LOG_LEVEL_ERROR, "fuzz", NULL);
    struct registry_config rc = {.interval_ms = 250, .fall = 3, .rise = 2, .forget_ms = 60000};
    reg = registry_new(&rc, fake_clock, NULL);
    pick = picker_new(PICKER_LEAST_LOADED, 1);
    zctx = zmq_ctx_new();
    metrics = metrics_new();
    history = history_new(1000);
    if (!reg || !pick || !zctx || !metrics || !history)
        abort();
    char err[256];
    hb = hb_server_new(zctx, "inproc://fuzz-pick-query", reg, err, sizeof err);
    if (!hb) {
        fprintf(stderr, "fuzz_pick_query: hb_server_new: %s\n", err);
        abort();
    }
    add_node("n1", "127.0.0.1:7001", 1);
    add_node("n2", "127.0.0.1:7002", 2);
    add_node("node-3.x_y", "[::1]:7003", 3);
    if (registry_rotation_size(reg) != 3)
        abort();

    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct http_api_config hc = {.addr = (struct sockaddr *)&sin,
                                 .policy = PICKER_LEAST_LOADED,
                                 .version = "fuzz",
                                 .metrics = metrics,
                                 .history = history};
    api = http_api_new(&hc, reg, pick, hb, err, sizeof err);
    if (!api) {
        fprintf(stderr, "fuzz_pick_query: http_api_new: %s\n", err);
        abort();
    }
    return 0;
}

static void client_close(void)
{
    if (client < 0)
        return;
    /* RST instead of FIN: no TIME_WAIT left behind per reconnect. */
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(client, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(client);
    client = -1;
}

static void client_connect(void)
{
    client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (client < 0)
        abort();
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(http_api_port(api));
    /* Loopback: the kernel completes the connection from the backlog. A
     * signal (libFuzzer's timers) may interrupt connect; the connection then
     * goes on in the background: wait for it and read its outcome. */
    if (connect(client, (struct sockaddr *)&sin, sizeof sin) != 0) {
        int e = errno;
        if (e == EINTR) {
            struct pollfd pfd = {.fd = client, .events = POLLOUT};
            socklen_t len = sizeof e;
            while (poll(&pfd, 1, 5000) < 0 && errno == EINTR)
                ;
            if (getsockopt(client, SOL_SOCKET, SO_ERROR, &e, &len) != 0)
                e = errno;
        }
        if (e != 0) {
            fprintf(stderr, "fuzz_pick_query: connect: %s\n", strerror(e));
            abort();
        }
    }
}

/* Runs the API until a whole response is in reply (returns its length),
 * or the server closed the connection (returns what came, maybe 0). */
static size_t exchange(const char *req, size_t reqlen, char *reply)
{
    size_t sent = 0, got = 0;
    int ep = http_api_fd(api);
    uint64_t deadline = now_ms() + FUZZ_DEADLINE_MS;
    while (now_ms() < deadline) {
        if (sent < reqlen) {
            ssize_t n = send(client, req + sent, reqlen - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0)
                sent += (size_t)n;
            else if (n < 0 && errno != EAGAIN && errno != EINTR)
                return got; /* the server closed on us mid-request */
        }
        /* poll, not epoll_wait, on MHD's epoll descriptor: waiting on it
         * directly would take MHD's edge-triggered events away from it. */
        struct pollfd pfd = {.fd = ep, .events = POLLIN};
        (void)poll(&pfd, 1, 5);
        if (http_api_run(api) != 0)
            abort();
        ssize_t n = recv(client, reply + got, FUZZ_REPLY_MAX - 1 - got, MSG_DONTWAIT);
        if (n == 0)
            return got;
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            return got; /* reset */
        }
        got += (size_t)n;
        reply[got] = '\0';
        char *hdr_end = strstr(reply, "\r\n\r\n");
        if (!hdr_end)
            continue;
        const char *cl = strcasestr(reply, "\r\nContent-Length:");
        if (!cl || cl > hdr_end)
            continue; /* until close */
        size_t body = strtoul(cl + 17, NULL, 10);
        if ((size_t)(hdr_end + 4 - reply) + body <= got)
            return got;
    }
    fprintf(stderr, "fuzz_pick_query: no answer within %d ms (sent %zu of %zu, got %zu: %.*s)\n",
            FUZZ_DEADLINE_MS, sent, reqlen, got, (int)got, reply);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char req[FUZZ_QUERY_MAX + 128];
    static char reply[FUZZ_REPLY_MAX];
    if (size > FUZZ_QUERY_MAX)
        return 0;
    /* Bytes that would end the request line or split it into a second
     * request are replaced: the target is the query, not HTTP framing. */
    size_t len = (size_t)snprintf(req, sizeof req, "GET /v1/pick?");
    for (size_t i = 0; i < size; i++) {
        uint8_t c = data[i];
        req[len++] = (c == '\r' || c == '\n' || c == ' ' || c == '\t' || c == '\0') ? '+'
                                                                                       : (char)c;
    }
    len += (size_t)snprintf(req + len, sizeof req - len, " HTTP/1.1\r\nHost: fuzz\r\n\r\n");

    if (client < 0)
        client_connect();
    size_t got = exchange(req, len, reply);
    if (got == 0) {
        /* Closed without an answer: MHD refused the request line itself. */
        client_close();
        return 0;
    }
    unsigned status = 0;
    if (sscanf(reply, "HTTP/1.1 %u", &status) != 1)
        abort();
    char *body = strstr(reply, "\r\n\r\n");
    body = body ? body + 4 : reply + got;
    if (status == 200 || status == 503 || (status == 400 && strstr(reply, "application/json"))) {
        /* Ours: a JSON object; 200 names a node of the rotation. */
        json_error_t jerr;
        json_t *j = json_loads(body, 0, &jerr);
        if (!json_is_object(j))
            abort();
        if (status == 200) {
            const char *id = json_string_value(json_object_get(j, "id"));
            if (!id || !registry_find(reg, id))
                abort();
        } else if (!json_is_string(json_object_get(j, "error"))) {
            abort();
        }
        json_decref(j);
    } else if (status != 400 && status != 414 && status != 431) {
        /* MHD's own refusals of a request it cannot parse are fine; any
         * other status is not something /v1/pick should answer. */
        fprintf(stderr, "fuzz_pick_query: unexpected status %u\n", status);
        abort();
    }
    /* MHD closes after its own errors; start afresh next time. */
    if (status != 200 && status != 503 && !(status == 400 && strstr(reply, "application/json")))
        client_close();
    return 0;
}
