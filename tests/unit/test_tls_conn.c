/* Unit tests for shared/tls_ctx.c and shared/tls_conn.c over an in-process
 * socketpair: non-blocking handshakes, both directions of data, a 1 MiB
 * transfer with partial writes, close and vanish, and the verification
 * failures a user meets (wrong name, wrong CA, missing or mismatched files).
 * Certificates are made here with OpenSSL and live in a mkdtemp directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "test_certs.h"
#include "tls_conn.h"
#include "tls_ctx.h"

#define MAX_STEPS 100000   /* bound on any drive loop */
#define POLL_TIMEOUT_MS 5000

/* Files made once for the whole group. */
static struct test_certs certs;

static int group_setup(void **state)
{
    (void)state;
    /* A peer that vanishes mid-write must give EPIPE, not kill the test. */
    signal(SIGPIPE, SIG_IGN);
    return test_certs_make(&certs, "/tmp/berth-tls-test");
}

static int group_teardown(void **state)
{
    (void)state;
    test_certs_remove(&certs);
    return 0;
}

/* ---- driving a pair ---- */

struct pair {
    SSL_CTX *sctx, *cctx;
    struct tls_conn *server, *client;
    enum tls_status sst, cst; /* last handshake statuses */
};

static void pair_open(struct pair *p, SSL_CTX *sctx, SSL_CTX *cctx, const char *host)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    p->sctx = sctx;
    p->cctx = cctx;
    p->server = tls_conn_new_server(sctx, sv[0]);
    assert_non_null(p->server);
    char err[256] = "";
    p->client = tls_conn_new_client(cctx, sv[1], host, err, sizeof(err));
    if (!p->client)
        fail_msg("tls_conn_new_client: %s", err);
    assert_int_equal(tls_conn_fd(p->server), sv[0]);
    assert_int_equal(tls_conn_fd(p->client), sv[1]);
}

static void pair_close(struct pair *p)
{
    tls_conn_free(p->server);
    tls_conn_free(p->client);
    SSL_CTX_free(p->sctx);
    SSL_CTX_free(p->cctx);
    memset(p, 0, sizeof(*p));
}

/* Waits until one of the two connections can make progress. */
static void wait_either(struct tls_conn *a, uint32_t aev, struct tls_conn *b, uint32_t bev)
{
    struct pollfd pfd[2];
    int n = 0;
    if (a && aev) {
        pfd[n].fd = tls_conn_fd(a);
        pfd[n].events = (short)((aev & EPOLLIN ? POLLIN : 0) | (aev & EPOLLOUT ? POLLOUT : 0));
        n++;
    }
    if (b && bev) {
        pfd[n].fd = tls_conn_fd(b);
        pfd[n].events = (short)((bev & EPOLLIN ? POLLIN : 0) | (bev & EPOLLOUT ? POLLOUT : 0));
        n++;
    }
    assert_true(n > 0);
    int r;
    do {
        r = poll(pfd, (nfds_t)n, POLL_TIMEOUT_MS);
    } while (r < 0 && errno == EINTR);
    if (r <= 0)
        fail_msg("poll: %s", r == 0 ? "timed out: both sides are waiting" : strerror(errno));
}

/* Steps both handshakes until both finish or either fails. */
static void pair_handshake(struct pair *p)
{
    p->sst = p->cst = TLS_AGAIN;
    for (int step = 0; step < MAX_STEPS; step++) {
        if (p->cst == TLS_AGAIN)
            p->cst = tls_conn_handshake(p->client);
        if (p->sst == TLS_AGAIN)
            p->sst = tls_conn_handshake(p->server);
        if ((p->cst != TLS_AGAIN && p->sst != TLS_AGAIN) || p->cst == TLS_ERROR ||
            p->sst == TLS_ERROR || p->cst == TLS_CLOSED || p->sst == TLS_CLOSED)
            return;
        uint32_t cev = p->cst == TLS_AGAIN ? tls_conn_events(p->client) : 0;
        uint32_t sev = p->sst == TLS_AGAIN ? tls_conn_events(p->server) : 0;
        assert_true(cev == EPOLLIN || cev == EPOLLOUT || cev == 0);
        assert_true(sev == EPOLLIN || sev == EPOLLOUT || sev == 0);
        wait_either(p->client, cev, p->server, sev);
    }
    fail_msg("handshake did not finish in %d steps", MAX_STEPS);
}

static SSL_CTX *server_ctx(void)
{
    char err[512] = "";
    SSL_CTX *ctx = tls_ctx_server_new(certs.leaf_pem, certs.leaf_key, err, sizeof(err));
    if (!ctx)
        fail_msg("tls_ctx_server_new: %s", err);
    return ctx;
}

static SSL_CTX *client_ctx(const char *ca, bool verify)
{
    char err[512] = "";
    SSL_CTX *ctx = tls_ctx_client_new(ca, verify, err, sizeof(err));
    if (!ctx)
        fail_msg("tls_ctx_client_new: %s", err);
    return ctx;
}

static void open_good_pair(struct pair *p, const char *host)
{
    pair_open(p, server_ctx(), client_ctx(certs.ca_pem, true), host);
    pair_handshake(p);
    if (p->cst != TLS_DONE || p->sst != TLS_DONE)
        fail_msg("handshake: client %d (%s), server %d (%s)", p->cst, tls_conn_error(p->client),
                 p->sst, tls_conn_error(p->server));
}

/* Writes all of buf from src while reading it at dst, alternating. */
static void transfer(struct tls_conn *src, struct tls_conn *dst, const unsigned char *buf,
                     size_t len, unsigned char *got, int *write_calls, int *short_writes)
{
    size_t sent = 0, recvd = 0;
    *write_calls = *short_writes = 0;
    uint32_t wev = 0, rev = 0;
    for (int step = 0; step < MAX_STEPS && recvd < len; step++) {
        bool progress = false;
        if (sent < len) {
            size_t n = 0;
            enum tls_status st = tls_conn_write(src, buf + sent, len - sent, &n);
            (*write_calls)++;
            if (st == TLS_DONE) {
                assert_true(n > 0 && n <= len - sent);
                if (n < len - sent)
                    (*short_writes)++;
                sent += n;
                wev = 0;
                progress = true;
            } else {
                if (st != TLS_AGAIN)
                    fail_msg("write: %d %s", st, tls_conn_error(src));
                wev = tls_conn_events(src);
            }
        } else {
            wev = 0;
        }
        for (;;) {
            size_t n = 0;
            enum tls_status st = tls_conn_read(dst, got + recvd, len - recvd, &n);
            if (st == TLS_DONE) {
                assert_true(n > 0);
                recvd += n;
                progress = true;
                if (recvd == len)
                    break;
                continue;
            }
            if (st != TLS_AGAIN)
                fail_msg("read: %d %s", st, tls_conn_error(dst));
            rev = tls_conn_events(dst);
            break;
        }
        if (!progress && recvd < len)
            wait_either(src, wev, dst, rev);
    }
    assert_int_equal(sent, len);
    assert_int_equal(recvd, len);
}

/* Reads until data, or a non-AGAIN status. */
static enum tls_status read_some(struct tls_conn *c, void *buf, size_t len, size_t *n)
{
    for (int step = 0; step < MAX_STEPS; step++) {
        enum tls_status st = tls_conn_read(c, buf, len, n);
        if (st != TLS_AGAIN)
            return st;
        wait_either(c, tls_conn_events(c), NULL, 0);
    }
    fail_msg("read did not finish");
    return TLS_ERROR;
}

/* ---- tests ---- */

static void test_handshake_and_exchange(void **state)
{
    (void)state;
    struct pair p;
    open_good_pair(&p, "localhost");
    assert_string_equal(tls_conn_protocol(p.client), "TLSv1.3");
    assert_string_equal(tls_conn_protocol(p.server), "TLSv1.3");
    assert_non_null(strstr(tls_conn_cipher(p.client), "TLS_"));
    assert_string_equal(tls_conn_error(p.client), "");

    unsigned char got[256];
    int calls, shorts;
    transfer(p.client, p.server, (const unsigned char *)"hello server", 12, got, &calls, &shorts);
    assert_memory_equal(got, "hello server", 12);
    transfer(p.server, p.client, (const unsigned char *)"hello client", 12, got, &calls, &shorts);
    assert_memory_equal(got, "hello client", 12);

    /* A read smaller than the record leaves the rest inside OpenSSL, where
     * epoll cannot see it: has_pending must tell. */
    size_t n = 0;
    assert_int_equal(tls_conn_write(p.server, "0123456789", 10, &n), TLS_DONE);
    assert_int_equal(n, 10);
    assert_false(tls_conn_has_pending(p.client));
    assert_int_equal(read_some(p.client, got, 4, &n), TLS_DONE);
    assert_int_equal(n, 4);
    assert_memory_equal(got, "0123", 4);
    assert_true(tls_conn_has_pending(p.client));
    assert_int_equal(tls_conn_read(p.client, got, sizeof(got), &n), TLS_DONE);
    assert_int_equal(n, 6);
    assert_memory_equal(got, "456789", 6);
    assert_false(tls_conn_has_pending(p.client));

    /* Nothing to read: AGAIN, waiting for readable. */
    assert_int_equal(tls_conn_read(p.client, got, sizeof(got), &n), TLS_AGAIN);
    assert_int_equal(tls_conn_events(p.client), EPOLLIN);
    assert_int_equal(n, 0);
    /* Zero-length calls are no-ops. */
    assert_int_equal(tls_conn_read(p.client, got, 0, &n), TLS_DONE);
    assert_int_equal(tls_conn_write(p.client, got, 0, &n), TLS_DONE);
    assert_int_equal(n, 0);
    pair_close(&p);
}

/* Keeping OpenSSL's record buffers and giving them back, at any point of
 * a stream: bytes OpenSSL still holds (half a record read) survive the
 * release, and both directions go on working in either mode. */
static void test_keep_buffers(void **state)
{
    (void)state;
    struct pair p;
    open_good_pair(&p, "localhost");
    assert_string_equal(tls_conn_error(p.server), "");
    unsigned char got[64];
    int calls, shorts;
    size_t n = 0;

    tls_conn_keep_buffers(p.server, true);
    for (int i = 0; i < 3; i++) {
        transfer(p.client, p.server, (const unsigned char *)"ping", 4, got, &calls, &shorts);
        assert_memory_equal(got, "ping", 4);
        transfer(p.server, p.client, (const unsigned char *)"pong", 4, got, &calls, &shorts);
        assert_memory_equal(got, "pong", 4);
    }

    /* Half a record read: the release must not drop the other half, nor the
     * record queued behind it. */
    assert_int_equal(tls_conn_write(p.client, "abcdefgh", 8, &n), TLS_DONE);
    assert_int_equal(tls_conn_write(p.client, "ijkl", 4, &n), TLS_DONE);
    assert_int_equal(read_some(p.server, got, 3, &n), TLS_DONE);
    assert_int_equal(n, 3);
    assert_memory_equal(got, "abc", 3);
    tls_conn_keep_buffers(p.server, false);
    size_t have = 0;
    for (int step = 0; step < MAX_STEPS && have < 9; step++) {
        assert_int_equal(read_some(p.server, got + have, sizeof(got) - have, &n), TLS_DONE);
        have += n;
    }
    assert_int_equal(have, 9);
    assert_memory_equal(got, "defghijkl", 9);

    /* Released while idle; then kept again, released again. */
    tls_conn_keep_buffers(p.server, false);
    transfer(p.server, p.client, (const unsigned char *)"after", 5, got, &calls, &shorts);
    assert_memory_equal(got, "after", 5);
    tls_conn_keep_buffers(p.server, true);
    transfer(p.client, p.server, (const unsigned char *)"again", 5, got, &calls, &shorts);
    assert_memory_equal(got, "again", 5);
    tls_conn_keep_buffers(p.server, false);
    tls_conn_keep_buffers(p.server, false);
    assert_int_equal(tls_conn_read(p.server, got, sizeof(got), &n), TLS_AGAIN);
    assert_string_equal(tls_conn_error(p.server), "");

    /* The error text appears with the first error. */
    tls_conn_shutdown(p.client);
    assert_int_equal(read_some(p.server, got, sizeof(got), &n), TLS_CLOSED);
    assert_non_null(strstr(tls_conn_error(p.server), "close_notify"));
    pair_close(&p);
}

static void test_large_transfer(void **state)
{
    (void)state;
    struct pair p;
    open_good_pair(&p, "127.0.0.1");
    size_t len = 1u << 20;
    unsigned char *buf = malloc(len), *got = malloc(len);
    assert_non_null(buf);
    assert_non_null(got);
    for (size_t i = 0; i < len; i++)
        buf[i] = (unsigned char)(i * 2654435761u >> 13);

    int calls, shorts;
    transfer(p.client, p.server, buf, len, got, &calls, &shorts);
    assert_memory_equal(got, buf, len);
    /* The socket buffer is far smaller than 1 MiB: the writer must have been
     * told to wait, or got partial writes. */
    assert_true(calls > 1);

    memset(got, 0, len);
    transfer(p.server, p.client, buf, len, got, &calls, &shorts);
    assert_memory_equal(got, buf, len);
    assert_true(calls > 1);
    free(buf);
    free(got);
    pair_close(&p);
}

static void test_moving_write_buffer(void **state)
{
    (void)state;
    /* Fill the socket until a write says AGAIN, then retry the same bytes
     * from another buffer, as a reallocating output buffer would. */
    struct pair p;
    open_good_pair(&p, "localhost");
    size_t len = 256 * 1024;
    unsigned char *a = malloc(len), *b = malloc(len), *got = malloc(4 * len);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(got);
    for (size_t i = 0; i < len; i++)
        a[i] = (unsigned char)i;
    size_t sent = 0, n = 0;
    enum tls_status st = TLS_DONE;
    for (int i = 0; i < 64 && st == TLS_DONE; i++) {
        st = tls_conn_write(p.client, a + (sent % len), len - (sent % len), &n);
        if (st == TLS_DONE)
            sent += n;
    }
    assert_int_equal(st, TLS_AGAIN);
    assert_int_equal(tls_conn_events(p.client), EPOLLOUT);
    size_t off = sent % len;
    memcpy(b, a, len);
    memset(a, 0xee, len); /* the old buffer is gone */

    /* Drain the reader, then finish the write from the moved buffer. */
    size_t recvd = 0, total = sent + (len - off);
    for (int step = 0; step < MAX_STEPS && recvd < total; step++) {
        bool progress = false;
        if (off < len) {
            st = tls_conn_write(p.client, b + off, len - off, &n);
            if (st == TLS_DONE) {
                off += n;
                progress = true;
            } else {
                assert_int_equal(st, TLS_AGAIN);
            }
        }
        size_t r = 0;
        st = tls_conn_read(p.server, got + (recvd % (4 * len)), 4 * len - (recvd % (4 * len)),
                           &r);
        if (st == TLS_DONE) {
            recvd += r;
            progress = true;
        } else {
            assert_int_equal(st, TLS_AGAIN);
        }
        if (!progress)
            wait_either(p.client, off < len ? tls_conn_events(p.client) : 0, p.server,
                        tls_conn_events(p.server));
    }
    assert_int_equal(recvd, total);
    free(a);
    free(b);
    free(got);
    pair_close(&p);
}

static void test_close_notify(void **state)
{
    (void)state;
    struct pair p;
    open_good_pair(&p, "localhost");
    tls_conn_shutdown(p.client);
    unsigned char buf[16];
    size_t n = 99;
    assert_int_equal(read_some(p.server, buf, sizeof(buf), &n), TLS_CLOSED);
    assert_int_equal(n, 0);
    tls_conn_shutdown(p.server); /* answering close_notify is allowed */
    assert_int_equal(read_some(p.client, buf, sizeof(buf), &n), TLS_CLOSED);
    pair_close(&p);
}

static void test_peer_vanishes(void **state)
{
    (void)state;
    struct pair p;
    open_good_pair(&p, "localhost");
    tls_conn_free(p.client); /* no close_notify: the socket just closes */
    p.client = NULL;
    unsigned char buf[16];
    size_t n = 0;
    assert_int_equal(read_some(p.server, buf, sizeof(buf), &n), TLS_CLOSED);
    assert_non_null(strstr(tls_conn_error(p.server), "peer closed"));
    /* After a fatal status shutdown must be a harmless no-op. */
    tls_conn_shutdown(p.server);

    /* Writing to a vanished peer: EPIPE maps to CLOSED, never a signal. */
    struct pair q;
    open_good_pair(&q, "localhost");
    tls_conn_free(q.client);
    q.client = NULL;
    enum tls_status st = TLS_DONE;
    for (int i = 0; i < 100 && st == TLS_DONE; i++)
        st = tls_conn_write(q.server, "data", 4, &n);
    assert_int_equal(st, TLS_CLOSED);
    pair_close(&p);
    pair_close(&q);
}

/* The library's promise to programs that keep the default SIGPIPE action
 * (this group ignores it): writing to a peer that has gone is TLS_CLOSED,
 * not death by signal. OpenSSL's own socket BIO uses write(2) and kills the
 * process here. */
static void test_vanished_peer_default_sigpipe(void **state)
{
    (void)state;
    struct sigaction dfl = {.sa_handler = SIG_DFL}, old;
    sigemptyset(&dfl.sa_mask);
    assert_int_equal(sigaction(SIGPIPE, &dfl, &old), 0);
    struct pair q;
    open_good_pair(&q, "localhost");
    tls_conn_free(q.client);
    q.client = NULL;
    enum tls_status st = TLS_DONE;
    size_t n = 0;
    for (int i = 0; i < 100 && st == TLS_DONE; i++)
        st = tls_conn_write(q.server, "data", 4, &n);
    assert_int_equal(st, TLS_CLOSED);
    assert_non_null(strstr(tls_conn_error(q.server), "peer closed"));
    assert_int_equal(tls_conn_peer_alert(q.server), -1);
    /* close_notify after the peer left: one more write, no signal either. */
    tls_conn_shutdown(q.server);
    pair_close(&q);
    assert_int_equal(sigaction(SIGPIPE, &old, NULL), 0);
}

/* A received alert is a code beside the text: the client learns the alert
 * number the server refused it with, and the server's own failure is not
 * filed as a received alert. */
static void test_alert_codes(void **state)
{
    (void)state;
    char err[512] = "";
    SSL_CTX *s = server_ctx();
    assert_int_equal(tls_ctx_require_client_cert(s, certs.ca_pem, err, sizeof(err)), 0);
    struct pair p;
    pair_open(&p, s, client_ctx(certs.ca_pem, true), "localhost");
    pair_handshake(&p);
    for (int i = 0; i < 100 && p.sst == TLS_AGAIN; i++) {
        p.sst = tls_conn_handshake(p.server);
        if (p.sst == TLS_AGAIN)
            wait_either(p.server, tls_conn_events(p.server), NULL, 0);
    }
    assert_int_equal(p.sst, TLS_ERROR);
    assert_int_equal(tls_conn_peer_alert(p.server), -1);
    assert_int_not_equal(tls_conn_error_code(p.server), 0);
    /* TLS 1.3: the client's handshake finished; its first read meets the
     * server's alert. */
    unsigned char buf[16];
    size_t n = 0;
    enum tls_status st = p.cst == TLS_DONE ? read_some(p.client, buf, sizeof(buf), &n) : p.cst;
    assert_int_equal(st, TLS_ERROR);
    assert_int_equal(tls_conn_peer_alert(p.client), SSL_AD_CERTIFICATE_REQUIRED);
    assert_int_equal(ERR_GET_LIB(tls_conn_error_code(p.client)), ERR_LIB_SSL);
    assert_int_equal(ERR_GET_REASON(tls_conn_error_code(p.client)),
                     SSL_AD_REASON_OFFSET + SSL_AD_CERTIFICATE_REQUIRED);
    pair_close(&p);
}

static void test_tls12_policy(void **state)
{
    (void)state;
    /* A TLS 1.2 client gets an AEAD ECDHE suite. */
    struct pair p;
    SSL_CTX *cctx = client_ctx(certs.ca_pem, true);
    assert_int_equal(SSL_CTX_set_max_proto_version(cctx, TLS1_2_VERSION), 1);
    pair_open(&p, server_ctx(), cctx, "localhost");
    pair_handshake(&p);
    assert_int_equal(p.cst, TLS_DONE);
    assert_int_equal(p.sst, TLS_DONE);
    assert_string_equal(tls_conn_protocol(p.client), "TLSv1.2");
    const char *cipher = tls_conn_cipher(p.client);
    assert_true(strncmp(cipher, "ECDHE-ECDSA-", 12) == 0);
    assert_true(strstr(cipher, "GCM") || strstr(cipher, "CHACHA20"));
    pair_close(&p);

    /* A TLS 1.2 client offering only CBC suites is refused by the server. */
    cctx = client_ctx(certs.ca_pem, true);
    assert_int_equal(SSL_CTX_set_max_proto_version(cctx, TLS1_2_VERSION), 1);
    assert_int_equal(SSL_CTX_set_cipher_list(cctx, "ECDHE-ECDSA-AES128-SHA"), 1);
    pair_open(&p, server_ctx(), cctx, "localhost");
    pair_handshake(&p);
    assert_int_equal(p.sst, TLS_ERROR);
    assert_non_null(strstr(tls_conn_error(p.server), "no shared cipher"));
    pair_close(&p);

    /* TLS 1.1 is below the minimum. */
    cctx = client_ctx(certs.ca_pem, true);
    SSL_CTX_set_security_level(cctx, 0);
    assert_int_equal(SSL_CTX_set_min_proto_version(cctx, TLS1_VERSION), 1);
    assert_int_equal(SSL_CTX_set_max_proto_version(cctx, TLS1_1_VERSION), 1);
    pair_open(&p, server_ctx(), cctx, "localhost");
    pair_handshake(&p);
    assert_true(p.sst == TLS_ERROR || p.cst == TLS_ERROR);
    pair_close(&p);
}

/* Client verification fails; the message must say why in words. */
static void expect_verify_failure(const char *ca, const char *host, const char *why)
{
    struct pair p;
    pair_open(&p, server_ctx(), client_ctx(ca, true), host);
    pair_handshake(&p);
    /* The client fails first; the server may have stopped with its alert
     * still unread, so only the client's outcome is fixed. */
    if (p.cst != TLS_ERROR)
        fail_msg("client handshake %d, want TLS_ERROR", p.cst);
    const char *err = tls_conn_error(p.client);
    if (!strstr(err, "certificate verify failed") || !strstr(err, why))
        fail_msg("error \"%s\" lacks \"%s\"", err, why);
    /* The server sees the client's alert. */
    for (int i = 0; i < 100 && p.sst == TLS_AGAIN; i++) {
        p.sst = tls_conn_handshake(p.server);
        if (p.sst == TLS_AGAIN)
            wait_either(p.server, tls_conn_events(p.server), NULL, 0);
    }
    assert_true(p.sst == TLS_ERROR || p.sst == TLS_CLOSED);
    pair_close(&p);
}

static void test_verify_failures(void **state)
{
    (void)state;
    expect_verify_failure(certs.ca_pem, "example.org", "hostname mismatch");
    expect_verify_failure(certs.ca_pem, "127.0.0.2", "IP address mismatch");
    expect_verify_failure(certs.ca_pem, "host.localhost", "hostname mismatch");
    expect_verify_failure(certs.other_ca_pem, "localhost", "unable to get local issuer certificate");

    /* --insecure: no verification, no host needed, any CA. */
    struct pair p;
    pair_open(&p, server_ctx(), client_ctx(certs.other_ca_pem, false), NULL);
    pair_handshake(&p);
    assert_int_equal(p.cst, TLS_DONE);
    assert_int_equal(p.sst, TLS_DONE);
    pair_close(&p);

    /* A verifying client without a host to check is refused up front. */
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    SSL_CTX *cctx = client_ctx(certs.ca_pem, true);
    char err[256] = "";
    assert_null(tls_conn_new_client(cctx, sv[0], NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "host name"));
    /* sv[0] was taken over and closed even on failure: the peer sees EOF. */
    char byte;
    assert_int_equal(read(sv[1], &byte, 1), 0);
    close(sv[1]);
    SSL_CTX_free(cctx);
}

static void test_ctx_errors(void **state)
{
    (void)state;
    char err[512] = "";
    assert_null(tls_ctx_server_new(certs.missing_pem, certs.leaf_key, err, sizeof(err)));
    assert_non_null(strstr(err, certs.missing_pem));
    assert_non_null(strstr(err, "certificate"));

    err[0] = '\0';
    assert_null(tls_ctx_server_new(certs.leaf_pem, certs.missing_pem, err, sizeof(err)));
    assert_non_null(strstr(err, certs.missing_pem));
    assert_non_null(strstr(err, "private key"));

    /* A key that belongs to another certificate. */
    err[0] = '\0';
    assert_null(tls_ctx_server_new(certs.leaf_pem, certs.other_key, err, sizeof(err)));
    if (!strstr(err, certs.other_key) || !strstr(err, "values mismatch"))
        fail_msg("error \"%s\" does not name the key mismatch", err);

    /* A key file given as the certificate: not a PEM certificate. */
    err[0] = '\0';
    assert_null(tls_ctx_server_new(certs.leaf_key, certs.leaf_key, err, sizeof(err)));
    assert_non_null(strstr(err, certs.leaf_key));

    err[0] = '\0';
    assert_null(tls_ctx_server_new(NULL, certs.leaf_key, err, sizeof(err)));
    assert_non_null(strstr(err, "no certificate"));
    err[0] = '\0';
    assert_null(tls_ctx_server_new(certs.leaf_pem, "", err, sizeof(err)));
    assert_non_null(strstr(err, "no private key"));

    err[0] = '\0';
    assert_null(tls_ctx_client_new(certs.missing_pem, true, err, sizeof(err)));
    assert_non_null(strstr(err, certs.missing_pem));

    /* The system store is used when no CA file is given. */
    SSL_CTX *ctx = tls_ctx_client_new(NULL, true, err, sizeof(err));
    assert_non_null(ctx);
    SSL_CTX_free(ctx);

    /* A tiny buffer is never overrun and the queue is left empty. */
    char tiny[8];
    assert_null(tls_ctx_server_new(certs.missing_pem, certs.leaf_key, tiny, sizeof(tiny)));
    assert_int_equal(strlen(tiny), 7);
    assert_int_equal(ERR_peek_error(), 0);
}

/* Mutual TLS: a server requiring client certificates refuses a client
 * without one and one from another CA, takes one from its CA and sees its
 * identity; both sides see each other's certificate digest. */
static void test_client_certs(void **state)
{
    (void)state;
    char err[512] = "";
    SSL_CTX *s = server_ctx();
    assert_int_equal(tls_ctx_require_client_cert(s, certs.ca_pem, err, sizeof(err)), 0);
    struct pair p;
    pair_open(&p, s, client_ctx(certs.ca_pem, true), "localhost");
    pair_handshake(&p);
    /* TLS 1.3: the client may finish before the server checks its
     * (missing) certificate; the server must refuse. */
    for (int i = 0; i < 100 && p.sst == TLS_AGAIN; i++) {
        p.sst = tls_conn_handshake(p.server);
        if (p.sst == TLS_AGAIN)
            wait_either(p.server, tls_conn_events(p.server), NULL, 0);
    }
    assert_int_equal(p.sst, TLS_ERROR);
    if (!strstr(tls_conn_error(p.server), "certificate"))
        fail_msg("server error \"%s\" does not name the certificate", tls_conn_error(p.server));
    pair_close(&p);

    s = server_ctx();
    assert_int_equal(tls_ctx_require_client_cert(s, certs.ca_pem, err, sizeof(err)), 0);
    SSL_CTX *cl = client_ctx(certs.ca_pem, true);
    if (tls_ctx_use_client_cert(cl, certs.leaf_pem, certs.leaf_key, err, sizeof(err)) != 0)
        fail_msg("tls_ctx_use_client_cert: %s", err);
    pair_open(&p, s, cl, "localhost");
    pair_handshake(&p);
    assert_int_equal(p.cst, TLS_DONE);
    assert_int_equal(p.sst, TLS_DONE);
    char id[128];
    assert_int_equal(tls_conn_peer_identity(p.server, id, sizeof(id)), 0);
    assert_string_equal(id, "localhost");
    char a[65], b[65];
    assert_int_equal(tls_conn_peer_sha256(p.server, a), 0);
    assert_int_equal(tls_conn_peer_sha256(p.client, b), 0);
    assert_string_equal(a, b); /* the same leaf on both sides */
    assert_int_equal(strlen(a), 64);
    pair_close(&p);

    /* Without client certificates required, the server sees none. */
    open_good_pair(&p, "localhost");
    assert_int_equal(tls_conn_peer_identity(p.server, id, sizeof(id)), -1);
    assert_string_equal(id, "");
    assert_int_equal(tls_conn_peer_sha256(p.server, a), -1);
    pair_close(&p);

    /* Set-up errors name the file. */
    s = server_ctx();
    assert_int_equal(tls_ctx_require_client_cert(s, certs.missing_pem, err, sizeof(err)), -1);
    assert_non_null(strstr(err, certs.missing_pem));
    assert_int_equal(tls_ctx_require_client_cert(s, "", err, sizeof(err)), -1);
    SSL_CTX_free(s);
    cl = client_ctx(certs.ca_pem, true);
    assert_int_equal(tls_ctx_use_client_cert(cl, certs.leaf_pem, certs.other_key, err, sizeof(err)), -1);
    if (!strstr(err, certs.other_key) || !strstr(err, "values mismatch"))
        fail_msg("error \"%s\" does not name the key mismatch", err);
    assert_int_equal(tls_ctx_use_client_cert(cl, certs.leaf_pem, NULL, err, sizeof(err)), -1);
    SSL_CTX_free(cl);
}

static void test_expect_host(void **state)
{
    (void)state;
    SSL_CTX *ctx = client_ctx(certs.ca_pem, true);
    SSL *ssl = SSL_new(ctx);
    assert_non_null(ssl);
    char err[256];
    assert_int_equal(tls_ctx_expect_host(ssl, "localhost", err, sizeof(err)), 0);
    assert_string_equal(SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name), "localhost");
    assert_int_equal(tls_ctx_expect_host(ssl, "::1", err, sizeof(err)), 0);
    assert_int_equal(tls_ctx_expect_host(ssl, "", err, sizeof(err)), -1);
    assert_int_equal(tls_ctx_expect_host(ssl, NULL, err, sizeof(err)), -1);
    SSL_free(ssl);
    SSL_CTX_free(ctx);

    /* tls_ctx_error with an empty queue still says something. */
    tls_ctx_error(err, sizeof(err), "what");
    assert_string_equal(err, "what: no detail from OpenSSL");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake_and_exchange),
        cmocka_unit_test(test_keep_buffers),
        cmocka_unit_test(test_large_transfer),
        cmocka_unit_test(test_moving_write_buffer),
        cmocka_unit_test(test_close_notify),
        cmocka_unit_test(test_peer_vanishes),
        cmocka_unit_test(test_vanished_peer_default_sigpipe),
        cmocka_unit_test(test_alert_codes),
        cmocka_unit_test(test_tls12_policy),
        cmocka_unit_test(test_verify_failures),
        cmocka_unit_test(test_ctx_errors),
        cmocka_unit_test(test_client_certs),
        cmocka_unit_test(test_expect_host),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
