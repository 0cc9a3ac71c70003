/* client: a blocking session with a berth-node. The top half checks replies
 * (pure functions over decoded frames); the bottom half moves bytes over
 * TLS with poll, every wait bounded by the session's timeout. */
#include "client.h"
#include "errbuf.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "addr.h"
#include "buf.h"
#include "hex.h"
#include "mono.h"
#include "tls_conn.h"
#include "tls_ctx.h"

#define CLIENT_ERR_MAX 768
#define CLIENT_LABEL_MAX 400
#define CLIENT_ADDR_MAX 262
#define CLIENT_READ_CHUNK 16384
/* Pipelined SENDs are written out once this much has built up, so a long
 * stream of small messages still leaves in large writes. */
#define CLIENT_FLUSH_AT (256u * 1024u)

/* A pipelined SEND awaiting its ACK. */
struct client_pending {
    uint64_t request_id;
    uint64_t message_id;
    uint8_t sha256[FRAME_SHA256_LEN]; /* digest of the data we sent */
};

struct client {
    struct tls_conn *tls;          /* owns the socket */
    struct buf in;                 /* bytes read, not yet decoded */
    struct buf out;                /* encoded requests, not yet written */
    size_t in_consume;             /* size of the frame last returned; dropped on the next read */
    uint64_t next_request_id;      /* counter from 1; 0 is the node's "no request" */
    long timeout_ms;               /* bound on each wait */
    struct frame_welcome welcome;  /* what the node said in WELCOME */
    char addr[CLIENT_ADDR_MAX];    /* "host:port" as dialled */
    char label[CLIENT_LABEL_MAX];  /* "node n1", used to start every error */
    struct client_pending pending[CLIENT_WINDOW_MAX]; /* ring of SENDs awaiting ACK */
    size_t pending_head;           /* oldest entry */
    size_t pending_count;
    bool broken;                   /* a failure desynchronised or ended the session */
    bool draining;                 /* the node said BYE on its own or shutting_down */
    bool closed;                   /* BYE exchanged */
    bool timed_out;                /* the last failure was a wait that ran out of time */
    char err[CLIENT_ERR_MAX];      /* last error */
};

/* ---------------------------------------------------------------- checks */

/* Node text may hold anything; control characters become '?' before it
 * reaches a terminal or a log line. */
static void client_clean_text(char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch < 0x20 || ch == 0x7f)
            *s = '?';
    }
}

static const char *client_type_text(uint8_t type)
{
    const char *n = frame_type_name(type);
    return n ? n : "an unknown type";
}

enum client_reply client_check_reply(const struct frame *f, uint8_t want_type, uint64_t want_id,
                                     const char *label, char *err, size_t errlen)
{
    if (f->h.type == FRAME_ERROR) {
        struct frame_error_body eb;
        if (frame_parse_error(f, &eb) != 0) {
            errbuf_setf(err, errlen, "%s: protocol error: malformed ERROR frame (%" PRIu32
                        " bytes)", label, f->h.length);
            return CLIENT_REPLY_PROTOCOL;
        }
        client_clean_text(eb.text);
        errbuf_setf(err, errlen, "%s: error %u %s: %s", label, (unsigned)eb.code,
                    frame_error_name((enum frame_error)eb.code),
                    eb.text[0] ? eb.text : frame_error_text((enum frame_error)eb.code));
        return CLIENT_REPLY_ERROR;
    }
    if (f->h.type == want_type && f->h.request_id == want_id)
        return CLIENT_REPLY_OK;
    if (f->h.type == FRAME_BYE && f->h.request_id == 0) {
        errbuf_setf(err, errlen, "%s: the node is draining and ended the session (BYE)", label);
        return CLIENT_REPLY_DRAIN;
    }
    errbuf_setf(err, errlen,
                "%s: protocol error: expected %s for request %" PRIu64 ", got %s for request %" PRIu64,
                label, client_type_text(want_type), want_id, client_type_text(f->h.type),
                f->h.request_id);
    return CLIENT_REPLY_PROTOCOL;
}

void client_sha256_hex(const uint8_t sha[FRAME_SHA256_LEN], char out[2 * FRAME_SHA256_LEN + 1])
{
    hex_encode(out, sha, FRAME_SHA256_LEN);
}

enum client_reply client_check_ack(const struct frame *f, uint64_t want_id, uint64_t want_message,
                                   const uint8_t want_sha[FRAME_SHA256_LEN], const char *label,
                                   struct frame_ack *out, char *err, size_t errlen)
{
    enum client_reply r = client_check_reply(f, FRAME_ACK, want_id, label, err, errlen);
    if (r != CLIENT_REPLY_OK)
        return r;
    struct frame_ack ack;
    if (frame_parse_ack(f, &ack) != 0) {
        errbuf_setf(err, errlen, "%s: protocol error: malformed ACK (%" PRIu32 " bytes)", label,
                    f->h.length);
        return CLIENT_REPLY_PROTOCOL;
    }
    if (ack.message_id != want_message) {
        errbuf_setf(err, errlen,
                    "%s: protocol error: ACK for request %" PRIu64 " names message %" PRIu64
                    ", expected %" PRIu64,
                    label, want_id, ack.message_id, want_message);
        return CLIENT_REPLY_PROTOCOL;
    }
    if (memcmp(ack.sha256, want_sha, FRAME_SHA256_LEN) != 0) {
        char got[2 * FRAME_SHA256_LEN + 1], want[2 * FRAME_SHA256_LEN + 1];
        client_sha256_hex(ack.sha256, got);
        client_sha256_hex(want_sha, want);
        errbuf_setf(err, errlen,
                    "%s: message %" PRIu64 " arrived damaged: the node's SHA-256 is %s, ours %s",
                    label, want_message, got, want);
        return CLIENT_REPLY_PROTOCOL;
    }
    if (out)
        *out = ack;
    return CLIENT_REPLY_OK;
}

enum client_reply client_check_welcome(const struct frame *f, uint64_t want_id, const char *label,
                                       struct frame_welcome *out, char *err, size_t errlen)
{
    enum client_reply r = client_check_reply(f, FRAME_WELCOME, want_id, label, err, errlen);
    if (r != CLIENT_REPLY_OK)
        return r;
    struct frame_welcome w;
    if (frame_parse_welcome(f, &w) != 0) {
        errbuf_setf(err, errlen, "%s: protocol error: malformed WELCOME (%" PRIu32 " bytes)",
                    label, f->h.length);
        return CLIENT_REPLY_PROTOCOL;
    }
    /* The node answers with the highest version both speak (PROTOCOL.md 4.1). */
    if (w.version < FRAME_VERSION || w.version > FRAME_PROTOCOL_MAX) {
        errbuf_setf(err, errlen, "%s: protocol error: WELCOME offers version %u, we speak 1..%d",
                    label, (unsigned)w.version, FRAME_PROTOCOL_MAX);
        return CLIENT_REPLY_PROTOCOL;
    }
    if (out)
        *out = w;
    return CLIENT_REPLY_OK;
}

/* ------------------------------------------------------------ session I/O */

static void client_failf(struct client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Records an error that ends the session. */
static void client_failf(struct client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
    c->broken = true;
}

/* Fails at once when an earlier failure ended the session. */
static int client_usable(struct client *c)
{
    if (c->broken)
        return -1; /* c->err still says why */
    if (c->closed) {
        errbuf_setf(c->err, sizeof(c->err), "%s: the session is closed", c->label);
        return -1;
    }
    return 0;
}

/* A reply check that failed ends the session; a draining node also means
 * what was not answered was not handled. */
static int client_reply_failed(struct client *c, const struct frame *f, enum client_reply r)
{
    c->broken = true;
    if (r == CLIENT_REPLY_DRAIN)
        c->draining = true;
    if (r == CLIENT_REPLY_ERROR) {
        struct frame_error_body eb;
        if (frame_parse_error(f, &eb) == 0 && eb.code == FRAME_ERR_SHUTTING_DOWN)
            c->draining = true;
    }
    return -1;
}

static int client_sha256(struct client *c, const void *data, size_t len,
                         uint8_t out[FRAME_SHA256_LEN])
{
    unsigned int n = 0;
    if (EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) != 1 || n != FRAME_SHA256_LEN) {
        tls_ctx_error(c->err, sizeof(c->err), "SHA-256 failed");
        return -1;
    }
    return 0;
}

/* Waits until the socket is ready for what TLS asked for, or the deadline. */
static int client_wait(struct client *c, uint32_t events, uint64_t deadline, const char *what)
{
    short pev = 0;
    if (events & EPOLLIN)
        pev |= POLLIN;
    if (events & EPOLLOUT)
        pev |= POLLOUT;
    if (pev == 0)
        pev = POLLIN | POLLOUT; /* not expected; waiting on both cannot hang */
    for (;;) {
        uint64_t now = mono_now_ms();
        if (now >= deadline) {
            client_failf(c, "%s: timed out after %ld ms waiting for %s", c->label, c->timeout_ms,
                         what);
            c->timed_out = true;
            return -1;
        }
        uint64_t left = deadline - now;
        struct pollfd p = {.fd = tls_conn_fd(c->tls), .events = pev};
        int r = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            client_failf(c, "%s: poll: %s", c->label, strerror(errno));
            return -1;
        }
        /* POLLERR/POLLHUP also end the wait: the next TLS call reports them. */
        if (r > 0)
            return 0;
    }
}

/* What every blocking read or write does with a status other than TLS_DONE:
 * wait for the socket, or turn the failure into the session's error.
 * 0 to try again, -1 when the session is over. `doing` is "sending" or
 * "waiting for". */
static int client_io_wait(struct client *c, enum tls_status st, uint64_t deadline,
                          const char *doing, const char *what)
{
    switch (st) {
    case TLS_AGAIN:
        return client_wait(c, tls_conn_events(c->tls), deadline, what);
    case TLS_CLOSED:
        client_failf(c, "%s: connection lost while %s %s (%s)", c->label, doing, what,
                     tls_conn_error(c->tls));
        return -1;
    case TLS_DONE:
    case TLS_ERROR:
    default:
        client_failf(c, "%s: TLS %s", c->label, tls_conn_error(c->tls));
        return -1;
    }
}

/* Writes all of c->out. */
static int client_flush(struct client *c, uint64_t deadline, const char *what)
{
    while (buf_size(&c->out) > 0) {
        size_t n = 0;
        enum tls_status st = tls_conn_write(c->tls, buf_head(&c->out), buf_size(&c->out), &n);
        if (st == TLS_DONE)
            buf_consume(&c->out, n);
        else if (client_io_wait(c, st, deadline, "sending", what) != 0)
            return -1;
    }
    buf_clear(&c->out);
    return 0;
}

/* Reads one frame. *f borrows from c->in until the next call. */
static int client_read_frame(struct client *c, uint64_t deadline, const char *what, struct frame *f)
{
    if (c->in_consume) {
        buf_consume(&c->in, c->in_consume);
        c->in_consume = 0;
    }
    /* Replies never exceed their request, which the node limits to
     * max_payload; INFO_REPLY is not bounded by it, so allow the default. */
    uint32_t limit = c->welcome.max_payload > FRAME_DEFAULT_MAX_PAYLOAD
                         ? c->welcome.max_payload
                         : FRAME_DEFAULT_MAX_PAYLOAD;
    for (;;) {
        enum frame_error fe = FRAME_ERR_NONE;
        long n = frame_decode(buf_head(&c->in), buf_size(&c->in), limit, f, &fe);
        if (n > 0) {
            c->in_consume = (size_t)n;
            return 0;
        }
        if (n < 0) {
            client_failf(c, "%s: protocol error: bad frame from the node (%s: type 0x%02x, "
                         "length %" PRIu32 ") while waiting for %s",
                         c->label, frame_error_name(fe), f->h.type, f->h.length, what);
            return -1;
        }
        if (buf_reserve(&c->in, CLIENT_READ_CHUNK) != 0) {
            client_failf(c, "%s: out of memory", c->label);
            return -1;
        }
        size_t got = 0;
        enum tls_status st = tls_conn_read(c->tls, buf_tail(&c->in), CLIENT_READ_CHUNK, &got);
        if (st == TLS_DONE)
            buf_commit(&c->in, got);
        else if (client_io_wait(c, st, deadline, "waiting for", what) != 0)
            return -1;
    }
}

/* Connects fd to sa within the deadline; 0 or -1 with err, and *timed_out
 * set when no answer came in time (ours or the kernel's ETIMEDOUT). */
static int client_tcp_connect(int fd, const struct sockaddr_storage *sa, socklen_t salen,
                              uint64_t deadline, bool *timed_out, char *err, size_t errlen)
{
    *timed_out = false;
    if (connect(fd, (const struct sockaddr *)sa, salen) == 0)
        return 0;
    /* EINTR: the connection carries on in the background, as for EINPROGRESS. */
    if (errno != EINPROGRESS && errno != EINTR) {
        errbuf_setf(err, errlen, "%s", strerror(errno));
        return -1;
    }
    for (;;) {
        uint64_t now = mono_now_ms();
        if (now >= deadline) {
            errbuf_setf(err, errlen, "timed out");
            *timed_out = true;
            return -1;
        }
        uint64_t left = deadline - now;
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int r = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            errbuf_setf(err, errlen, "poll: %s", strerror(errno));
            return -1;
        }
        if (r > 0)
            break;
    }
    int soerr = 0;
    socklen_t len = sizeof(soerr);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0) {
        errbuf_setf(err, errlen, "getsockopt(SO_ERROR): %s", strerror(errno));
        return -1;
    }
    if (soerr != 0) {
        errbuf_setf(err, errlen, "%s", strerror(soerr));
        *timed_out = soerr == ETIMEDOUT;
        return -1;
    }
    return 0;
}

static struct client *client_connect_fail(struct client *c, enum client_fail why,
                                          enum client_fail *fail, char *err, size_t errlen)
{
    if (fail)
        *fail = why;
    errbuf_setf(err, errlen, "%s", c->err);
    client_free(c);
    return NULL;
}

/* True when the node refused the session with an alert about our
 * certificate (or its absence): the alert numbers a server sends about a
 * client certificate, taken as codes from the TLS layer, never from the
 * error text (which may quote what the node said). */
static bool client_cert_refused(const struct tls_conn *t)
{
    switch (tls_conn_peer_alert(t)) {
    case SSL_AD_CERTIFICATE_REQUIRED:
    case SSL_AD_UNKNOWN_CA:
    case SSL_AD_BAD_CERTIFICATE:
    case SSL_AD_UNSUPPORTED_CERTIFICATE:
    case SSL_AD_CERTIFICATE_EXPIRED:
    case SSL_AD_CERTIFICATE_REVOKED:
        return true;
    default:
        return false;
    }
}

struct client *client_connect(const struct client_options *o, const char *addr_text,
                              enum client_fail *fail, char *err, size_t errlen)
{
    if (fail)
        *fail = CLIENT_FAIL_SETUP;
    if (!o || !addr_text) {
        errbuf_setf(err, errlen, "client_connect: no options or address");
        return NULL;
    }
    if (o->timeout_ms <= 0) {
        errbuf_setf(err, errlen, "client timeout must be positive, not %ld ms", o->timeout_ms);
        return NULL;
    }
    const char *name = o->name ? o->name : "";
    size_t namelen = strlen(name);
    if (namelen == 0 || namelen > FRAME_NAME_MAX) {
        errbuf_setf(err, errlen, "client name must be 1..%d bytes, not %zu", FRAME_NAME_MAX,
                    namelen);
        return NULL;
    }
    for (size_t i = 0; i < namelen; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (ch < 0x20 || ch == 0x7f) {
            errbuf_setf(err, errlen, "client name holds a control character");
            return NULL;
        }
    }

    struct client *c = calloc(1, sizeof(*c));
    if (!c) {
        errbuf_setf(err, errlen, "out of memory");
        return NULL;
    }
    buf_init(&c->in);
    buf_init(&c->out);
    c->next_request_id = 1;
    c->timeout_ms = o->timeout_ms;
    snprintf(c->addr, sizeof(c->addr), "%s", addr_text);
    if (o->expect_id && *o->expect_id)
        snprintf(c->label, sizeof(c->label), "node %s (%s)", o->expect_id, c->addr);
    else
        snprintf(c->label, sizeof(c->label), "node %s", c->addr);
    uint64_t deadline = mono_now_ms() + (uint64_t)o->timeout_ms;

    char e[512];
    struct addr a;
    if (addr_parse(addr_text, false, &a, e, sizeof(e)) != 0) {
        errbuf_setf(c->err, sizeof(c->err), "%s: bad address: %s", c->label, e);
        return client_connect_fail(c, CLIENT_FAIL_SETUP, fail, err, errlen);
    }

    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    if (addr_resolve(&a, SOCK_STREAM, &ss, &sslen, e, sizeof(e)) != 0) {
        /* Our resolver's failure, not the node's: another node may still
         * resolve, but nobody should be told this one is unreachable. */
        errbuf_setf(c->err, sizeof(c->err), "%s: %s", c->label, e);
        return client_connect_fail(c, CLIENT_FAIL_RESOLVE, fail, err, errlen);
    }

    SSL_CTX *ctx = tls_ctx_client_new(o->ca_file, o->verify, e, sizeof(e));
    if (!ctx) {
        errbuf_setf(c->err, sizeof(c->err), "%s", e);
        return client_connect_fail(c, CLIENT_FAIL_SETUP, fail, err, errlen);
    }
    if ((o->cert_file && *o->cert_file) || (o->key_file && *o->key_file)) {
        if (tls_ctx_use_client_cert(ctx, o->cert_file, o->key_file, e, sizeof(e)) != 0) {
            errbuf_setf(c->err, sizeof(c->err), "%s", e);
            SSL_CTX_free(ctx);
            return client_connect_fail(c, CLIENT_FAIL_SETUP, fail, err, errlen);
        }
    }

    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        errbuf_setf(c->err, sizeof(c->err), "%s: socket: %s", c->label, strerror(errno));
        SSL_CTX_free(ctx);
        return client_connect_fail(c, CLIENT_FAIL_SETUP, fail, err, errlen);
    }
    /* Requests are small and answered one by one: do not let Nagle hold
     * them back (it would add tens of ms to every PING). */
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
        errbuf_setf(c->err, sizeof(c->err), "%s: setsockopt(TCP_NODELAY): %s", c->label,
                 strerror(errno));
        close(fd);
        SSL_CTX_free(ctx);
        return client_connect_fail(c, CLIENT_FAIL_SETUP, fail, err, errlen);
    }
    bool connect_timed_out = false;
    if (client_tcp_connect(fd, &ss, sslen, deadline, &connect_timed_out, e, sizeof(e)) != 0) {
        errbuf_setf(c->err, sizeof(c->err), "%s: connect: %s", c->label, e);
        close(fd);
        SSL_CTX_free(ctx);
        return client_connect_fail(c, connect_timed_out ? CLIENT_FAIL_TIMEOUT
                                                        : CLIENT_FAIL_CONNECT,
                                   fail, err, errlen);
    }

    /* The connection holds its own reference to ctx. */
    c->tls = tls_conn_new_client(ctx, fd, a.host, e, sizeof(e));
    SSL_CTX_free(ctx);
    if (!c->tls) {
        errbuf_setf(c->err, sizeof(c->err), "%s: %s", c->label, e);
        return client_connect_fail(c, CLIENT_FAIL_SETUP, fail, err, errlen);
    }

    for (;;) {
        enum tls_status st = tls_conn_handshake(c->tls);
        if (st == TLS_DONE)
            break;
        if (st == TLS_AGAIN) {
            if (client_wait(c, tls_conn_events(c->tls), deadline, "the TLS handshake") != 0)
                return client_connect_fail(c, c->timed_out ? CLIENT_FAIL_TIMEOUT
                                                           : CLIENT_FAIL_TLS,
                                           fail, err, errlen);
            continue;
        }
        const char *te = tls_conn_error(c->tls);
        if (client_cert_refused(c->tls)) {
            /* The node wants a client certificate from its CA (mTLS): every
             * node of the cluster will say the same, so retrying elsewhere
             * only adds failed handshakes on them. */
            errbuf_setf(c->err, sizeof(c->err),
                        "%s: TLS %s: the node requires a client certificate from its CA "
                        "(--cert/--key)", c->label, te);
            return client_connect_fail(c, CLIENT_FAIL_SETUP, fail, err, errlen);
        }
        errbuf_setf(c->err, sizeof(c->err), "%s: TLS %s", c->label, te);
        return client_connect_fail(c, CLIENT_FAIL_TLS, fail, err, errlen);
    }
    if (o->expect_cert_sha256 && *o->expect_cert_sha256) {
        /* The CA vouches for every node it signed; the registry names the
         * one this entry belongs to. */
        char got[65];
        if (tls_conn_peer_sha256(c->tls, got) != 0) {
            errbuf_setf(c->err, sizeof(c->err), "%s: no peer certificate to check", c->label);
            return client_connect_fail(c, CLIENT_FAIL_TLS, fail, err, errlen);
        }
        if (strcmp(got, o->expect_cert_sha256) != 0) {
            errbuf_setf(c->err, sizeof(c->err),
                        "%s: certificate sha256 %.64s is not the %.64s the balancer registered",
                        c->label, got, o->expect_cert_sha256);
            return client_connect_fail(c, CLIENT_FAIL_TLS, fail, err, errlen);
        }
    }

    uint64_t rid = c->next_request_id++;
    bool v2 = o->producer && o->producer[0];
    if (frame_append_hello_producer(&c->out, rid, v2 ? FRAME_PROTOCOL_MAX : FRAME_VERSION, name,
                                    v2 ? o->producer : NULL) != 0) {
        errbuf_setf(c->err, sizeof(c->err), "%s: cannot encode HELLO", c->label);
        return client_connect_fail(c, CLIENT_FAIL_SETUP, fail, err, errlen);
    }
    struct frame f;
    if (client_flush(c, deadline, "HELLO") != 0 ||
        client_read_frame(c, deadline, "WELCOME", &f) != 0) {
        /* TLS 1.3: the node checks our certificate after our side of the
         * handshake is done, so its alert comes with the first read. */
        if (!c->timed_out && client_cert_refused(c->tls)) {
            size_t used = strlen(c->err);
            errbuf_setf(c->err + used, sizeof(c->err) - used,
                        ": the node requires a client certificate from its CA (--cert/--key)");
            return client_connect_fail(c, CLIENT_FAIL_SETUP, fail, err, errlen);
        }
        return client_connect_fail(c, CLIENT_FAIL_SESSION, fail, err, errlen);
    }
    enum client_reply r = client_check_welcome(&f, rid, c->label, &c->welcome, c->err,
                                               sizeof(c->err));
    if (r != CLIENT_REPLY_OK) {
        client_reply_failed(c, &f, r);
        return client_connect_fail(c, CLIENT_FAIL_SESSION, fail, err, errlen);
    }
    if (o->expect_id && *o->expect_id && strcmp(c->welcome.node_id, o->expect_id) != 0) {
        /* A stale registry entry (the address now belongs to another node)
         * or a node posing as another: either way not the node we were
         * sent to, and its id must not steer our exclusions. */
        errbuf_setf(c->err, sizeof(c->err), "%s: the node says it is \"%s\"", c->label,
                    c->welcome.node_id);
        return client_connect_fail(c, CLIENT_FAIL_SESSION, fail, err, errlen);
    }
    snprintf(c->label, sizeof(c->label), "node %s", c->welcome.node_id);
    if (fail)
        *fail = CLIENT_FAIL_NONE;
    return c;
}

void client_free(struct client *c)
{
    if (!c)
        return;
    if (c->tls) {
        /* close_notify tells the node we meant to leave; after a failure
         * the stream may be mid-frame, so just drop it. */
        if (!c->broken && !c->closed)
            tls_conn_shutdown(c->tls);
        tls_conn_free(c->tls);
    }
    buf_release(&c->in);
    buf_release(&c->out);
    free(c);
}

const char *client_node_id(const struct client *c) { return c->welcome.node_id; }
const char *client_addr(const struct client *c) { return c->addr; }
uint64_t client_session_id(const struct client *c) { return c->welcome.session_id; }
uint32_t client_max_payload(const struct client *c) { return c->welcome.max_payload; }
uint32_t client_idle_timeout_ms(const struct client *c) { return c->welcome.idle_timeout_ms; }
const char *client_tls_protocol(const struct client *c) { return tls_conn_protocol(c->tls); }
const char *client_error(const struct client *c) { return c->err; }
bool client_draining(const struct client *c) { return c->draining; }
size_t client_in_flight(const struct client *c) { return c->pending_count; }

/* Common start of a synchronous request. */
static int client_sync_ready(struct client *c, const char *what)
{
    if (client_usable(c) != 0)
        return -1;
    if (c->pending_count) {
        errbuf_setf(c->err, sizeof(c->err), "%s: cannot send %s with %zu SENDs in flight",
                 c->label, what, c->pending_count);
        return -1;
    }
    return 0;
}

/* Checks a request payload against the node's limit (a local error: the
 * session stays usable). */
static int client_payload_fits(struct client *c, size_t len, const char *what)
{
    if (len > c->welcome.max_payload) {
        errbuf_setf(c->err, sizeof(c->err),
                 "%s: %s of %zu bytes is above the node's limit of %" PRIu32 " bytes",
                 c->label, what, len, c->welcome.max_payload);
        return -1;
    }
    return 0;
}

/* Sends one encoded request and reads the frame that answers it. */
static int client_roundtrip(struct client *c, uint64_t rid, uint8_t reply_type, const char *what,
                            struct frame *f)
{
    uint64_t deadline = mono_now_ms() + (uint64_t)c->timeout_ms;
    if (client_flush(c, deadline, what) != 0)
        return -1;
    const char *reply_name = frame_type_name(reply_type);
    if (client_read_frame(c, deadline, reply_name ? reply_name : "a reply", f) != 0)
        return -1;
    enum client_reply r = client_check_reply(f, reply_type, rid, c->label, c->err, sizeof(c->err));
    if (r != CLIENT_REPLY_OK)
        return client_reply_failed(c, f, r);
    return 0;
}

static uint64_t client_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int client_ping(struct client *c, double *rtt_ms)
{
    if (client_sync_ready(c, "PING") != 0)
        return -1;
    uint64_t t0 = client_now_ns();
    uint8_t stamp[8];
    for (int i = 0; i < 8; i++)
        stamp[i] = (uint8_t)(t0 >> (56 - 8 * i));
    uint64_t rid = c->next_request_id++;
    if (frame_append(&c->out, FRAME_PING, rid, stamp, sizeof(stamp)) != 0) {
        client_failf(c, "%s: out of memory", c->label);
        return -1;
    }
    struct frame f;
    if (client_roundtrip(c, rid, FRAME_PONG, "PING", &f) != 0)
        return -1;
    uint64_t t1 = client_now_ns();
    if (f.h.length != sizeof(stamp) || memcmp(f.payload, stamp, sizeof(stamp)) != 0) {
        client_failf(c, "%s: protocol error: PONG does not carry the PING's payload", c->label);
        return -1;
    }
    if (rtt_ms)
        *rtt_ms = (double)(t1 - t0) / 1e6;
    return 0;
}

int client_echo(struct client *c, const void *data, size_t len)
{
    if (client_sync_ready(c, "ECHO") != 0 || client_payload_fits(c, len, "ECHO") != 0)
        return -1;
    uint64_t rid = c->next_request_id++;
    if (frame_append(&c->out, FRAME_ECHO, rid, data, len) != 0) {
        client_failf(c, "%s: cannot encode ECHO of %zu bytes", c->label, len);
        return -1;
    }
    struct frame f;
    if (client_roundtrip(c, rid, FRAME_ECHO_REPLY, "ECHO", &f) != 0)
        return -1;
    if (f.h.length != len || (len && memcmp(f.payload, data, len) != 0)) {
        client_failf(c, "%s: protocol error: ECHO_REPLY differs from the ECHO (%" PRIu32
                     " bytes back, %zu sent)", c->label, f.h.length, len);
        return -1;
    }
    return 0;
}

int client_info(struct client *c, char **json)
{
    *json = NULL;
    if (client_sync_ready(c, "INFO") != 0)
        return -1;
    uint64_t rid = c->next_request_id++;
    if (frame_append(&c->out, FRAME_INFO, rid, NULL, 0) != 0) {
        client_failf(c, "%s: out of memory", c->label);
        return -1;
    }
    struct frame f;
    if (client_roundtrip(c, rid, FRAME_INFO_REPLY, "INFO", &f) != 0)
        return -1;
    if (f.h.length && memchr(f.payload, '\0', f.h.length)) {
        client_failf(c, "%s: protocol error: INFO_REPLY holds a NUL byte", c->label);
        return -1;
    }
    char *s = malloc((size_t)f.h.length + 1);
    if (!s) {
        client_failf(c, "%s: out of memory", c->label);
        return -1;
    }
    if (f.h.length)
        memcpy(s, f.payload, f.h.length);
    s[f.h.length] = '\0';
    *json = s;
    return 0;
}

int client_send_start(struct client *c, uint64_t message_id, const void *data, size_t len)
{
    if (client_usable(c) != 0)
        return -1;
    if (c->pending_count >= CLIENT_WINDOW_MAX) {
        errbuf_setf(c->err, sizeof(c->err), "%s: %d SENDs already in flight", c->label,
                 CLIENT_WINDOW_MAX);
        return -1;
    }
    if (c->welcome.max_payload < 8 || len > c->welcome.max_payload - 8) {
        errbuf_setf(c->err, sizeof(c->err),
                 "%s: message %" PRIu64 " of %zu bytes is above the node's limit of %" PRIu32
                 " bytes per message",
                 c->label, message_id, len,
                 c->welcome.max_payload < 8 ? 0 : c->welcome.max_payload - 8);
        return -1;
    }
    struct client_pending *p =
        &c->pending[(c->pending_head + c->pending_count) % CLIENT_WINDOW_MAX];
    if (client_sha256(c, data, len, p->sha256) != 0)
        return -1;
    p->request_id = c->next_request_id++;
    p->message_id = message_id;
    if (frame_append_send(&c->out, p->request_id, message_id, data, len) != 0) {
        client_failf(c, "%s: cannot encode SEND of %zu bytes", c->label, len);
        return -1;
    }
    c->pending_count++;
    if (buf_size(&c->out) >= CLIENT_FLUSH_AT) {
        uint64_t deadline = mono_now_ms() + (uint64_t)c->timeout_ms;
        if (client_flush(c, deadline, "SEND") != 0)
            return -1;
    }
    return 0;
}

int client_send_finish(struct client *c, struct frame_ack *ack)
{
    if (client_usable(c) != 0)
        return -1;
    if (c->pending_count == 0) {
        errbuf_setf(c->err, sizeof(c->err), "%s: no SEND in flight", c->label);
        return -1;
    }
    const struct client_pending *p = &c->pending[c->pending_head];
    uint64_t deadline = mono_now_ms() + (uint64_t)c->timeout_ms;
    char what[64];
    snprintf(what, sizeof(what), "the ACK of message %" PRIu64, p->message_id);
    struct frame f;
    if (client_flush(c, deadline, "SEND") != 0 || client_read_frame(c, deadline, what, &f) != 0)
        return -1;
    enum client_reply r = client_check_ack(&f, p->request_id, p->message_id, p->sha256, c->label,
                                           ack, c->err, sizeof(c->err));
    if (r != CLIENT_REPLY_OK)
        return client_reply_failed(c, &f, r);
    c->pending_head = (c->pending_head + 1) % CLIENT_WINDOW_MAX;
    c->pending_count--;
    return 0;
}

int client_send(struct client *c, uint64_t message_id, const void *data, size_t len,
                struct frame_ack *ack)
{
    if (client_sync_ready(c, "SEND") != 0)
        return -1;
    if (client_send_start(c, message_id, data, len) != 0)
        return -1;
    return client_send_finish(c, ack);
}

int client_bye(struct client *c)
{
    if (client_sync_ready(c, "BYE") != 0)
        return -1;
    uint64_t rid = c->next_request_id++;
    if (frame_append(&c->out, FRAME_BYE, rid, NULL, 0) != 0) {
        client_failf(c, "%s: out of memory", c->label);
        return -1;
    }
    struct frame f;
    uint64_t deadline = mono_now_ms() + (uint64_t)c->timeout_ms;
    if (client_flush(c, deadline, "BYE") != 0 || client_read_frame(c, deadline, "BYE", &f) != 0)
        return -1;
    enum client_reply r = client_check_reply(&f, FRAME_BYE, rid, c->label, c->err, sizeof(c->err));
    if (r == CLIENT_REPLY_DRAIN) {
        /* The node was leaving anyway: the session ended as asked. */
        c->draining = true;
        c->err[0] = '\0';
    } else if (r != CLIENT_REPLY_OK) {
        return client_reply_failed(c, &f, r);
    }
    tls_conn_shutdown(c->tls);
    c->closed = true;
    return 0;
}
