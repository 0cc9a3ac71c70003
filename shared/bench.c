/* bench: the load generator. Each worker thread owns an epoll loop and a
 * slice of the connections; a connection is a small state machine (TCP
 * connect → TLS handshake → HELLO/WELCOME → requests) driven by readiness
 * events, with deadlines checked by a periodic sweep. Replies are checked
 * with the client module's pure reply checks. */
#include "bench.h"
#include "errbuf.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "addr.h"
#include "buf.h"
#include "client.h"
#include "frame.h"
#include "tls_conn.h"
#include "tls_ctx.h"

#define BENCH_READ_CHUNK 16384
#define BENCH_SWEEP_NS 20000000ull      /* deadline sweep every 20 ms */
#define BENCH_RETRY_NS 20000000ull      /* a failed connection is retried after 20 ms */
#define BENCH_EPOLL_BATCH 256
#define BENCH_ERR_MAX 512

static const char *const bench_mode_names[] = {
    [BENCH_HANDSHAKE] = "handshake",
    [BENCH_ECHO] = "echo",
    [BENCH_SEND] = "send",
};
static const char *const bench_exchange_names[] = {
    [BENCH_EXCHANGE_HELLO] = "hello",
    [BENCH_EXCHANGE_HTTP] = "http",
    [BENCH_EXCHANGE_NONE] = "none",
};
static const char *const bench_err_names[] = {
    [BENCH_ERR_CONNECT] = "connect",
    [BENCH_ERR_TLS] = "tls",
    [BENCH_ERR_CLOSED] = "closed",
    [BENCH_ERR_PROTOCOL] = "protocol",
    [BENCH_ERR_TIMEOUT] = "timeout",
};

const char *bench_mode_name(enum bench_mode m)
{
    return (unsigned)m < sizeof(bench_mode_names) / sizeof(bench_mode_names[0])
               ? bench_mode_names[m]
               : NULL;
}

int bench_mode_parse(const char *text, enum bench_mode *out)
{
    for (unsigned i = 0; i < sizeof(bench_mode_names) / sizeof(bench_mode_names[0]); i++)
        if (text && strcmp(text, bench_mode_names[i]) == 0) {
            *out = (enum bench_mode)i;
            return 0;
        }
    return -1;
}

const char *bench_exchange_name(enum bench_exchange x)
{
    return (unsigned)x < sizeof(bench_exchange_names) / sizeof(bench_exchange_names[0])
               ? bench_exchange_names[x]
               : NULL;
}

int bench_exchange_parse(const char *text, enum bench_exchange *out)
{
    for (unsigned i = 0; i < sizeof(bench_exchange_names) / sizeof(bench_exchange_names[0]); i++)
        if (text && strcmp(text, bench_exchange_names[i]) == 0) {
            *out = (enum bench_exchange)i;
            return 0;
        }
    return -1;
}

const char *bench_err_name(enum bench_err e)
{
    return (unsigned)e < BENCH_ERR_COUNT ? bench_err_names[e] : "unknown";
}

static uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------ state */

enum bench_conn_state {
    BC_IDLE,       /* not connected; (re)connects at retry_at */
    BC_CONNECTING, /* TCP connect in progress */
    BC_HANDSHAKE,  /* TLS handshake in progress */
    BC_WELCOME,    /* HELLO sent, waiting for WELCOME */
    BC_HTTP,       /* GET sent, reading the answer until the server closes */
    BC_RUNNING,    /* session up, requests in flight */
};

struct bench_worker;

struct bench_conn {
    struct bench_worker *w;
    enum bench_conn_state st;
    int fd;               /* socket while connecting; then owned by tls */
    struct tls_conn *tls; /* NULL until the TCP connection is up */
    struct buf in, out;   /* undecoded input, unsent requests */
    uint32_t want_read;   /* epoll events the last read's TLS_AGAIN waits for */
    uint32_t want_write;  /* same for the last write */
    uint32_t registered;  /* events now in the epoll set; 0 = not in it */
    uint64_t started_ns;  /* connect start (handshake mode latency) */
    uint64_t deadline_ns; /* connect, handshake, WELCOME or HTTP answer due */
    uint64_t retry_at_ns; /* BC_IDLE: when to connect again */
    uint64_t next_rid;    /* next request id; 1 is the HELLO */
    uint64_t oldest_rid;  /* the request the next reply answers */
    unsigned inflight;    /* requests sent without a reply */
    uint32_t max_payload; /* from WELCOME */
    uint64_t *sent_ns;    /* ring, by request id % pipeline: when each was queued */
    bool counted_open;    /* counted in the worker's open connections */
};

/* Shared between the caller's thread and the workers. */
struct bench_shared {
    const struct bench_options *o;
    struct sockaddr_storage sa; /* the resolved address */
    socklen_t salen;
    char host[ADDR_HOST_MAX + 1]; /* for certificate checks and the Host header */
    SSL_CTX *ctx;                 /* client context, shared by every connection */
    uint64_t start_ns, end_ns;    /* measurement window */
    uint64_t hard_end_ns;         /* end_ns + timeout: in-flight requests give up */
    atomic_bool abort;            /* stop now: setup failure or nothing works */
    uint8_t *payload;             /* size bytes sent by every ECHO and SEND */
    uint8_t sha[FRAME_SHA256_LEN]; /* its SHA-256, what every ACK must say */
    char http_req[512];           /* the GET request for BENCH_EXCHANGE_HTTP */
};

struct bench_worker {
    struct bench_shared *sh;
    pthread_t thread;
    bool started;
    int ep;                         /* epoll descriptor */
    struct bench_conn *conns;
    unsigned nconns;
    struct bench_hist *hist;        /* latencies, ns */
    _Atomic uint64_t requests;      /* read by the progress line */
    _Atomic uint64_t errors;
    _Atomic unsigned open;          /* connections with TLS up */
    _Atomic bool done;
    uint64_t bytes;
    uint64_t errs[BENCH_ERR_COUNT];
    bool stopping;                  /* past end_ns: no new requests */
    char fatal[BENCH_ERR_MAX];      /* a setup failure that ends the run */
    char first_error[BENCH_ERR_MAX];
    char tls_protocol[32];
    char tls_cipher[64];
};

/* ------------------------------------------------------------ connections */

static void bench_conn_set_events(struct bench_conn *c, uint32_t ev)
{
    int fd = c->tls ? tls_conn_fd(c->tls) : c->fd;
    if (ev == 0)
        ev = EPOLLIN; /* always hear about errors and hang-ups */
    if (ev == c->registered)
        return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    int op = c->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(c->w->ep, op, fd, &e) != 0) {
        /* Only resource exhaustion gets here; the sweep's deadline ends the connection. */
        snprintf(c->w->fatal, sizeof(c->w->fatal), "epoll_ctl: %s", strerror(errno));
        atomic_store(&c->w->sh->abort, true);
        return;
    }
    c->registered = ev;
}

/* Closes the connection; closing the descriptor also drops it from epoll. */
static void bench_conn_close(struct bench_conn *c, bool polite)
{
    if (c->tls) {
        if (polite)
            tls_conn_shutdown(c->tls);
        tls_conn_free(c->tls);
        c->tls = NULL;
    } else if (c->fd >= 0) {
        close(c->fd);
    }
    if (c->counted_open) {
        atomic_fetch_sub_explicit(&c->w->open, 1, memory_order_relaxed);
        c->counted_open = false;
    }
    c->fd = -1;
    c->registered = 0;
    c->st = BC_IDLE;
    c->inflight = 0;
    buf_clear(&c->in);
    buf_clear(&c->out);
}

static void bench_conn_fail(struct bench_conn *c, enum bench_err e, uint64_t now, const char *fmt,
                            ...) __attribute__((format(printf, 4, 5)));

/* Counts a failure, closes, and schedules a new connection. */
static void bench_conn_fail(struct bench_conn *c, enum bench_err e, uint64_t now, const char *fmt,
                            ...)
{
    struct bench_worker *w = c->w;
    w->errs[e]++;
    atomic_fetch_add_explicit(&w->errors, 1, memory_order_relaxed);
    if (!w->first_error[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->first_error, sizeof(w->first_error), fmt, ap);
        va_end(ap);
    }
    bench_conn_close(c, false);
    c->retry_at_ns = now + BENCH_RETRY_NS;
}

static void bench_conn_start(struct bench_conn *c, uint64_t now)
{
    struct bench_shared *sh = c->w->sh;
    c->started_ns = now;
    c->deadline_ns = now + (uint64_t)sh->o->timeout_ms * 1000000u;
    c->next_rid = 1;
    c->inflight = 0;
    c->want_read = c->want_write = 0;
    c->fd = socket(sh->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        bench_conn_fail(c, BENCH_ERR_CONNECT, now, "socket: %s", strerror(errno));
        return;
    }
    int one = 1;
    if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
        bench_conn_fail(c, BENCH_ERR_CONNECT, now, "setsockopt(TCP_NODELAY): %s", strerror(errno));
        return;
    }
    if (connect(c->fd, (const struct sockaddr *)&sh->sa, sh->salen) != 0 &&
        errno != EINPROGRESS && errno != EINTR) {
        bench_conn_fail(c, BENCH_ERR_CONNECT, now, "connect %s: %s", sh->o->addr,
                        strerror(errno));
        return;
    }
    c->st = BC_CONNECTING;
    bench_conn_set_events(c, EPOLLOUT);
}

/* One request finished at now (handshake mode: the whole connection). */
static void bench_conn_count(struct bench_conn *c, uint64_t began, uint64_t now)
{
    struct bench_worker *w = c->w;
    bench_hist_record(w->hist, now - began);
    atomic_fetch_add_explicit(&w->requests, 1, memory_order_relaxed);
}

/* Handshake mode: the connection did its one exchange. */
static void bench_conn_done(struct bench_conn *c, uint64_t now, bool polite)
{
    bench_conn_count(c, c->started_ns, now);
    bench_conn_close(c, polite);
    c->retry_at_ns = now; /* a new one at once, unless stopping */
    if (!c->w->stopping)
        bench_conn_start(c, now);
}

/* Queues requests until pipeline are in flight (not when stopping). */
static int bench_conn_fill(struct bench_conn *c, uint64_t now)
{
    struct bench_worker *w = c->w;
    struct bench_shared *sh = w->sh;
    const struct bench_options *o = sh->o;
    while (!w->stopping && c->inflight < o->pipeline) {
        uint64_t rid = c->next_rid++;
        int r = o->mode == BENCH_ECHO
                    ? frame_append(&c->out, FRAME_ECHO, rid, sh->payload, o->size)
                    : frame_append_send(&c->out, rid, rid, sh->payload, o->size);
        if (r != 0)
            return -1;
        c->sent_ns[rid % o->pipeline] = now;
        c->inflight++;
    }
    return 0;
}

/* Checks one reply; 0, or -1 after failing the connection. */
static int bench_conn_reply(struct bench_conn *c, const struct frame *f, uint64_t now)
{
    struct bench_worker *w = c->w;
    struct bench_shared *sh = w->sh;
    const struct bench_options *o = sh->o;
    char label[300], err[BENCH_ERR_MAX];
    snprintf(label, sizeof(label), "node %s", o->addr);

    if (c->st == BC_WELCOME) {
        struct frame_welcome wel;
        enum client_reply r = client_check_welcome(f, 1, label, &wel, err, sizeof(err));
        if (r != CLIENT_REPLY_OK) {
            bench_conn_fail(c, BENCH_ERR_PROTOCOL, now, "%s", err);
            return -1;
        }
        if (o->mode == BENCH_HANDSHAKE) {
            bench_conn_done(c, now, true);
            return -1; /* the connection is gone: stop reading it */
        }
        size_t need = o->mode == BENCH_SEND ? o->size + 8 : o->size;
        if (need > wel.max_payload) {
            snprintf(w->fatal, sizeof(w->fatal),
                     "%s: --size %zu is above the node's limit of %" PRIu32 " bytes%s", label,
                     o->size, wel.max_payload, o->mode == BENCH_SEND ? " (with 8 for the id)" : "");
            atomic_store(&sh->abort, true);
            bench_conn_close(c, true);
            return -1;
        }
        c->max_payload = wel.max_payload;
        c->st = BC_RUNNING;
        c->oldest_rid = c->next_rid;
        if (bench_conn_fill(c, now) != 0) {
            bench_conn_fail(c, BENCH_ERR_PROTOCOL, now, "out of memory");
            return -1;
        }
        return 0;
    }

    /* BC_RUNNING: replies come in request order. */
    if (c->inflight == 0) {
        bench_conn_fail(c, BENCH_ERR_PROTOCOL, now, "%s: a %s frame answers no request", label,
                        frame_type_name(f->h.type) ? frame_type_name(f->h.type) : "unknown");
        return -1;
    }
    uint64_t rid = c->oldest_rid;
    enum client_reply r;
    if (o->mode == BENCH_SEND) {
        r = client_check_ack(f, rid, rid, sh->sha, label, NULL, err, sizeof(err));
    } else {
        r = client_check_reply(f, FRAME_ECHO_REPLY, rid, label, err, sizeof(err));
        if (r == CLIENT_REPLY_OK &&
            (f->h.length != o->size || (o->size && memcmp(f->payload, sh->payload, o->size) != 0))) {
            snprintf(err, sizeof(err), "%s: ECHO_REPLY for request %" PRIu64
                     " differs from the ECHO (%" PRIu32 " bytes back, %zu sent)",
                     label, rid, f->h.length, o->size);
            r = CLIENT_REPLY_PROTOCOL;
        }
    }
    if (r != CLIENT_REPLY_OK) {
        bench_conn_fail(c, r == CLIENT_REPLY_DRAIN ? BENCH_ERR_CLOSED : BENCH_ERR_PROTOCOL, now,
                        "%s", err);
        return -1;
    }
    bench_conn_count(c, c->sent_ns[rid % o->pipeline], now);
    w->bytes += o->size;
    c->oldest_rid++;
    c->inflight--;
    if (bench_conn_fill(c, now) != 0) {
        bench_conn_fail(c, BENCH_ERR_PROTOCOL, now, "out of memory");
        return -1;
    }
    return 0;
}

/* Writes what is queued. 0, or -1 after failing the connection. */
static int bench_conn_flush(struct bench_conn *c, uint64_t now)
{
    c->want_write = 0;
    while (buf_size(&c->out) > 0) {
        size_t n = 0;
        enum tls_status st = tls_conn_write(c->tls, buf_head(&c->out), buf_size(&c->out), &n);
        if (st == TLS_DONE) {
            buf_consume(&c->out, n);
            continue;
        }
        if (st == TLS_AGAIN) {
            c->want_write = tls_conn_events(c->tls);
            return 0;
        }
        bench_conn_fail(c, st == TLS_CLOSED ? BENCH_ERR_CLOSED : BENCH_ERR_TLS, now,
                        "node %s: write: %s", c->w->sh->o->addr, tls_conn_error(c->tls));
        return -1;
    }
    buf_clear(&c->out);
    return 0;
}

/* Decodes and handles every complete frame in c->in. 0, or -1 when the
 * connection was closed meanwhile. */
static int bench_conn_frames(struct bench_conn *c, uint64_t now)
{
    for (;;) {
        uint32_t limit = c->max_payload > FRAME_DEFAULT_MAX_PAYLOAD ? c->max_payload
                                                                    : FRAME_DEFAULT_MAX_PAYLOAD;
        struct frame f;
        enum frame_error fe = FRAME_ERR_NONE;
        long n = frame_decode(buf_head(&c->in), buf_size(&c->in), limit, &f, &fe);
        if (n == 0)
            return 0;
        if (n < 0) {
            bench_conn_fail(c, BENCH_ERR_PROTOCOL, now, "node %s: bad frame (%s, type 0x%02x)",
                            c->w->sh->o->addr, frame_error_name(fe), f.h.type);
            return -1;
        }
        if (bench_conn_reply(c, &f, now) != 0)
            return -1;
        buf_consume(&c->in, (size_t)n);
    }
}

/* Reads until OpenSSL and the socket are empty. 0, or -1 when closed. */
static int bench_conn_read(struct bench_conn *c, uint64_t now)
{
    const char *addr = c->w->sh->o->addr;
    for (;;) {
        if (buf_reserve(&c->in, BENCH_READ_CHUNK) != 0) {
            bench_conn_fail(c, BENCH_ERR_PROTOCOL, now, "out of memory");
            return -1;
        }
        size_t got = 0;
        enum tls_status st = tls_conn_read(c->tls, buf_tail(&c->in), BENCH_READ_CHUNK, &got);
        if (st == TLS_DONE) {
            buf_commit(&c->in, got);
            if (c->st == BC_HTTP) {
                /* Keep only enough to check the status line. */
                if (buf_size(&c->in) > 64 * 1024)
                    c->in.len = c->in.off + 64 * 1024;
                continue;
            }
            if (bench_conn_frames(c, now) != 0)
                return -1;
            continue;
        }
        if (st == TLS_AGAIN) {
            c->want_read = tls_conn_events(c->tls);
            return 0;
        }
        if (c->st == BC_HTTP && buf_size(&c->in) >= 12) {
            /* Connection: close: the answer ends with the connection. */
            const char *p = (const char *)buf_head(&c->in);
            if (memcmp(p, "HTTP/1.", 7) == 0 && p[9] == '2') {
                bench_conn_done(c, now, false);
                return -1;
            }
            char line[64];
            size_t k = 0;
            while (k < sizeof(line) - 1 && k < buf_size(&c->in) && p[k] >= 0x20 && p[k] < 0x7f) {
                line[k] = p[k];
                k++;
            }
            line[k] = '\0';
            bench_conn_fail(c, BENCH_ERR_PROTOCOL, now, "%s: HTTP answer \"%s\"", addr, line);
            return -1;
        }
        bench_conn_fail(c, st == TLS_CLOSED ? BENCH_ERR_CLOSED : BENCH_ERR_TLS, now,
                        "node %s: read: %s", addr, tls_conn_error(c->tls));
        return -1;
    }
}

/* The handshake finished: record what was negotiated and start the exchange. */
static int bench_conn_established(struct bench_conn *c, uint64_t now)
{
    struct bench_worker *w = c->w;
    struct bench_shared *sh = w->sh;
    atomic_fetch_add_explicit(&w->open, 1, memory_order_relaxed);
    c->counted_open = true;
    if (!w->tls_protocol[0]) {
        snprintf(w->tls_protocol, sizeof(w->tls_protocol), "%s", tls_conn_protocol(c->tls));
        const char *cipher = tls_conn_cipher(c->tls);
        snprintf(w->tls_cipher, sizeof(w->tls_cipher), "%s", cipher ? cipher : "");
    }
    if (sh->o->mode == BENCH_HANDSHAKE && sh->o->exchange == BENCH_EXCHANGE_NONE) {
        bench_conn_done(c, now, true);
        return -1;
    }
    int r;
    if (sh->o->mode == BENCH_HANDSHAKE && sh->o->exchange == BENCH_EXCHANGE_HTTP) {
        r = buf_append(&c->out, sh->http_req, strlen(sh->http_req));
        c->st = BC_HTTP;
    } else {
        r = frame_append_hello(&c->out, c->next_rid++, FRAME_VERSION, sh->o->name);
        c->st = BC_WELCOME;
    }
    if (r != 0) {
        bench_conn_fail(c, BENCH_ERR_PROTOCOL, now, "cannot encode the first request");
        return -1;
    }
    return 0;
}

/* Drives one connection after an epoll event (or the sweep). */
static void bench_conn_io(struct bench_conn *c, uint64_t now)
{
    const char *addr = c->w->sh->o->addr;
    if (c->st == BC_CONNECTING) {
        /* An event left over from this slot's previous socket (closed and
         * reopened within one epoll batch) must not be taken for "connected". */
        struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
        if (poll(&pfd, 1, 0) == 0)
            return;
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
            soerr = errno;
        if (soerr != 0) {
            bench_conn_fail(c, BENCH_ERR_CONNECT, now, "connect %s: %s", addr, strerror(soerr));
            return;
        }
        char err[BENCH_ERR_MAX];
        const char *host = c->w->sh->o->verify ? c->w->sh->host : NULL;
        int fd = c->fd;
        c->fd = -1; /* tls_conn owns it now, also on failure */
        c->tls = tls_conn_new_client(c->w->sh->ctx, fd, host, err, sizeof(err));
        if (!c->tls) {
            c->registered = 0; /* the descriptor is closed */
            bench_conn_fail(c, BENCH_ERR_TLS, now, "%s: %s", addr, err);
            return;
        }
        c->st = BC_HANDSHAKE;
    }
    if (c->st == BC_HANDSHAKE) {
        enum tls_status st = tls_conn_handshake(c->tls);
        if (st == TLS_AGAIN) {
            bench_conn_set_events(c, tls_conn_events(c->tls));
            return;
        }
        if (st != TLS_DONE) {
            char e[BENCH_ERR_MAX];
            snprintf(e, sizeof(e), "%s", tls_conn_error(c->tls));
            /* The handshake failed on our side or the server's; close is not "open". */
            tls_conn_free(c->tls);
            c->tls = NULL;
            c->registered = 0;
            bench_conn_fail(c, BENCH_ERR_TLS, now, "%s: TLS %s", addr, e);
            return;
        }
        if (bench_conn_established(c, now) != 0)
            return;
    }
    if (bench_conn_flush(c, now) != 0 || bench_conn_read(c, now) != 0)
        return;
    /* Replies may have queued new requests. */
    if (buf_size(&c->out) && bench_conn_flush(c, now) != 0)
        return;
    uint32_t ev = c->want_read ? c->want_read : EPOLLIN;
    if (buf_size(&c->out))
        ev |= c->want_write ? c->want_write : EPOLLOUT;
    bench_conn_set_events(c, ev);
}

/* Deadlines, reconnections, and whether anything is still in progress. */
static bool bench_sweep(struct bench_worker *w, uint64_t now)
{
    const struct bench_options *o = w->sh->o;
    uint64_t timeout_ns = (uint64_t)o->timeout_ms * 1000000u;
    bool busy = false;
    for (unsigned i = 0; i < w->nconns; i++) {
        struct bench_conn *c = &w->conns[i];
        switch (c->st) {
        case BC_IDLE:
            if (!w->stopping && now >= c->retry_at_ns)
                bench_conn_start(c, now);
            break;
        case BC_CONNECTING:
        case BC_HANDSHAKE:
        case BC_WELCOME:
        case BC_HTTP:
            if (now >= c->deadline_ns)
                bench_conn_fail(c, BENCH_ERR_TIMEOUT, now,
                                "%s: no answer within %ld ms (connect, handshake or first reply)",
                                o->addr, o->timeout_ms);
            else
                busy = true;
            break;
        case BC_RUNNING:
            if (c->inflight && now - c->sent_ns[c->oldest_rid % o->pipeline] >= timeout_ns)
                bench_conn_fail(c, BENCH_ERR_TIMEOUT, now,
                                "%s: request %" PRIu64 " not answered within %ld ms", o->addr,
                                c->oldest_rid, o->timeout_ms);
            else if (c->inflight)
                busy = true;
            break;
        }
    }
    return busy;
}

static void *bench_worker_main(void *arg)
{
    struct bench_worker *w = arg;
    struct bench_shared *sh = w->sh;
    struct epoll_event evs[BENCH_EPOLL_BATCH];
    uint64_t now = bench_now_ns();
    for (unsigned i = 0; i < w->nconns; i++)
        bench_conn_start(&w->conns[i], now);
    uint64_t next_sweep = now + BENCH_SWEEP_NS;
    for (;;) {
        if (atomic_load_explicit(&sh->abort, memory_order_relaxed))
            break;
        now = bench_now_ns();
        if (now >= sh->hard_end_ns)
            break;
        if (!w->stopping && now >= sh->end_ns)
            w->stopping = true;
        if (now >= next_sweep) {
            bool busy = bench_sweep(w, now);
            next_sweep = now + BENCH_SWEEP_NS;
            if (w->stopping && !busy)
                break;
        }
        uint64_t wait_ns = next_sweep > now ? next_sweep - now : 0;
        int n = epoll_wait(w->ep, evs, BENCH_EPOLL_BATCH, (int)(wait_ns / 1000000u) + 1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            snprintf(w->fatal, sizeof(w->fatal), "epoll_wait: %s", strerror(errno));
            atomic_store(&sh->abort, true);
            break;
        }
        now = bench_now_ns();
        for (int i = 0; i < n; i++)
            bench_conn_io(evs[i].data.ptr, now);
    }
    for (unsigned i = 0; i < w->nconns; i++)
        if (w->conns[i].st != BC_IDLE)
            bench_conn_close(&w->conns[i], w->conns[i].st == BC_RUNNING);
    atomic_store(&w->done, true);
    return NULL;
}

/* ------------------------------------------------------------ the run */

static void bench_worker_release(struct bench_worker *w)
{
    if (w->conns) {
        for (unsigned i = 0; i < w->nconns; i++) {
            bench_conn_close(&w->conns[i], false);
            buf_release(&w->conns[i].in);
            buf_release(&w->conns[i].out);
            free(w->conns[i].sent_ns);
        }
        free(w->conns);
    }
    if (w->ep >= 0)
        close(w->ep);
    bench_hist_free(w->hist);
}

static int bench_check_options(const struct bench_options *o, char *err, size_t errlen)
{
    if (!o->addr || !*o->addr) {
        errbuf_setf(err, errlen, "no server address");
        return -1;
    }
    if (!bench_mode_name(o->mode) || !bench_exchange_name(o->exchange)) {
        errbuf_setf(err, errlen, "bad mode or exchange");
        return -1;
    }
    if (o->connections < 1 || o->connections > 100000) {
        errbuf_setf(err, errlen, "connections must be 1..100000, not %u", o->connections);
        return -1;
    }
    if (o->pipeline < 1 || o->pipeline > 1024) {
        errbuf_setf(err, errlen, "pipeline must be 1..1024, not %u", o->pipeline);
        return -1;
    }
    if (o->threads < 1 || o->threads > 64) {
        errbuf_setf(err, errlen, "threads must be 1..64, not %u", o->threads);
        return -1;
    }
    if (o->size > (64u << 20)) {
        errbuf_setf(err, errlen, "size must be at most 64 MiB, not %zu", o->size);
        return -1;
    }
    if (o->duration_ms <= 0 || o->timeout_ms <= 0) {
        errbuf_setf(err, errlen, "duration and timeout must be positive");
        return -1;
    }
    size_t namelen = o->name ? strlen(o->name) : 0;
    if (namelen == 0 || namelen > FRAME_NAME_MAX) {
        errbuf_setf(err, errlen, "client name must be 1..%d bytes", FRAME_NAME_MAX);
        return -1;
    }
    return 0;
}

/* Sums the workers' counters for the progress line. */
static void bench_totals(struct bench_worker *ws, unsigned n, uint64_t *req, uint64_t *errs,
                         unsigned *open)
{
    *req = *errs = 0;
    *open = 0;
    for (unsigned i = 0; i < n; i++) {
        *req += atomic_load_explicit(&ws[i].requests, memory_order_relaxed);
        *errs += atomic_load_explicit(&ws[i].errors, memory_order_relaxed);
        *open += atomic_load_explicit(&ws[i].open, memory_order_relaxed);
    }
}

int bench_run(const struct bench_options *o, struct bench_result *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (bench_check_options(o, err, errlen) != 0)
        return -1;

    struct bench_shared sh;
    memset(&sh, 0, sizeof(sh));
    sh.o = o;
    atomic_init(&sh.abort, false);
    struct bench_worker *ws = NULL;
    int rc = -1;
    char e[BENCH_ERR_MAX];

    struct addr a;
    if (addr_parse(o->addr, false, &a, e, sizeof(e)) != 0) {
        errbuf_setf(err, errlen, "bad address %s: %s", o->addr, e);
        return -1;
    }
    if (addr_resolve(&a, SOCK_STREAM, &sh.sa, &sh.salen, e, sizeof(e)) != 0) {
        errbuf_setf(err, errlen, "%s: %s", o->addr, e);
        return -1;
    }
    snprintf(sh.host, sizeof(sh.host), "%s", a.host);
    snprintf(sh.http_req, sizeof(sh.http_req),
             "GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: berth-bench\r\nConnection: close\r\n\r\n",
             o->addr);

    sh.ctx = tls_ctx_client_new(o->ca_file, o->verify, e, sizeof(e));
    if (!sh.ctx) {
        errbuf_setf(err, errlen, "%s", e);
        return -1;
    }
    /* Every handshake must be a full one: no session cache, no tickets. */
    SSL_CTX_set_session_cache_mode(sh.ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(sh.ctx, SSL_OP_NO_TICKET);

    sh.payload = malloc(o->size ? o->size : 1);
    if (!sh.payload) {
        errbuf_setf(err, errlen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < o->size; i++)
        sh.payload[i] = (uint8_t)('a' + i % 26);
    unsigned int dlen = 0;
    if (EVP_Digest(sh.payload, o->size, sh.sha, &dlen, EVP_sha256(), NULL) != 1) {
        tls_ctx_error(err, errlen, "SHA-256 failed");
        goto out;
    }

    out->latency = bench_hist_new();
    ws = calloc(o->threads, sizeof(*ws));
    if (!out->latency || !ws) {
        errbuf_setf(err, errlen, "out of memory");
        goto out;
    }
    for (unsigned t = 0; t < o->threads; t++) {
        struct bench_worker *w = &ws[t];
        w->sh = &sh;
        w->ep = -1;
        atomic_init(&w->requests, 0);
        atomic_init(&w->errors, 0);
        atomic_init(&w->open, 0);
        atomic_init(&w->done, false);
        w->nconns = o->connections / o->threads + (t < o->connections % o->threads ? 1u : 0u);
        w->hist = bench_hist_new();
        w->conns = w->nconns ? calloc(w->nconns, sizeof(*w->conns)) : NULL;
        if (!w->hist || (w->nconns && !w->conns)) {
            errbuf_setf(err, errlen, "out of memory");
            goto out;
        }
        for (unsigned i = 0; i < w->nconns; i++) {
            struct bench_conn *c = &w->conns[i];
            c->w = w;
            c->fd = -1;
            buf_init(&c->in);
            buf_init(&c->out);
            c->sent_ns = calloc(o->pipeline, sizeof(*c->sent_ns));
            if (!c->sent_ns) {
                errbuf_setf(err, errlen, "out of memory");
                goto out;
            }
        }
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        if (w->ep < 0) {
            errbuf_setf(err, errlen, "epoll_create1: %s", strerror(errno));
            goto out;
        }
    }

    sh.start_ns = bench_now_ns();
    sh.end_ns = sh.start_ns + (uint64_t)o->duration_ms * 1000000u;
    sh.hard_end_ns = sh.end_ns + (uint64_t)o->timeout_ms * 1000000u;
    bool create_failed = false;
    for (unsigned t = 0; t < o->threads; t++) {
        int pe = pthread_create(&ws[t].thread, NULL, bench_worker_main, &ws[t]);
        if (pe != 0) {
            errbuf_setf(err, errlen, "pthread_create: %s", strerror(pe));
            atomic_store(&sh.abort, true);
            create_failed = true;
            goto join;
        }
        ws[t].started = true;
    }

    /* Progress once a second; the workers end on their own by hard_end_ns. */
    uint64_t next_tick = sh.start_ns + 1000000000ull, last_req = 0, last_tick = sh.start_ns;
    bool nothing_works = false;
    for (;;) {
        bool all_done = true;
        for (unsigned t = 0; t < o->threads; t++)
            all_done = all_done && atomic_load(&ws[t].done);
        if (all_done)
            break;
        struct timespec nap = {0, 10 * 1000 * 1000};
        nanosleep(&nap, NULL);
        uint64_t now = bench_now_ns();
        uint64_t req, errs;
        unsigned open;
        if (now >= next_tick || now >= sh.start_ns + (uint64_t)o->timeout_ms * 1000000u) {
            bench_totals(ws, o->threads, &req, &errs, &open);
            if (!nothing_works && req == 0 && errs > 0 &&
                now >= sh.start_ns + (uint64_t)o->timeout_ms * 1000000u) {
                nothing_works = true;
                atomic_store(&sh.abort, true);
            }
            if (now >= next_tick) {
                if (o->progress) {
                    struct bench_progress p = {
                        .elapsed_s = (double)(now - sh.start_ns) / 1e9,
                        .requests = req,
                        .errors = errs,
                        .rate = (double)(req - last_req) * 1e9 / (double)(now - last_tick),
                        .connections = open,
                    };
                    o->progress(o->progress_arg, &p);
                }
                last_req = req;
                last_tick = now;
                next_tick += 1000000000ull;
            }
        }
    }
    out->elapsed_s = (double)(bench_now_ns() - sh.start_ns) / 1e9;

join:
    for (unsigned t = 0; t < o->threads; t++)
        if (ws[t].started)
            pthread_join(ws[t].thread, NULL);
    if (!ws[0].started)
        goto out;

    out->mode = o->mode;
    out->exchange = o->exchange;
    snprintf(out->addr, sizeof(out->addr), "%s", o->addr);
    out->connections = o->connections;
    out->pipeline = o->pipeline;
    out->threads = o->threads;
    out->size = o->size;
    const char *fatal = NULL;
    for (unsigned t = 0; t < o->threads; t++) {
        struct bench_worker *w = &ws[t];
        bench_hist_merge(out->latency, w->hist);
        out->requests += atomic_load(&w->requests);
        out->bytes += w->bytes;
        for (int k = 0; k < BENCH_ERR_COUNT; k++) {
            out->errors[k] += w->errs[k];
            out->errors_total += w->errs[k];
        }
        if (!out->first_error[0] && w->first_error[0])
            snprintf(out->first_error, sizeof(out->first_error), "%s", w->first_error);
        if (!out->tls_protocol[0] && w->tls_protocol[0]) {
            snprintf(out->tls_protocol, sizeof(out->tls_protocol), "%s", w->tls_protocol);
            snprintf(out->tls_cipher, sizeof(out->tls_cipher), "%s", w->tls_cipher);
        }
        if (!fatal && w->fatal[0])
            fatal = w->fatal;
    }
    out->rate = out->elapsed_s > 0 ? (double)out->requests / out->elapsed_s : 0;
    if (fatal) {
        errbuf_setf(err, errlen, "%s", fatal);
        goto out;
    }
    if (out->requests == 0 && out->errors_total > 0) {
        errbuf_setf(err, errlen, "nothing succeeded (%" PRIu64 " errors): %s", out->errors_total,
                   out->first_error[0] ? out->first_error : "no answer");
        goto out;
    }
    if (create_failed)
        goto out;
    rc = 0;

out:
    if (ws) {
        for (unsigned t = 0; t < o->threads; t++)
            bench_worker_release(&ws[t]);
        free(ws);
    }
    free(sh.payload);
    SSL_CTX_free(sh.ctx);
    if (rc != 0) {
        bench_hist_free(out->latency);
        out->latency = NULL;
    }
    return rc;
}

void bench_result_release(struct bench_result *r)
{
    if (!r)
        return;
    bench_hist_free(r->latency);
    r->latency = NULL;
}

/* ------------------------------------------------------------ reports */

static const double bench_pcts[] = {50, 90, 99, 99.9};
static const char *const bench_pct_names[] = {"p50", "p90", "p99", "p99.9"};

char *bench_result_json(const struct bench_result *r)
{
    json_t *root = json_object();
    json_t *lat = json_object();
    json_t *errs = json_object();
    if (!root || !lat || !errs) {
        json_decref(root);
        json_decref(lat);
        json_decref(errs);
        return NULL;
    }
    const struct bench_hist *h = r->latency;
    json_object_set_new(root, "mode", json_string(bench_mode_name(r->mode)));
    if (r->mode == BENCH_HANDSHAKE)
        json_object_set_new(root, "exchange", json_string(bench_exchange_name(r->exchange)));
    json_object_set_new(root, "addr", json_string(r->addr));
    json_object_set_new(root, "connections", json_integer(r->connections));
    json_object_set_new(root, "pipeline", json_integer(r->pipeline));
    json_object_set_new(root, "threads", json_integer(r->threads));
    json_object_set_new(root, "size", json_integer((json_int_t)r->size));
    json_object_set_new(root, "tls", json_string(r->tls_protocol));
    json_object_set_new(root, "cipher", json_string(r->tls_cipher));
    json_object_set_new(root, "elapsed_s", json_real(r->elapsed_s));
    json_object_set_new(root, "requests", json_integer((json_int_t)r->requests));
    json_object_set_new(root, "rate", json_real(r->rate));
    json_object_set_new(root, "bytes", json_integer((json_int_t)r->bytes));
    json_object_set_new(root, "bytes_per_s",
                        json_real(r->elapsed_s > 0 ? (double)r->bytes / r->elapsed_s : 0));
    json_object_set_new(lat, "count", json_integer((json_int_t)(h ? bench_hist_count(h) : 0)));
    json_object_set_new(lat, "min", json_real(h ? (double)bench_hist_min(h) / 1e3 : 0));
    json_object_set_new(lat, "mean", json_real(h ? bench_hist_mean(h) / 1e3 : 0));
    for (size_t i = 0; i < sizeof(bench_pcts) / sizeof(bench_pcts[0]); i++)
        json_object_set_new(lat, bench_pct_names[i],
                            json_real(h ? (double)bench_hist_percentile(h, bench_pcts[i]) / 1e3 : 0));
    json_object_set_new(lat, "max", json_real(h ? (double)bench_hist_max(h) / 1e3 : 0));
    json_object_set_new(root, "latency_us", lat);
    for (int k = 0; k < BENCH_ERR_COUNT; k++)
        json_object_set_new(errs, bench_err_name((enum bench_err)k),
                            json_integer((json_int_t)r->errors[k]));
    json_object_set_new(errs, "total", json_integer((json_int_t)r->errors_total));
    json_object_set_new(root, "errors", errs);
    if (r->first_error[0])
        json_object_set_new(root, "first_error", json_string(r->first_error));
    char *s = json_dumps(root, JSON_PRESERVE_ORDER | JSON_COMPACT);
    json_decref(root);
    return s;
}

char *bench_result_text(const struct bench_result *r)
{
    char *s = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&s, &n);
    if (!f)
        return NULL;
    const struct bench_hist *h = r->latency;
    fprintf(f, "mode %s against %s: %u connection%s, pipeline %u, %zu-byte payload, %u thread%s\n",
            bench_mode_name(r->mode), r->addr, r->connections, r->connections == 1 ? "" : "s", r->pipeline, r->size, r->threads,
            r->threads == 1 ? "" : "s");
    if (r->mode == BENCH_HANDSHAKE)
        fprintf(f, "  (exchange after each handshake: %s)\n", bench_exchange_name(r->exchange));
    fprintf(f, "  tls:        %s %s\n", r->tls_protocol[0] ? r->tls_protocol : "-",
            r->tls_cipher[0] ? r->tls_cipher : "");
    fprintf(f, "  requests:   %" PRIu64 " in %.2f s = %.0f/s\n", r->requests, r->elapsed_s,
            r->rate);
    if (r->mode != BENCH_HANDSHAKE)
        fprintf(f, "  payload:    %.2f MB/s\n",
                r->elapsed_s > 0 ? (double)r->bytes / r->elapsed_s / 1e6 : 0);
    fprintf(f, "  latency us: min %.1f  mean %.1f", h ? (double)bench_hist_min(h) / 1e3 : 0,
            h ? bench_hist_mean(h) / 1e3 : 0);
    for (size_t i = 0; i < sizeof(bench_pcts) / sizeof(bench_pcts[0]); i++)
        fprintf(f, "  %s %.1f", bench_pct_names[i],
                h ? (double)bench_hist_percentile(h, bench_pcts[i]) / 1e3 : 0);
    fprintf(f, "  max %.1f\n", h ? (double)bench_hist_max(h) / 1e3 : 0);
    fprintf(f, "  errors:     %" PRIu64, r->errors_total);
    for (int k = 0; k < BENCH_ERR_COUNT; k++)
        if (r->errors[k])
            fprintf(f, " %s=%" PRIu64, bench_err_name((enum bench_err)k), r->errors[k]);
    fprintf(f, "\n");
    if (r->first_error[0])
        fprintf(f, "  first error: %s\n", r->first_error);
    if (fclose(f) != 0) {
        free(s);
        return NULL;
    }
    return s;
}
