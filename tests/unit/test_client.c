/* Unit tests for shared/client.c: the reply checks on encoded frames (wrong
 * request id or type, ERROR frames, drain BYE, damaged ACKs, bad WELCOME),
 * then whole sessions against a scripted fake node: a thread serving TLS on
 * 127.0.0.1 with a certificate made here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "berth/berth.h"
#include "buf.h"
#include "client.h"
#include "frame.h"
#include "test_certs.h"
#include "tls_ctx.h"

/* ---- reply checks on encoded frames ---- */

/* Holds one encoded frame and its decoded view. */
struct encoded {
    struct buf b;
    struct frame f;
};

static void decode(struct encoded *e)
{
    enum frame_error fe;
    long n = frame_decode(buf_head(&e->b), buf_size(&e->b), FRAME_DEFAULT_MAX_PAYLOAD, &e->f, &fe);
    assert_true(n > 0);
    assert_int_equal((size_t)n, buf_size(&e->b));
}

static void sha256(const void *p, size_t n, uint8_t out[32])
{
    unsigned int len = 0;
    assert_int_equal(EVP_Digest(p, n, out, &len, EVP_sha256(), NULL), 1);
}

static void test_check_reply(void **state)
{
    (void)state;
    char err[512];
    struct encoded e;
    buf_init(&e.b);

    assert_int_equal(frame_append(&e.b, FRAME_PONG, 5, "x", 1), 0);
    decode(&e);
    assert_int_equal(client_check_reply(&e.f, FRAME_PONG, 5, "node n1", err, sizeof(err)),
                     CLIENT_REPLY_OK);
    assert_int_equal(client_check_reply(&e.f, FRAME_PONG, 6, "node n1", err, sizeof(err)),
                     CLIENT_REPLY_PROTOCOL);
    assert_string_equal(err, "node n1: protocol error: expected PONG for request 6, got PONG for "
                             "request 5");
    assert_int_equal(client_check_reply(&e.f, FRAME_ACK, 5, "node n1", err, sizeof(err)),
                     CLIENT_REPLY_PROTOCOL);
    assert_non_null(strstr(err, "expected ACK"));

    /* ERROR answers whatever was pending, whatever its request id. */
    buf_clear(&e.b);
    assert_int_equal(frame_append_error(&e.b, 0, FRAME_ERR_NOT_READY, "send HELLO first"), 0);
    decode(&e);
    assert_int_equal(client_check_reply(&e.f, FRAME_PONG, 9, "node n1", err, sizeof(err)),
                     CLIENT_REPLY_ERROR);
    assert_string_equal(err, "node n1: error 4 not_ready: send HELLO first");

    /* Control characters in the node's text are replaced; no text: the table's. */
    buf_clear(&e.b);
    uint8_t body[] = {0, 7, 'a', '\n', 0x1b, 'b'};
    assert_int_equal(frame_append(&e.b, FRAME_ERROR, 3, body, sizeof(body)), 0);
    decode(&e);
    assert_int_equal(client_check_reply(&e.f, FRAME_PONG, 3, "node n1", err, sizeof(err)),
                     CLIENT_REPLY_ERROR);
    assert_string_equal(err, "node n1: error 7 shutting_down: a??b");
    buf_clear(&e.b);
    uint8_t bare[] = {0, 200};
    assert_int_equal(frame_append(&e.b, FRAME_ERROR, 3, bare, sizeof(bare)), 0);
    decode(&e);
    assert_int_equal(client_check_reply(&e.f, FRAME_PONG, 3, "node n1", err, sizeof(err)),
                     CLIENT_REPLY_ERROR);
    assert_non_null(strstr(err, "error 200 unknown"));

    /* BYE with request id 0: the node drains. BYE with our id answers our BYE. */
    buf_clear(&e.b);
    assert_int_equal(frame_append(&e.b, FRAME_BYE, 0, NULL, 0), 0);
    decode(&e);
    assert_int_equal(client_check_reply(&e.f, FRAME_ACK, 4, "node n1", err, sizeof(err)),
                     CLIENT_REPLY_DRAIN);
    assert_non_null(strstr(err, "draining"));
    buf_clear(&e.b);
    assert_int_equal(frame_append(&e.b, FRAME_BYE, 4, NULL, 0), 0);
    decode(&e);
    assert_int_equal(client_check_reply(&e.f, FRAME_BYE, 4, "node n1", err, sizeof(err)),
                     CLIENT_REPLY_OK);

    /* A request type from the node is a protocol error. */
    buf_clear(&e.b);
    assert_int_equal(frame_append(&e.b, FRAME_PING, 4, NULL, 0), 0);
    decode(&e);
    assert_int_equal(client_check_reply(&e.f, FRAME_PONG, 4, "node n1", err, sizeof(err)),
                     CLIENT_REPLY_PROTOCOL);
    buf_release(&e.b);
}

static void test_check_ack(void **state)
{
    (void)state;
    char err[512];
    struct encoded e;
    buf_init(&e.b);
    uint8_t sha[32], other[32];
    sha256("hello", 5, sha);
    sha256("hellO", 5, other);

    assert_int_equal(frame_append_ack(&e.b, 2, 42, sha, 0), 0);
    decode(&e);
    struct frame_ack ack;
    assert_int_equal(client_check_ack(&e.f, 2, 42, sha, "node n1", &ack, err, sizeof(err)),
                     CLIENT_REPLY_OK);
    assert_int_equal(ack.message_id, 42);
    char hex[65];
    client_sha256_hex(ack.sha256, hex);
    assert_string_equal(hex, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");

    /* Wrong message id, wrong digest, wrong request id. */
    assert_int_equal(client_check_ack(&e.f, 2, 43, sha, "node n1", &ack, err, sizeof(err)),
                     CLIENT_REPLY_PROTOCOL);
    assert_non_null(strstr(err, "names message 42, expected 43"));
    assert_int_equal(client_check_ack(&e.f, 2, 42, other, "node n1", NULL, err, sizeof(err)),
                     CLIENT_REPLY_PROTOCOL);
    assert_non_null(strstr(err, "message 42 arrived damaged"));
    assert_non_null(strstr(err, "2cf24dba"));
    assert_int_equal(client_check_ack(&e.f, 3, 42, sha, "node n1", NULL, err, sizeof(err)),
                     CLIENT_REPLY_PROTOCOL);

    /* A longer ACK is fine: bodies may grow in later versions. */
    buf_clear(&e.b);
    uint8_t longer[48] = {0};
    longer[7] = 42;
    memcpy(longer + 8, sha, 32);
    assert_int_equal(frame_append(&e.b, FRAME_ACK, 2, longer, sizeof(longer)), 0);
    decode(&e);
    assert_int_equal(client_check_ack(&e.f, 2, 42, sha, "node n1", NULL, err, sizeof(err)),
                     CLIENT_REPLY_OK);
    buf_release(&e.b);
}

static void test_check_welcome(void **state)
{
    (void)state;
    char err[512];
    struct encoded e;
    buf_init(&e.b);
    struct frame_welcome w = {.version = 1, .session_id = 12345, .max_payload = 1 << 20,
                              .idle_timeout_ms = 30000};
    snprintf(w.node_id, sizeof(w.node_id), "n1");
    assert_int_equal(frame_append_welcome(&e.b, 1, &w), 0);
    decode(&e);
    struct frame_welcome got;
    assert_int_equal(client_check_welcome(&e.f, 1, "node x", &got, err, sizeof(err)),
                     CLIENT_REPLY_OK);
    assert_string_equal(got.node_id, "n1");
    assert_int_equal(got.session_id, 12345);
    assert_int_equal(client_check_welcome(&e.f, 2, "node x", &got, err, sizeof(err)),
                     CLIENT_REPLY_PROTOCOL);

    /* A protocol version above what we speak (1 and 2). */
    buf_clear(&e.b);
    w.version = 3;
    assert_int_equal(frame_append_welcome(&e.b, 1, &w), 0);
    decode(&e);
    assert_int_equal(client_check_welcome(&e.f, 1, "node x", &got, err, sizeof(err)),
                     CLIENT_REPLY_PROTOCOL);
    assert_non_null(strstr(err, "version 3"));

    /* A bad node id byte inside an otherwise well-sized body. */
    buf_clear(&e.b);
    uint8_t body[21] = {0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0x10, 0, 0, 0, 0, 0x75, 0x30, 2, 'n', ' '};
    assert_int_equal(frame_append(&e.b, FRAME_WELCOME, 1, body, sizeof(body)), 0);
    decode(&e);
    assert_int_equal(client_check_welcome(&e.f, 1, "node x", &got, err, sizeof(err)),
                     CLIENT_REPLY_PROTOCOL);
    assert_non_null(strstr(err, "malformed WELCOME"));
    buf_release(&e.b);
}

/* ---- a scripted fake node ---- */

static struct test_certs certs;

static int group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    return test_certs_make(&certs, "/tmp/berth-client-test");
}

static int group_teardown(void **state)
{
    (void)state;
    test_certs_remove(&certs);
    return 0;
}

enum node_mode {
    NODE_GOOD,
    NODE_BAD_SHA,       /* ACKs carry a wrong digest */
    NODE_WRONG_ID,      /* PONG with another request id */
    NODE_ERROR_PING,    /* ERROR not_ready to PING */
    NODE_DRAIN_SEND,    /* BYE 0 instead of the 3rd ACK */
    NODE_SILENT_PING,   /* never answers PING */
    NODE_REFUSE_HELLO,  /* ERROR shutting_down to HELLO */
    NODE_SMALL_LIMIT,   /* WELCOME max_payload 100 */
    NODE_ALERT_WORDS,   /* ERROR to HELLO whose text reads like a TLS alert */
    NODE_GONE_AFTER_WELCOME, /* closes the connection right after WELCOME */
};

struct fake_node {
    enum node_mode mode;
    int listen_fd;
    int port;
    SSL_CTX *ctx;
    pthread_t thread;
    int requests;       /* frames handled */
};

static int ssl_write_all(SSL *ssl, const struct buf *b)
{
    size_t off = 0;
    while (off < buf_size(b)) {
        size_t n = 0;
        if (SSL_write_ex(ssl, buf_head(b) + off, buf_size(b) - off, &n) != 1)
            return -1;
        off += n;
    }
    return 0;
}

/* Answers one request according to the mode; 1 to stop serving. */
static int fake_answer(struct fake_node *node, const struct frame *f, struct buf *out, int *sends)
{
    uint64_t rid = f->h.request_id;
    switch (f->h.type) {
    case FRAME_HELLO: {
        if (node->mode == NODE_REFUSE_HELLO) {
            frame_append_error(out, rid, FRAME_ERR_SHUTTING_DOWN, "node is draining");
            return 1;
        }
        if (node->mode == NODE_ALERT_WORDS) {
            frame_append_error(out, rid, FRAME_ERR_SHUTTING_DOWN,
                               "tlsv13 alert certificate required; alert unknown ca");
            return 1;
        }
        struct frame_welcome w = {.version = 1, .session_id = 77,
                                  .max_payload = node->mode == NODE_SMALL_LIMIT ? 100 : 1 << 20,
                                  .idle_timeout_ms = 30000};
        snprintf(w.node_id, sizeof(w.node_id), "n1");
        frame_append_welcome(out, rid, &w);
        return node->mode == NODE_GONE_AFTER_WELCOME;
    }
    case FRAME_PING:
        if (node->mode == NODE_SILENT_PING)
            return 0;
        if (node->mode == NODE_ERROR_PING) {
            frame_append_error(out, rid, FRAME_ERR_NOT_READY, NULL);
            return 1;
        }
        frame_append(out, FRAME_PONG, node->mode == NODE_WRONG_ID ? rid + 1 : rid, f->payload,
                     f->h.length);
        return 0;
    case FRAME_ECHO:
        frame_append(out, FRAME_ECHO_REPLY, rid, f->payload, f->h.length);
        return 0;
    case FRAME_INFO: {
        const char *json = "{\"node\":\"n1\",\"sessions\":1}";
        frame_append(out, FRAME_INFO_REPLY, rid, json, strlen(json));
        return 0;
    }
    case FRAME_SEND: {
        struct frame_send s;
        if (frame_parse_send(f, &s) != 0) {
            frame_append_error(out, rid, FRAME_ERR_MALFORMED, NULL);
            return 1;
        }
        if (node->mode == NODE_DRAIN_SEND && ++*sends == 3) {
            frame_append(out, FRAME_BYE, 0, NULL, 0);
            return 1;
        }
        uint8_t sha[32];
        sha256(s.data, s.len, sha);
        if (node->mode == NODE_BAD_SHA)
            sha[0] ^= 1;
        frame_append_ack(out, rid, s.message_id, sha, 0);
        return 0;
    }
    case FRAME_BYE:
        frame_append(out, FRAME_BYE, rid, NULL, 0);
        return 1;
    default:
        frame_append_error(out, rid, FRAME_ERR_UNEXPECTED, NULL);
        return 1;
    }
}

static void *fake_node_run(void *arg)
{
    struct fake_node *node = arg;
    int fd = accept(node->listen_fd, NULL, NULL);
    if (fd < 0)
        return NULL;
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    SSL *ssl = SSL_new(node->ctx);
    struct buf in, out;
    buf_init(&in);
    buf_init(&out);
    int sends = 0;
    if (!ssl || SSL_set_fd(ssl, fd) != 1 || SSL_accept(ssl) != 1)
        goto done;
    for (int stop = 0; !stop;) {
        struct frame f;
        enum frame_error fe;
        long n = frame_decode(buf_head(&in), buf_size(&in), 2u << 20, &f, &fe);
        if (n < 0)
            break;
        if (n == 0) {
            size_t got = 0;
            if (buf_reserve(&in, 65536) != 0 || SSL_read_ex(ssl, buf_tail(&in), 65536, &got) != 1)
                break;
            buf_commit(&in, got);
            continue;
        }
        node->requests++;
        stop = fake_answer(node, &f, &out, &sends);
        buf_consume(&in, (size_t)n);
        if (ssl_write_all(ssl, &out) != 0)
            break;
        buf_clear(&out);
    }
    SSL_shutdown(ssl);
done:
    SSL_free(ssl);
    close(fd);
    buf_release(&in);
    buf_release(&out);
    return NULL;
}

static void fake_node_start(struct fake_node *node, enum node_mode mode)
{
    memset(node, 0, sizeof(*node));
    node->mode = mode;
    char err[512];
    node->ctx = tls_ctx_server_new(certs.leaf_pem, certs.leaf_key, err, sizeof(err));
    if (!node->ctx)
        fail_msg("tls_ctx_server_new: %s", err);
    node->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(node->listen_fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(node->listen_fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(node->listen_fd, 4), 0);
    socklen_t sl = sizeof(sin);
    assert_int_equal(getsockname(node->listen_fd, (struct sockaddr *)&sin, &sl), 0);
    node->port = ntohs(sin.sin_port);
    assert_int_equal(pthread_create(&node->thread, NULL, fake_node_run, node), 0);
}

static void fake_node_stop(struct fake_node *node)
{
    assert_int_equal(pthread_join(node->thread, NULL), 0);
    close(node->listen_fd);
    SSL_CTX_free(node->ctx);
}

static struct client *connect_to(struct fake_node *node, long timeout_ms)
{
    char addr[64], err[768];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", node->port);
    struct client_options o = {.ca_file = certs.ca_pem, .verify = true, .name = "unit",
                               .timeout_ms = timeout_ms, .expect_id = "n1"};
    enum client_fail fail;
    struct client *c = client_connect(&o, addr, &fail, err, sizeof(err));
    if (!c)
        fail_msg("client_connect: %s", err);
    assert_int_equal(fail, CLIENT_FAIL_NONE);
    return c;
}

static void test_session_good(void **state)
{
    (void)state;
    struct fake_node node;
    fake_node_start(&node, NODE_GOOD);
    struct client *c = connect_to(&node, 5000);
    assert_string_equal(client_node_id(c), "n1");
    assert_int_equal(client_session_id(c), 77);
    assert_int_equal(client_max_payload(c), 1 << 20);
    assert_int_equal(client_idle_timeout_ms(c), 30000);

    double rtt = -1;
    assert_int_equal(client_ping(c, &rtt), 0);
    assert_true(rtt >= 0);
    assert_int_equal(client_echo(c, "abc", 3), 0);
    assert_int_equal(client_echo(c, NULL, 0), 0);
    char *json = NULL;
    assert_int_equal(client_info(c, &json), 0);
    assert_string_equal(json, "{\"node\":\"n1\",\"sessions\":1}");
    free(json);

    struct frame_ack ack;
    assert_int_equal(client_send(c, 1, "hello", 5, &ack), 0);
    assert_int_equal(ack.message_id, 1);

    /* Pipelined: a full window, then one more is refused locally. */
    char msg[32];
    for (int i = 0; i < CLIENT_WINDOW_MAX; i++) {
        snprintf(msg, sizeof(msg), "m%d", i);
        assert_int_equal(client_send_start(c, 100 + (uint64_t)i, msg, strlen(msg)), 0);
    }
    assert_int_equal(client_in_flight(c), CLIENT_WINDOW_MAX);
    assert_int_equal(client_send_start(c, 999, "x", 1), -1);
    assert_non_null(strstr(client_error(c), "in flight"));
    assert_int_equal(client_ping(c, &rtt), -1); /* synchronous calls wait for the window */
    for (int i = 0; i < CLIENT_WINDOW_MAX; i++) {
        assert_int_equal(client_send_finish(c, &ack), 0);
        assert_int_equal(ack.message_id, 100 + (uint64_t)i);
    }
    assert_int_equal(client_send_finish(c, &ack), -1); /* nothing in flight */

    /* A big message, over many TLS records. */
    size_t big = 1000000;
    char *data = malloc(big);
    assert_non_null(data);
    for (size_t i = 0; i < big; i++)
        data[i] = (char)(i * 7);
    assert_int_equal(client_send(c, 2, data, big, &ack), 0);
    uint8_t want[32];
    sha256(data, big, want);
    assert_memory_equal(ack.sha256, want, 32);
    /* Above the limit: refused locally, the session lives on. */
    assert_int_equal(client_send(c, 3, data, (1 << 20) - 7, NULL), -1);
    assert_non_null(strstr(client_error(c), "above the node's limit"));
    free(data);
    assert_int_equal(client_ping(c, &rtt), 0);

    assert_int_equal(client_bye(c), 0);
    assert_false(client_draining(c));
    assert_int_equal(client_ping(c, &rtt), -1); /* closed */
    client_free(c);
    fake_node_stop(&node);
    client_free(NULL);
}

static void test_session_bad_sha(void **state)
{
    (void)state;
    struct fake_node node;
    fake_node_start(&node, NODE_BAD_SHA);
    struct client *c = connect_to(&node, 5000);
    assert_int_equal(client_send(c, 1, "hello", 5, NULL), -1);
    assert_non_null(strstr(client_error(c), "node n1: message 1 arrived damaged"));
    double rtt;
    assert_int_equal(client_ping(c, &rtt), -1); /* the session is over */
    client_free(c);
    fake_node_stop(&node);
}

static void test_session_wrong_id(void **state)
{
    (void)state;
    struct fake_node node;
    fake_node_start(&node, NODE_WRONG_ID);
    struct client *c = connect_to(&node, 5000);
    double rtt;
    assert_int_equal(client_ping(c, &rtt), -1);
    assert_string_equal(client_error(c), "node n1: protocol error: expected PONG for request 2, "
                                         "got PONG for request 3");
    client_free(c);
    fake_node_stop(&node);
}

/* The balancer named n2 but the node at that address is n1 (a stale entry,
 * or a node posing as another): refused, naming both. */
static void test_connect_other_node(void **state)
{
    (void)state;
    struct fake_node node;
    fake_node_start(&node, NODE_GOOD);
    char addr[64], err[768];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", node.port);
    struct client_options o = {.ca_file = certs.ca_pem, .verify = true, .name = "unit",
                               .timeout_ms = 2000, .expect_id = "n2"};
    enum client_fail fail;
    assert_null(client_connect(&o, addr, &fail, err, sizeof(err)));
    assert_int_equal(fail, CLIENT_FAIL_SESSION);
    char want[160];
    snprintf(want, sizeof(want), "node n2 (%s): the node says it is \"n1\"", addr);
    assert_string_equal(err, want);
    fake_node_stop(&node);
}

static void test_session_error_frame(void **state)
{
    (void)state;
    struct fake_node node;
    fake_node_start(&node, NODE_ERROR_PING);
    struct client *c = connect_to(&node, 5000);
    double rtt;
    assert_int_equal(client_ping(c, &rtt), -1);
    assert_non_null(strstr(client_error(c), "node n1: error 4 not_ready: "));
    assert_false(client_draining(c));
    client_free(c);
    fake_node_stop(&node);
}

static void test_session_drain(void **state)
{
    (void)state;
    struct fake_node node;
    fake_node_start(&node, NODE_DRAIN_SEND);
    struct client *c = connect_to(&node, 5000);
    for (uint64_t i = 1; i <= 4; i++)
        assert_int_equal(client_send_start(c, i, "data", 4), 0);
    assert_int_equal(client_send_finish(c, NULL), 0);
    assert_int_equal(client_send_finish(c, NULL), 0);
    assert_int_equal(client_send_finish(c, NULL), -1);
    assert_true(client_draining(c));
    assert_non_null(strstr(client_error(c), "draining"));
    assert_int_equal(client_in_flight(c), 2); /* messages 3 and 4 were not handled */
    client_free(c);
    fake_node_stop(&node);
}

static void test_session_timeout(void **state)
{
    (void)state;
    struct fake_node node;
    fake_node_start(&node, NODE_SILENT_PING);
    struct client *c = connect_to(&node, 150);
    double rtt;
    assert_int_equal(client_ping(c, &rtt), -1);
    assert_string_equal(client_error(c), "node n1: timed out after 150 ms waiting for PONG");
    client_free(c); /* the fake node sees the close and ends */
    fake_node_stop(&node);
}

/* The SHA-256 of the fake node's certificate, as the registry carries it. */
static void leaf_sha256(char hex[65])
{
    FILE *f = fopen(certs.leaf_pem, "r");
    assert_non_null(f);
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(x);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    assert_int_equal(X509_digest(x, EVP_sha256(), md, &n), 1);
    X509_free(x);
    for (unsigned int i = 0; i < n; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

static void test_connect_failures(void **state)
{
    (void)state;
    char err[768], addr[64];
    enum client_fail fail;
    struct client_options o = {.ca_file = certs.ca_pem, .verify = true, .name = "unit",
                               .timeout_ms = 2000};

    /* HELLO refused: a session failure, with the node's words. */
    struct fake_node node;
    fake_node_start(&node, NODE_REFUSE_HELLO);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", node.port);
    assert_null(client_connect(&o, addr, &fail, err, sizeof(err)));
    assert_int_equal(fail, CLIENT_FAIL_SESSION);
    assert_non_null(strstr(err, "error 7 shutting_down: node is draining"));
    fake_node_stop(&node);

    /* Nobody listening. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    socklen_t sl = sizeof(sin);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
    close(fd);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", ntohs(sin.sin_port));
    o.expect_id = "n9";
    assert_null(client_connect(&o, addr, &fail, err, sizeof(err)));
    assert_int_equal(fail, CLIENT_FAIL_CONNECT);
    char want[128];
    snprintf(want, sizeof(want), "node n9 (%s): connect: Connection refused", addr);
    assert_string_equal(err, want);
    o.expect_id = NULL;

    /* Certificate from another CA: the handshake fails, try elsewhere. */
    fake_node_start(&node, NODE_GOOD);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", node.port);
    struct client_options sys = o;
    sys.ca_file = certs.leaf_pem; /* a leaf, not our CA: verification fails */
    assert_null(client_connect(&sys, addr, &fail, err, sizeof(err)));
    assert_int_equal(fail, CLIENT_FAIL_TLS);
    assert_non_null(strstr(err, "certificate verify failed"));
    fake_node_stop(&node);

    /* The CA vouches for it but the registry named another certificate:
     * refused; with the registered digest it is taken. */
    fake_node_start(&node, NODE_GOOD);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", node.port);
    char leaf_hex[65];
    leaf_sha256(leaf_hex);
    struct client_options pinned = o;
    pinned.expect_cert_sha256 = "00000000000000000000000000000000000000000000000000000000000000ff";
    assert_null(client_connect(&pinned, addr, &fail, err, sizeof(err)));
    assert_int_equal(fail, CLIENT_FAIL_TLS);
    char want_pin[256];
    snprintf(want_pin, sizeof(want_pin), "certificate sha256 %s is not the %s the balancer registered",
             leaf_hex, pinned.expect_cert_sha256);
    assert_non_null(strstr(err, want_pin));
    fake_node_stop(&node); /* a fake node serves one connection */
    fake_node_start(&node, NODE_GOOD);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", node.port);
    pinned.expect_cert_sha256 = leaf_hex;
    struct client *pc = client_connect(&pinned, addr, &fail, err, sizeof(err));
    if (!pc)
        fail_msg("client_connect with the right digest: %s", err);
    client_free(pc);
    fake_node_stop(&node);

    /* Local problems. */
    sys.ca_file = "/nonexistent/ca.pem";
    assert_null(client_connect(&sys, addr, &fail, err, sizeof(err)));
    assert_int_equal(fail, CLIENT_FAIL_SETUP);
    assert_null(client_connect(&o, "127.0.0.1", &fail, err, sizeof(err)));
    assert_int_equal(fail, CLIENT_FAIL_SETUP);
    assert_non_null(strstr(err, "bad address"));
    struct client_options noname = o;
    noname.name = "";
    assert_null(client_connect(&noname, addr, &fail, err, sizeof(err)));
    assert_int_equal(fail, CLIENT_FAIL_SETUP);
    noname.name = "tab\there";
    assert_null(client_connect(&noname, addr, &fail, err, sizeof(err)));
    struct client_options notime = o;
    notime.timeout_ms = 0;
    assert_null(client_connect(&notime, addr, &fail, err, sizeof(err)));
    assert_null(client_connect(NULL, addr, &fail, err, sizeof(err)));
}

static void test_session_small_limit(void **state)
{
    (void)state;
    struct fake_node node;
    fake_node_start(&node, NODE_SMALL_LIMIT);
    struct client *c = connect_to(&node, 5000);
    char data[100] = {0};
    assert_int_equal(client_send(c, 1, data, 92, NULL), 0);
    assert_int_equal(client_send(c, 2, data, 93, NULL), -1);
    assert_non_null(strstr(client_error(c), "limit of 92 bytes per message"));
    assert_int_equal(client_echo(c, data, 101), -1);
    assert_int_equal(client_echo(c, data, 100), 0);
    assert_int_equal(client_bye(c), 0);
    client_free(c);
    fake_node_stop(&node);
}

/* What the node says is text, and text decides nothing: an ERROR to HELLO
 * that reads like a certificate alert is a session failure (try another
 * node), not "the cluster wants a client certificate" (give up). */
static void test_alert_words_are_not_an_alert(void **state)
{
    (void)state;
    struct fake_node node;
    fake_node_start(&node, NODE_ALERT_WORDS);
    char addr[64], err[768];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", node.port);
    struct client_options o = {.ca_file = certs.ca_pem, .verify = true, .name = "unit",
                               .timeout_ms = 2000};
    enum client_fail fail;
    assert_null(client_connect(&o, addr, &fail, err, sizeof(err)));
    assert_int_equal(fail, CLIENT_FAIL_SESSION);
    assert_non_null(strstr(err, "alert unknown ca")); /* still shown to people */
    assert_null(strstr(err, "requires a client certificate"));
    fake_node_stop(&node);
}

/* A listener nobody accepts on: TCP connects (the backlog), the handshake
 * never answers. The class is a code, CLIENT_FAIL_TIMEOUT, which becomes
 * the report reason "timeout". */
static void test_handshake_timeout_class(void **state)
{
    (void)state;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(lfd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(lfd, 4), 0);
    socklen_t sl = sizeof(sin);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sin, &sl), 0);
    char addr[64], err[768];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", ntohs(sin.sin_port));
    struct client_options o = {.ca_file = certs.ca_pem, .verify = true, .name = "unit",
                               .timeout_ms = 150};
    enum client_fail fail;
    assert_null(client_connect(&o, addr, &fail, err, sizeof(err)));
    assert_int_equal(fail, CLIENT_FAIL_TIMEOUT);
    close(lfd);
}

/* ---- the public API (berth.h) against the fake node ---- */

static berth_client *berth_to(struct fake_node *node, long timeout_ms)
{
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", node->port);
    struct berth_options o;
    berth_options_init(&o);
    o.node = addr;
    o.ca_file = certs.ca_pem;
    o.name = "unit";
    o.timeout_ms = timeout_ms;
    o.max_retries = 0; /* the fake node takes one connection */
    o.backoff_base_ms = 0;
    berth_client *c = NULL;
    assert_int_equal(berth_client_new(&o, &c), BERTH_OK);
    return c;
}

/* What an ACK handler saw. */
struct ack_log {
    berth_client *c;
    int calls;
    int depth, max_depth;           /* handler nesting: must stay 1 */
    uint64_t ids[1024];
    size_t unacked[1024];           /* berth_unacked inside the handler */
    berth_err inner;                /* what the call made from the handler returned */
    uint64_t flush_on, free_on;     /* the message whose ACK triggers the call, 0: none */
    uint64_t stream_to;             /* send the next message from the handler up to this id */
};

static void on_ack_log(void *arg, const struct berth_ack *a)
{
    struct ack_log *l = arg;
    if (++l->depth > l->max_depth)
        l->max_depth = l->depth;
    if (l->calls < 1024) {
        l->ids[l->calls] = a->message_id;
        l->unacked[l->calls] = berth_unacked(l->c);
    }
    l->calls++;
    assert_string_equal(a->node_id, "n1");
    if (a->message_id == l->flush_on)
        l->inner = berth_flush(l->c);
    if (a->message_id == l->free_on)
        berth_client_free(l->c); /* refused: the call that runs us is still using c */
    if (a->message_id < l->stream_to) {
        char msg[32];
        snprintf(msg, sizeof(msg), "m%" PRIu64, a->message_id + 1);
        berth_err r = berth_send(l->c, a->message_id + 1, msg, strlen(msg));
        if (r == BERTH_OK)
            r = berth_flush(l->c); /* the worst case: wait for it right here */
        if (r != BERTH_OK)
            l->inner = r;
    }
    l->depth--;
}

/* The natural "go on when this one is acknowledged": a handler that calls
 * berth_flush. Each message is reported once, in order, with the counters
 * already right, and a later flush has nothing to do. */
static void test_ack_handler_flushes(void **state)
{
    (void)state;
    struct fake_node node;
    fake_node_start(&node, NODE_GOOD);
    berth_client *c = berth_to(&node, 500);
    struct ack_log l = {.c = c, .flush_on = 1};
    berth_set_ack_handler(c, on_ack_log, &l);
    for (uint64_t id = 1; id <= 3; id++)
        assert_int_equal(berth_send(c, id, "data", 4), BERTH_OK);
    assert_int_equal(berth_unacked(c), 3);
    berth_err r = berth_flush(c);
    if (r != BERTH_OK)
        fail_msg("berth_flush: %s: %s", berth_strerror(r), berth_error(c));
    assert_int_equal(l.inner, BERTH_OK);
    assert_int_equal(l.calls, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(l.ids[i], (uint64_t)i + 1);
    assert_int_equal(l.unacked[0], 2); /* message 1 had left the queue */
    assert_int_equal(l.unacked[1], 0); /* the inner flush had collected 2 and 3 */
    assert_int_equal(l.max_depth, 1);
    assert_int_equal(berth_unacked(c), 0);
    assert_int_equal(berth_flush(c), BERTH_OK);
    assert_int_equal(l.calls, 3);
    berth_client_free(c); /* BYE ends the fake node */
    fake_node_stop(&node);
}

/* A stream sent from the handler (send the next, flush it, from inside):
 * no recursion, no double report, every message once and in order. */
static void test_ack_handler_streams(void **state)
{
    (void)state;
    struct fake_node node;
    fake_node_start(&node, NODE_GOOD);
    berth_client *c = berth_to(&node, 2000);
    struct ack_log l = {.c = c, .stream_to = 300};
    berth_set_ack_handler(c, on_ack_log, &l);
    assert_int_equal(berth_send(c, 1, "m1", 2), BERTH_OK);
    berth_err r = berth_flush(c);
    if (r != BERTH_OK)
        fail_msg("berth_flush: %s: %s", berth_strerror(r), berth_error(c));
    assert_int_equal(l.inner, BERTH_OK);
    assert_int_equal(l.calls, 300);
    for (int i = 0; i < 300; i++)
        assert_int_equal(l.ids[i], (uint64_t)i + 1);
    assert_int_equal(l.max_depth, 1);
    assert_int_equal(berth_unacked(c), 0);
    berth_client_free(c);
    fake_node_stop(&node);
}

/* berth_client_free from the handler is refused with an error, frees
 * nothing (ASan would see a use after free otherwise), and the client
 * goes on working until it is freed outside. */
static void test_ack_handler_free_refused(void **state)
{
    (void)state;
    struct fake_node node;
    fake_node_start(&node, NODE_GOOD);
    berth_client *c = berth_to(&node, 500);
    struct ack_log l = {.c = c, .free_on = 2};
    berth_set_ack_handler(c, on_ack_log, &l);
    for (uint64_t id = 1; id <= 3; id++)
        assert_int_equal(berth_send(c, id, "data", 4), BERTH_OK);
    assert_int_equal(berth_flush(c), BERTH_E_IN_HANDLER);
    assert_non_null(strstr(berth_error(c), "berth_client_free"));
    assert_non_null(strstr(berth_error(c), "refused"));
    assert_string_equal(berth_strerror(BERTH_E_IN_HANDLER), "not allowed from inside a handler");
    assert_int_equal(l.calls, 3); /* every ACK was still reported */
    assert_int_equal(berth_unacked(c), 0);
    /* The refusal is reported once; the client still works. */
    assert_int_equal(berth_send(c, 4, "more", 4), BERTH_OK);
    assert_int_equal(berth_flush(c), BERTH_OK);
    assert_int_equal(l.calls, 4);
    assert_string_equal(berth_node_id(c), "n1");
    berth_client_free(c);
    fake_node_stop(&node);
}

/* berth_send's result says whether the message was queued: the node goes
 * away while a large message is being written and no other node takes
 * over, so it was not queued, and berth_unacked does not count it. Runs
 * with the default SIGPIPE action, as an application would. */
static void test_send_failure_means_not_queued(void **state)
{
    (void)state;
    struct sigaction dfl = {.sa_handler = SIG_DFL}, old;
    sigemptyset(&dfl.sa_mask);
    assert_int_equal(sigaction(SIGPIPE, &dfl, &old), 0);
    struct fake_node node;
    fake_node_start(&node, NODE_GONE_AFTER_WELCOME);
    berth_client *c = berth_to(&node, 300);
    assert_int_equal(berth_connect(c), BERTH_OK);
    size_t big = 1000000; /* above the point where SENDs are written out at once */
    char *data = calloc(1, big);
    assert_non_null(data);
    fake_node_stop(&node); /* the node has closed by now */
    berth_err r = berth_send(c, 1, data, big);
    if (r == BERTH_OK)
        fail_msg("berth_send to a node that has gone: OK");
    assert_int_equal(berth_unacked(c), 0);
    assert_int_equal(berth_flush(c), BERTH_OK); /* nothing was queued */
    free(data);
    berth_client_free(c);
    assert_int_equal(sigaction(SIGPIPE, &old, NULL), 0);
}

/* A balancer for one discovery: answers GET /v1/pick (the fake node), then
 * GET /v1/nodes (the fake node and n2, where nobody listens), each on its
 * own connection; then it is gone. */
struct fake_balancer {
    int listen_fd;
    int port;
    int node_port;
    pthread_t thread;
};

static void *fake_balancer_run(void *arg)
{
    struct fake_balancer *b = arg;
    for (int i = 0; i < 2; i++) {
        int fd = accept(b->listen_fd, NULL, NULL);
        if (fd < 0)
            break;
        struct timeval tv = {.tv_sec = 5};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        char req[2048];
        size_t len = 0;
        while (len + 1 < sizeof(req)) {
            ssize_t n = read(fd, req + len, sizeof(req) - 1 - len);
            if (n <= 0)
                break;
            len += (size_t)n;
            req[len] = '\0';
            if (strstr(req, "\r\n\r\n"))
                break;
        }
        char body[256], resp[512];
        if (strncmp(req, "GET /v1/nodes", 13) == 0)
            snprintf(body, sizeof(body),
                     "{\"epoch\":1,\"nodes\":[{\"id\":\"n1\",\"addr\":\"127.0.0.1:%d\"},"
                     "{\"id\":\"n2\",\"addr\":\"127.0.0.1:1\"}]}",
                     b->node_port);
        else
            snprintf(body, sizeof(body), "{\"id\":\"n1\",\"addr\":\"127.0.0.1:%d\",\"epoch\":1}",
                     b->node_port);
        int n = snprintf(resp, sizeof(resp),
                         "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         "%zu\r\nConnection: close\r\n\r\n%s", strlen(body), body);
        if (write(fd, resp, (size_t)n) != n)
            fprintf(stderr, "fake balancer: short write\n");
        close(fd);
    }
    close(b->listen_fd); /* from now on nobody answers there */
    return NULL;
}

static void fake_balancer_start(struct fake_balancer *b, int node_port)
{
    memset(b, 0, sizeof(*b));
    b->node_port = node_port;
    b->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(b->listen_fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(b->listen_fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(b->listen_fd, 4), 0);
    socklen_t sl = sizeof(sin);
    assert_int_equal(getsockname(b->listen_fd, (struct sockaddr *)&sin, &sl), 0);
    b->port = ntohs(sin.sin_port);
    assert_int_equal(pthread_create(&b->thread, NULL, fake_balancer_run, b), 0);
}

struct notice_log {
    berth_client *c;
    int calls;
    berth_err send, flush, connect;
};

static void on_notice_acts(void *arg, const char *text)
{
    struct notice_log *l = arg;
    (void)text;
    l->calls++;
    l->send = berth_send(l->c, 9, "x", 1);
    l->flush = berth_flush(l->c);
    l->connect = berth_connect(l->c);
    berth_client_free(l->c); /* refused as well */
}

/* A notice comes from the middle of a connection attempt: a handler that
 * tries to act there is refused with BERTH_E_IN_HANDLER and the client is
 * not freed under the call that runs it. */
static void test_notice_handler_may_not_act(void **state)
{
    (void)state;
    struct fake_node node;
    fake_node_start(&node, NODE_ERROR_PING);
    struct fake_balancer bal;
    fake_balancer_start(&bal, node.port);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", bal.port);
    const char *balancers[] = {url};
    struct berth_options o;
    berth_options_init(&o);
    o.balancers = balancers;
    o.nbalancers = 1;
    o.ca_file = certs.ca_pem;
    o.timeout_ms = 300;
    o.max_retries = 1;
    o.backoff_base_ms = 0;
    o.cache_ttl_ms = 60000;
    o.no_reports = 1;
    berth_client *c = NULL;
    assert_int_equal(berth_client_new(&o, &c), BERTH_OK);
    struct notice_log l = {.c = c};
    berth_set_notice_handler(c, on_notice_acts, &l);
    berth_err r = berth_connect(c);
    if (r != BERTH_OK)
        fail_msg("berth_connect: %s: %s", berth_strerror(r), berth_error(c));
    assert_int_equal(pthread_join(bal.thread, NULL), 0); /* the balancer is gone now */
    /* The node refuses the PING: a failover, no balancer answers, the
     * cached list stands in (a notice) with n2, which does not answer. */
    r = berth_ping(c, NULL);
    assert_int_not_equal(r, BERTH_OK);
    assert_true(l.calls >= 1);
    assert_int_equal(l.send, BERTH_E_IN_HANDLER);
    assert_int_equal(l.flush, BERTH_E_IN_HANDLER);
    assert_int_equal(l.connect, BERTH_E_IN_HANDLER);
    assert_int_equal(berth_unacked(c), 0); /* the refused send queued nothing */
    assert_non_null(strstr(berth_error(c), "berth_client_free from inside the notice handler"));
    berth_client_free(c);
    fake_node_stop(&node);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_reply),
        cmocka_unit_test(test_check_ack),
        cmocka_unit_test(test_check_welcome),
        cmocka_unit_test(test_session_good),
        cmocka_unit_test(test_session_bad_sha),
        cmocka_unit_test(test_session_wrong_id),
        cmocka_unit_test(test_connect_other_node),
        cmocka_unit_test(test_session_error_frame),
        cmocka_unit_test(test_session_drain),
        cmocka_unit_test(test_session_timeout),
        cmocka_unit_test(test_connect_failures),
        cmocka_unit_test(test_session_small_limit),
        cmocka_unit_test(test_alert_words_are_not_an_alert),
        cmocka_unit_test(test_handshake_timeout_class),
        cmocka_unit_test(test_ack_handler_flushes),
        cmocka_unit_test(test_ack_handler_streams),
        cmocka_unit_test(test_ack_handler_free_refused),
        cmocka_unit_test(test_send_failure_means_not_queued),
        cmocka_unit_test(test_notice_handler_may_not_act),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
