/* tls_conn: one TLS connection on a non-blocking socket, and the mapping of
 * OpenSSL's outcomes (WANT_READ/WANT_WRITE, close_notify, EOF, failure) onto
 * the few statuses an event loop needs; the socket BIO that cannot raise
 * SIGPIPE is here too. */
#include "tls_conn.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "tls_ctx.h"
#include "hex.h"

#define TLS_CONN_ERR_MAX 512

struct tls_conn {
    SSL *ssl;      /* owned */
    int fd;        /* owned, non-blocking */
    bool fatal;    /* a fatal error happened: SSL_shutdown must not be called */
    uint32_t events; /* what the last TLS_AGAIN waits for */
    int peer_alert;  /* the TLS alert the peer sent with the last failure, or -1 */
    unsigned long ssl_err; /* OpenSSL's code for the last failure, 0 if none */
    char *err;       /* last error text, TLS_CONN_ERR_MAX bytes; allocated at the first
                      * error, so the thousands of healthy connections a node holds
                      * carry no error buffer */
};

/* tls_conn_error's answer when the error text itself could not be kept. */
static const char tls_conn_err_nomem[] = "out of memory (recording a TLS error)";

enum tls_conn_op { TLS_OP_HANDSHAKE, TLS_OP_READ, TLS_OP_WRITE };

static const char *const tls_conn_op_names[] = {
    [TLS_OP_HANDSHAKE] = "handshake",
    [TLS_OP_READ] = "read",
    [TLS_OP_WRITE] = "write",
};

/* OpenSSL's socket BIO writes with write(2): a peer that has gone makes
 * that raise SIGPIPE, whose default action kills the process. A library may
 * neither be killable by its peer nor change the process's signal
 * disposition (blocking SIGPIPE per thread needs a sigtimedwait drain that
 * races with other threads' writes), so this BIO does the socket BIO's job
 * with send(MSG_NOSIGNAL), which turns the same case into EPIPE. */
static BIO_METHOD *tls_conn_bio_method;
static pthread_once_t tls_conn_bio_once = PTHREAD_ONCE_INIT;

static int tls_conn_bio_write(BIO *b, const char *p, size_t len, size_t *written)
{
    const struct tls_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    *written = 0;
    ssize_t n;
    do
        n = send(c->fd, p, len, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n >= 0) {
        *written = (size_t)n;
        return 1;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        BIO_set_retry_write(b);
    return 0; /* errno stays for tls_conn_fail */
}

static int tls_conn_bio_read(BIO *b, char *p, size_t len, size_t *readbytes)
{
    const struct tls_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    *readbytes = 0;
    ssize_t n;
    do
        n = recv(c->fd, p, len, 0);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        *readbytes = (size_t)n;
        return 1;
    }
    if (n == 0) {
        /* OpenSSL asks BIO_eof to tell an EOF without close_notify from a
         * stall, as it does with its own socket BIO. */
        BIO_set_flags(b, BIO_FLAGS_IN_EOF);
        return 0;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        BIO_set_retry_read(b);
    return 0;
}

static long tls_conn_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    const struct tls_conn *c = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1; /* nothing is buffered here */
    case BIO_CTRL_EOF:
        return BIO_test_flags(b, BIO_FLAGS_IN_EOF) != 0;
    case BIO_C_GET_FD:
        if (ptr)
            *(int *)ptr = c->fd;
        return c->fd;
    default:
        return 0; /* everything else (kTLS, push/pop, pending) does not apply */
    }
}

static int tls_conn_bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static int tls_conn_bio_destroy(BIO *b)
{
    (void)b; /* the tls_conn owns the socket */
    return 1;
}

static void tls_conn_bio_method_once(void)
{
    int type = BIO_get_new_index();
    BIO_METHOD *m = type > 0 ? BIO_meth_new(type | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR,
                                            "berth socket (MSG_NOSIGNAL)")
                             : NULL;
    if (m && (BIO_meth_set_write_ex(m, tls_conn_bio_write) != 1 ||
              BIO_meth_set_read_ex(m, tls_conn_bio_read) != 1 ||
              BIO_meth_set_ctrl(m, tls_conn_bio_ctrl) != 1 ||
              BIO_meth_set_create(m, tls_conn_bio_create) != 1 ||
              BIO_meth_set_destroy(m, tls_conn_bio_destroy) != 1)) {
        BIO_meth_free(m);
        m = NULL;
    }
    tls_conn_bio_method = m; /* process-wide, never freed, like OpenSSL's own methods */
}

/* Attaches c->fd to c->ssl through the BIO above. 0 or -1 with err. */
static int tls_conn_attach_socket(struct tls_conn *c, char *err, size_t errlen)
{
    if (pthread_once(&tls_conn_bio_once, tls_conn_bio_method_once) != 0 ||
        !tls_conn_bio_method) {
        tls_ctx_error(err, errlen, "cannot create the socket BIO method");
        return -1;
    }
    BIO *b = BIO_new(tls_conn_bio_method);
    if (!b) {
        tls_ctx_error(err, errlen, "BIO_new failed");
        return -1;
    }
    BIO_set_data(b, c);
    SSL_set_bio(c->ssl, b, b); /* one reference, owned by ssl from here */
    return 0;
}

static struct tls_conn *tls_conn_new(SSL_CTX *ctx, int fd, bool client, char *err, size_t errlen)
{
    ERR_clear_error();
    struct tls_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        close(fd);
        return NULL;
    }
    c->fd = fd;
    c->peer_alert = -1;
    c->ssl = SSL_new(ctx);
    if (!c->ssl) {
        tls_ctx_error(err, errlen, "SSL_new failed");
        goto fail;
    }
    if (tls_conn_attach_socket(c, err, errlen) != 0)
        goto fail;
    if (client)
        SSL_set_connect_state(c->ssl);
    else
        SSL_set_accept_state(c->ssl);
    return c;

fail:
    tls_conn_free(c);
    return NULL;
}

struct tls_conn *tls_conn_new_server(SSL_CTX *ctx, int fd)
{
    return tls_conn_new(ctx, fd, false, NULL, 0);
}

struct tls_conn *tls_conn_new_client(SSL_CTX *ctx, int fd, const char *host, char *err,
                                     size_t errlen)
{
    struct tls_conn *c = tls_conn_new(ctx, fd, true, err, errlen);
    if (!c)
        return NULL;
    if (host && *host) {
        if (tls_ctx_expect_host(c->ssl, host, err, errlen) != 0) {
            tls_conn_free(c);
            return NULL;
        }
    } else if (SSL_CTX_get_verify_mode(ctx) & SSL_VERIFY_PEER) {
        /* A verified chain for an unchecked name proves nothing. */
        if (err && errlen)
            snprintf(err, errlen, "a verifying TLS client needs the host name to check");
        tls_conn_free(c);
        return NULL;
    }
    return c;
}

void tls_conn_free(struct tls_conn *c)
{
    if (!c)
        return;
    SSL_free(c->ssl);
    if (c->fd >= 0)
        close(c->fd);
    free(c->err);
    free(c);
}

static void tls_conn_errf(struct tls_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The error text buffer, allocated on first use; NULL when out of memory
 * (the OpenSSL queue is cleared then: nobody else reads it). */
static char *tls_conn_errbuf(struct tls_conn *c)
{
    if (!c->err)
        c->err = malloc(TLS_CONN_ERR_MAX);
    if (!c->err)
        ERR_clear_error();
    return c->err;
}

static void tls_conn_errf(struct tls_conn *c, const char *fmt, ...)
{
    if (!tls_conn_errbuf(c))
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, TLS_CONN_ERR_MAX, fmt, ap);
    va_end(ap);
}

/* Keeps the codes behind the error text before tls_ctx_error clears the
 * queue: OpenSSL's first code, and the alert the peer sent (OpenSSL files
 * a received alert as reason SSL_AD_REASON_OFFSET + its description). */
static void tls_conn_keep_codes(struct tls_conn *c)
{
    unsigned long codes[2] = {ERR_peek_error(), ERR_peek_last_error()};
    c->ssl_err = codes[0];
    for (size_t i = 0; i < 2; i++) {
        int reason = ERR_GET_REASON(codes[i]);
        if (codes[i] && ERR_GET_LIB(codes[i]) == ERR_LIB_SSL && reason >= SSL_AD_REASON_OFFSET &&
            reason < SSL_AD_REASON_OFFSET + 256) {
            c->peer_alert = reason - SSL_AD_REASON_OFFSET;
            return;
        }
    }
}

/* Maps a failed SSL_* call (ret <= 0) to a status, recording why. */
static enum tls_status tls_conn_fail(struct tls_conn *c, int ret, enum tls_conn_op op)
{
    int saved_errno = errno;
    int e = SSL_get_error(c->ssl, ret);
    const char *opname = tls_conn_op_names[op];
    c->events = 0;
    c->peer_alert = -1;
    c->ssl_err = 0;

    switch (e) {
    case SSL_ERROR_WANT_READ:
        /* Also for a write: TLS may need the peer's bytes (a key update)
         * before it can send; the caller waits for readable. */
        c->events = EPOLLIN;
        return TLS_AGAIN;
    case SSL_ERROR_WANT_WRITE:
        /* Also for a read: OpenSSL may need to flush (an alert, a handshake
         * message) before it can read on. */
        c->events = EPOLLOUT;
        return TLS_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        tls_conn_errf(c, "%s: peer sent close_notify", opname);
        return TLS_CLOSED;
    case SSL_ERROR_SYSCALL:
        c->fatal = true;
        if (ERR_peek_error() == 0) {
            /* The peer vanished: EOF without close_notify, or a reset. */
            if (saved_errno == 0 || saved_errno == ECONNRESET || saved_errno == EPIPE) {
                tls_conn_errf(c, "%s: peer closed the connection%s", opname,
                              saved_errno ? " (reset)" : "");
                return TLS_CLOSED;
            }
            tls_conn_errf(c, "%s: %s", opname, strerror(saved_errno));
            return TLS_ERROR;
        }
        break;
    case SSL_ERROR_SSL: {
        c->fatal = true;
        unsigned long first = ERR_peek_error();
        /* OpenSSL 3 reports an EOF without close_notify this way. */
        if (ERR_GET_LIB(first) == ERR_LIB_SSL &&
            ERR_GET_REASON(first) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
            ERR_clear_error();
            tls_conn_errf(c, "%s: peer closed the connection without close_notify", opname);
            return TLS_CLOSED;
        }
        break;
    }
    default:
        c->fatal = true;
        break;
    }

    tls_conn_keep_codes(c);
    char what[256];
    /* Both sides: a client names the node certificate's flaw, a node
     * requiring client certificates (mTLS) the client's. */
    if (op == TLS_OP_HANDSHAKE) {
        long vr = SSL_get_verify_result(c->ssl);
        if (vr != X509_V_OK) {
            snprintf(what, sizeof(what), "handshake: certificate verify failed: %s",
                     X509_verify_cert_error_string(vr));
            if (tls_conn_errbuf(c))
                tls_ctx_error(c->err, TLS_CONN_ERR_MAX, what);
            return TLS_ERROR;
        }
    }
    snprintf(what, sizeof(what), "%s failed", opname);
    if (tls_conn_errbuf(c))
        tls_ctx_error(c->err, TLS_CONN_ERR_MAX, what);
    return TLS_ERROR;
}

/* SSL_get_error needs an empty queue before the call. ERR_clear_error
 * sweeps every slot of the queue even when it is empty, which costs more
 * than a TLS record's bookkeeping; peeking first makes the usual case cheap. */
static void tls_conn_clear_errors(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

enum tls_status tls_conn_handshake(struct tls_conn *c)
{
    tls_conn_clear_errors();
    errno = 0;
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->events = 0;
        return TLS_DONE;
    }
    return tls_conn_fail(c, r, TLS_OP_HANDSHAKE);
}

enum tls_status tls_conn_read(struct tls_conn *c, void *p, size_t len, size_t *n)
{
    *n = 0;
    if (len == 0)
        return TLS_DONE;
    tls_conn_clear_errors();
    errno = 0;
    size_t got = 0;
    int r = SSL_read_ex(c->ssl, p, len, &got);
    if (r == 1) {
        c->events = 0;
        *n = got;
        return TLS_DONE;
    }
    return tls_conn_fail(c, r, TLS_OP_READ);
}

enum tls_status tls_conn_write(struct tls_conn *c, const void *p, size_t len, size_t *n)
{
    *n = 0;
    if (len == 0)
        return TLS_DONE;
    tls_conn_clear_errors();
    errno = 0;
    size_t put = 0;
    int r = SSL_write_ex(c->ssl, p, len, &put);
    if (r == 1) {
        c->events = 0;
        *n = put;
        return TLS_DONE;
    }
    return tls_conn_fail(c, r, TLS_OP_WRITE);
}

void tls_conn_shutdown(struct tls_conn *c)
{
    /* After a fatal error OpenSSL forbids SSL_shutdown; and before the
     * handshake there is no session to close. */
    if (c->fatal || !SSL_is_init_finished(c->ssl))
        return;
    ERR_clear_error();
    /* One attempt: close_notify is best effort, we never wait for the
     * peer's reply, so WANT_READ/WANT_WRITE are not worth retrying. */
    (void)SSL_shutdown(c->ssl);
    ERR_clear_error();
}

void tls_conn_keep_buffers(struct tls_conn *c, bool keep)
{
    if (keep) {
        SSL_clear_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS);
        return;
    }
    SSL_set_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS);
    /* 0 means a buffer still holds bytes: the mode frees it once drained. */
    (void)SSL_free_buffers(c->ssl);
}

uint32_t tls_conn_events(const struct tls_conn *c)
{
    return c->events;
}

bool tls_conn_has_pending(const struct tls_conn *c)
{
    /* SSL_has_pending also counts records read ahead but not yet
     * decrypted, which SSL_pending leaves out. */
    return SSL_has_pending(c->ssl) == 1;
}

int tls_conn_fd(const struct tls_conn *c)
{
    return c->fd;
}

const char *tls_conn_protocol(const struct tls_conn *c)
{
    return SSL_get_version(c->ssl);
}

const char *tls_conn_cipher(const struct tls_conn *c)
{
    return SSL_get_cipher_name(c->ssl);
}

int tls_conn_peer_sha256(const struct tls_conn *c, char hex[65])
{
    X509 *x = SSL_get0_peer_certificate(c->ssl);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!x || X509_digest(x, EVP_sha256(), md, &n) != 1 || n != 32)
        return -1;
    hex_encode(hex, md, n);
    return 0;
}

int tls_conn_peer_identity(const struct tls_conn *c, char *out, size_t outlen)
{
    if (outlen == 0)
        return -1;
    out[0] = '\0';
    X509 *x = SSL_get0_peer_certificate(c->ssl);
    if (!x)
        return -1;
    X509_NAME *subject = X509_get_subject_name(x);
    int at = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    unsigned char *text = NULL;
    int n = -1;
    if (at >= 0) {
        ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, at));
        n = ASN1_STRING_to_UTF8(&text, cn);
    }
    if (n < 0) {
        BIO *b = BIO_new(BIO_s_mem());
        char *p = NULL;
        long len;
        if (!b || X509_NAME_print_ex(b, subject, 0, XN_FLAG_RFC2253) < 0 ||
            (len = BIO_get_mem_data(b, &p)) < 0) {
            BIO_free(b);
            ERR_clear_error();
            return -1;
        }
        size_t k = (size_t)len < outlen - 1 ? (size_t)len : outlen - 1;
        memcpy(out, p, k);
        out[k] = '\0';
        BIO_free(b);
    } else {
        size_t k = (size_t)n < outlen - 1 ? (size_t)n : outlen - 1;
        memcpy(out, text, k);
        out[k] = '\0';
        OPENSSL_free(text);
    }
    /* The identity goes into logs and JSON: no control characters, no
     * quotes or backslashes that could forge fields. */
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == '"' || *p == '\\')
            *p = '?';
    return 0;
}

int tls_conn_peer_alert(const struct tls_conn *c)
{
    return c->peer_alert;
}

unsigned long tls_conn_error_code(const struct tls_conn *c)
{
    return c->ssl_err;
}

const char *tls_conn_error(const struct tls_conn *c)
{
    if (!c->err)
        return c->fatal ? tls_conn_err_nomem : "";
    return c->err;
}
