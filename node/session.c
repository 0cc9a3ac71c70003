/* session: one client connection: its TLS transport, buffers, counters and
 * timers, and the node protocol (HELLO first, replies in request order,
 * ERROR closes the session). The protocol part runs without I/O too. */
#include "session.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "forwarder.h"
#include "frame.h"
#include "hex.h"
#include "log.h"

#define SESSION_READ_CHUNK 16384u /* one TLS record */
#define SESSION_PUMP_MAX 64       /* rounds per session_handle, for fairness */
#define SESSION_JOURNAL_TEXT "journal: cannot store the message" /* ERROR text, no path */
#define SESSION_UNAVAILABLE_TEXT "cannot replicate now: send elsewhere" /* the cause is logged */
#define SESSION_JOURNAL_TEXT_MAX 96
/* OpenSSL's read and write record buffers: 16 KiB of plaintext each, plus
 * header, MAC/tag and alignment room (ssl/record/ssl3_buffer.c). */
#define SESSION_TLS_RECORD_BYTES (2 * (16384 + 2048))
#define SESSION_BUSY_REQUESTS 8   /* requests between two sweeps that make a session
                                   * keep its TLS record buffers */

/* An ACK held until its journal record is durable. */
struct session_held {
    uint64_t pos; /* output stream offset where the ACK frame starts */
    uint64_t seq; /* its record */
};

struct session {
    const struct session_env *env; /* node settings, borrowed */
    struct node_worker_stats *ws;  /* this worker's counters, borrowed */
    struct tls_conn *tls;          /* transport, owned; NULL for protocol-only use */
    enum session_state state;
    uint64_t id;
    char peer[SESSION_PEER_MAX + 1];
    char client[FRAME_NAME_MAX + 1]; /* name from HELLO */
    char producer[FRAME_PRODUCER_MAX + 1]; /* producer id from HELLO (version 2); "" none */
    bool hello_seen;
    bool draining;    /* node shutdown: read nothing more, then BYE */
    bool peer_closed; /* EOF or close_notify: read nothing more */
    bool rerun;       /* the last session_handle stopped on its budget */
    bool busy;        /* TLS record buffers kept between requests (see session_sweep) */
    bool read_more;   /* this session_handle may read (again): not yet read, or
                       * OpenSSL holds bytes epoll will not signal */
    bool got_bytes;   /* the client sent something (--first-byte-timeout) */
    size_t mem_counted; /* what this session adds to stats->session_memory now */
    uint32_t hs_wait; /* epoll events the handshake's last TLS_AGAIN asked for */
    uint32_t read_wait;  /* ... the last read's TLS_AGAIN (0: plain EPOLLIN) */
    uint32_t write_wait; /* ... the last write's TLS_AGAIN (0: plain EPOLLOUT) */
    struct buf in;    /* client bytes not yet parsed (a partial frame, or frames held
                       * back by the limits); storage only while it holds any */
    struct buf out;   /* replies not yet written; storage only while it holds any */
    uint64_t requests, bytes_in, bytes_out;
    uint64_t requests_at_sweep; /* requests at the last session_sweep */
    uint64_t inflight;     /* requests parsed whose reply is not yet written */
    size_t out_head_left;  /* bytes of the output's first frame not yet written; 0: at a
                            * frame boundary */
    uint8_t *cert;    /* mTLS: the client certificate's SHA-256, then its identity text
                       * and a NUL (the journal's JOURNAL_IDENT_CERT field); NULL without */
    size_t cert_len;  /* digest + identity, without the NUL */
    struct session_held *held; /* FIFO [held_head, nheld) of ACKs awaiting the journal */
    size_t held_head, nheld, held_cap;
    uint64_t created_ms, last_active_ms, closing_ms;
    const char *reason; /* why it closes; static string */
};

/* SHA-256 for SEND, fetched once: EVP_Digest with EVP_sha256() looks the
 * implementation up in the provider store on every call. Shared by all
 * workers (an EVP_MD is immutable and reference counted) and kept until exit. */
static pthread_once_t session_sha256_once = PTHREAD_ONCE_INIT;
static EVP_MD *session_sha256_md;

static void session_sha256_fetch(void)
{
    session_sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static const EVP_MD *session_sha256(void)
{
    if (pthread_once(&session_sha256_once, session_sha256_fetch) != 0)
        return NULL;
    return session_sha256_md;
}

/* Reads land here first, so an idle session holds no 16 KiB buffer. */
static _Thread_local uint8_t session_scratch[SESSION_READ_CHUNK];

struct session *session_new(const struct session_env *env, struct node_worker_stats *ws,
                            uint64_t id, const char *peer, struct tls_conn *tls, uint64_t now_ms)
{
    struct session *s = calloc(1, sizeof(*s));
    if (!s) {
        tls_conn_free(tls);
        return NULL;
    }
    s->env = env;
    s->ws = ws;
    s->tls = tls;
    s->state = tls ? SESSION_HANDSHAKE : SESSION_OPEN;
    s->id = id;
    snprintf(s->peer, sizeof(s->peer), "%s", peer ? peer : "");
    buf_init(&s->in);
    buf_init(&s->out);
    s->created_ms = now_ms;
    s->last_active_ms = now_ms;
    return s;
}

void session_free(struct session *s)
{
    if (!s)
        return;
    if (s->mem_counted && s->env->stats)
        node_stats_sub(&s->env->stats->session_memory, s->mem_counted);
    tls_conn_free(s->tls);
    buf_release(&s->in);
    buf_release(&s->out);
    free(s->held);
    free(s->cert);
    free(s);
}

uint64_t session_id(const struct session *s) { return s->id; }
enum session_state session_state(const struct session *s) { return s->state; }
int session_fd(const struct session *s) { return s->tls ? tls_conn_fd(s->tls) : -1; }
const char *session_close_reason(const struct session *s) { return s->reason ? s->reason : ""; }
struct buf *session_output(struct session *s) { return &s->out; }
bool session_needs_rerun(const struct session *s) { return s->rerun; }
bool session_journal_wait(const struct session *s) { return s->held_head < s->nheld; }
uint64_t session_inflight(const struct session *s) { return s->inflight; }
bool session_got_bytes(const struct session *s) { return s->got_bytes; }

size_t session_memory(const struct session *s)
{
    size_t m = s->in.cap + s->out.cap + s->held_cap * sizeof(*s->held);
    if (s->tls && (s->busy || buf_size(&s->out) > 0))
        m += SESSION_TLS_RECORD_BYTES;
    return m;
}

/* Moves the node-wide session memory by this session's change since the
 * last call: every entry point that can grow or shrink a buffer ends here. */
static void session_account(struct session *s)
{
    size_t m = session_memory(s);
    if (m == s->mem_counted || !s->env->stats)
        return;
    if (m > s->mem_counted)
        node_stats_add(&s->env->stats->session_memory, m - s->mem_counted);
    else
        node_stats_sub(&s->env->stats->session_memory, s->mem_counted - m);
    s->mem_counted = m;
}

/* The client certificate's identity for logs and JSON; "" without one. */
static const char *session_cert_id(const struct session *s)
{
    return s->cert ? (const char *)s->cert + JOURNAL_CERT_SHA256_LEN : "";
}

/* Counts the reply frames the first n output bytes complete (they are
 * about to be consumed): each answers one request in flight. The frames
 * are our own, so their headers are whole; the walk stays inside the
 * buffer all the same. */
static void session_count_written(struct session *s, size_t n)
{
    const uint8_t *p = buf_head(&s->out);
    size_t avail = buf_size(&s->out);
    while (n > 0) {
        if (s->out_head_left == 0) {
            if (avail < FRAME_HEADER_SIZE) {
                s->out_head_left = n; /* cannot happen: frames are appended whole */
            } else {
                uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
                               (uint32_t)p[2] << 8 | p[3];
                s->out_head_left = FRAME_HEADER_SIZE + (size_t)len;
            }
        }
        size_t k = n < s->out_head_left ? n : s->out_head_left;
        p += k;
        avail -= k;
        n -= k;
        s->out_head_left -= k;
        /* Frames nobody asked for (BYE at drain, ERROR timeout) come last. */
        if (s->out_head_left == 0 && s->inflight > 0)
            s->inflight--;
    }
}

static void session_closed(struct session *s, const char *reason, uint64_t now)
{
    if (s->state == SESSION_CLOSED)
        return;
    if (!s->reason)
        s->reason = reason;
    s->state = SESSION_CLOSED;
    log_debug("session_close",
              "session=%" PRIu64 " peer=%s client=\"%s\" client_cert=\"%s\" reason=%s "
              "requests=%" PRIu64 " bytes_in=%" PRIu64 " bytes_out=%" PRIu64 " age_ms=%" PRIu64,
              s->id, s->peer, s->client, session_cert_id(s), s->reason, s->requests, s->bytes_in,
              s->bytes_out, now - s->created_ms);
}

/* A final frame is queued: stop reading and parsing, flush, then close. */
static void session_closing(struct session *s, const char *reason, uint64_t now)
{
    if (s->state != SESSION_OPEN)
        return;
    s->reason = reason;
    s->state = SESSION_CLOSING;
    s->closing_ms = now;
}

/* Gives an empty buffer's storage back: an idle session holds none (at
 * 10,000 idle connections two small buffers each would be 5 MB), and
 * malloc's per-thread cache makes taking a small one again cheap. */
static void session_trim(struct buf *b)
{
    if (buf_size(b) == 0 && b->data)
        buf_release(b);
}

static void session_error(struct session *s, uint64_t request_id, enum frame_error code,
                          const char *text, uint64_t now)
{
    log_debug("protocol_error", "session=%" PRIu64 " peer=%s request=%" PRIu64 " code=%s",
              s->id, s->peer, request_id, frame_error_name(code));
    if (frame_append_error(&s->out, request_id, code, text) != 0) {
        session_closed(s, "out_of_memory", now);
        return;
    }
    session_closing(s, "protocol_error", now);
}

/* INFO_REPLY body; caller frees. NULL on out of memory. */
static char *session_info_json(const struct session *s, uint64_t now)
{
    const struct session_env *env = s->env;
    const char *proto = NULL, *cipher = NULL;
    if (s->tls) {
        proto = tls_conn_protocol(s->tls);
        cipher = tls_conn_cipher(s->tls);
    }
    char cert_hex[2 * JOURNAL_CERT_SHA256_LEN + 1];
    if (s->cert)
        hex_encode(cert_hex, s->cert, JOURNAL_CERT_SHA256_LEN);
    const struct node_stats *st = env->stats;
    json_t *j = json_pack(
        "{s:s, s:s, s:s, s:I, s:I, s:I, s:I,"
        " s:{s:I, s:s, s:s, s:s?, s:s?, s:I, s:I, s:I, s:I},"
        " s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I},"
        " s:{s:I, s:I, s:I, s:I, s:I, s:I},"
        " s:{s:s?, s:s?}}",
        "node", env->node_id, "version", BERTH_VERSION, "addr", env->advertise,
        "uptime_ms", (json_int_t)(now - env->start_ms),
        "sessions", (json_int_t)node_stats_sessions(env->stats),
        "accepted", (json_int_t)node_stats_accepted(env->stats),
        "workers", (json_int_t)env->stats->nworkers,
        "session",
        "id", (json_int_t)s->id, "peer", s->peer, "client", s->client,
        "client_cert", s->cert ? session_cert_id(s) : NULL,
        "client_cert_sha256", s->cert ? cert_hex : NULL,
        "requests", (json_int_t)s->requests, "bytes_in", (json_int_t)s->bytes_in,
        "bytes_out", (json_int_t)s->bytes_out, "age_ms", (json_int_t)(now - s->created_ms),
        "limits",
        "max_frame", (json_int_t)env->max_frame,
        "idle_timeout_ms", (json_int_t)env->idle_timeout_ms,
        "handshake_timeout_ms", (json_int_t)env->handshake_timeout_ms,
        "max_connections", (json_int_t)env->max_connections,
        "max_inflight", (json_int_t)env->max_inflight,
        "max_connections_per_addr", (json_int_t)env->max_connections_per_addr,
        "max_handshakes_per_addr", (json_int_t)env->max_handshakes_per_addr,
        "first_byte_timeout_ms", (json_int_t)env->first_byte_timeout_ms,
        "max_session_memory", (json_int_t)env->max_session_memory,
        "counters",
        "rejected_max_connections", (json_int_t)node_stats_sum(st, rejected),
        "rejected_per_addr", (json_int_t)node_stats_sum(st, rejected_addr),
        "rejected_handshakes_per_addr", (json_int_t)node_stats_sum(st, rejected_addr_hs),
        "first_byte_timeouts", (json_int_t)node_stats_sum(st, first_byte_timeouts),
        "memory_evictions", (json_int_t)node_stats_sum(st, memory_evictions),
        "session_memory", (json_int_t)node_stats_get(&st->session_memory),
        "tls", "protocol", proto, "cipher", cipher);
    if (!j)
        return NULL;
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return text;
}

static bool session_on_hello(struct session *s, const struct frame *f, uint64_t now)
{
    uint64_t rid = f->h.request_id;
    struct frame_hello hello;
    if (s->hello_seen) {
        session_error(s, rid, FRAME_ERR_UNEXPECTED, "HELLO already received", now);
        return false;
    }
    if (frame_parse_hello(f, &hello) != 0) {
        session_error(s, rid, FRAME_ERR_MALFORMED, "HELLO body does not parse", now);
        return false;
    }
    /* HELLO offers the client's highest version; the session runs at the
     * highest both speak, ours (WELCOME says so). Only version 0 leaves
     * none in common (docs/PROTOCOL.md section 4.1). */
    if (hello.version < FRAME_VERSION) {
        session_error(s, rid, FRAME_ERR_BAD_VERSION,
                      "no protocol version in common: this node speaks 1 and 2", now);
        return false;
    }
    if (s->draining) {
        session_error(s, rid, FRAME_ERR_SHUTTING_DOWN, NULL, now);
        return false;
    }
    snprintf(s->client, sizeof(s->client), "%s", hello.name);
    snprintf(s->producer, sizeof(s->producer), "%s", hello.producer);
    s->hello_seen = true;

    struct frame_welcome w;
    memset(&w, 0, sizeof(w));
    w.version = hello.version < FRAME_PROTOCOL_MAX ? hello.version : FRAME_PROTOCOL_MAX;
    w.session_id = s->id;
    w.max_payload = s->env->max_frame;
    w.idle_timeout_ms = s->env->idle_timeout_ms;
    snprintf(w.node_id, sizeof(w.node_id), "%s", s->env->node_id);
    if (frame_append_welcome(&s->out, rid, &w) != 0) {
        session_error(s, rid, FRAME_ERR_INTERNAL, NULL, now);
        return false;
    }
    return true;
}

/* The ERROR text for a SEND the journal refused: a fixed text and the
 * cause's class from errno, never the journal's own message (it names
 * files on the node). */
static void session_journal_text(char *out, size_t len, int cause)
{
    const char *cls = "storage error";
    switch (cause) {
    case -1: /* journal_held_full: retention waits for a consumer */
        cls = "journal full: a consumer has not confirmed its records";
        break;
    case ENOSPC:
#ifdef EDQUOT
    case EDQUOT:
#endif
        cls = "No space left on device";
        break;
    case EIO:
        cls = "Input/output error";
        break;
    case ENOMEM:
        cls = "Cannot allocate memory";
        break;
    case EROFS:
        cls = "Read-only file system";
        break;
    default:
        break;
    }
    snprintf(out, len, "%s: %s", SESSION_JOURNAL_TEXT, cls);
}

/* Queues an ACK at stream offset pos to wait for seq. 0 or -1 (memory). */
static int session_hold(struct session *s, uint64_t pos, uint64_t seq)
{
    if (s->nheld == s->held_cap) {
        if (s->held_head > 0) {
            /* Slide the live part down before growing. */
            memmove(s->held, s->held + s->held_head,
                    (s->nheld - s->held_head) * sizeof(*s->held));
            s->nheld -= s->held_head;
            s->held_head = 0;
        }
        if (s->nheld == s->held_cap) {
            size_t nc = s->held_cap ? s->held_cap * 2 : 16;
            struct session_held *n = realloc(s->held, nc * sizeof(*n));
            if (!n)
                return -1;
            s->held = n;
            s->held_cap = nc;
        }
    }
    s->held[s->nheld].pos = pos;
    s->held[s->nheld].seq = seq;
    s->nheld++;
    return 0;
}

/* Is record seq stored as --ack-after asks: durable in the journal and,
 * with a forwarder to wait for (replicated), in the engine too? */
static bool session_stored(const struct session *s, uint64_t seq)
{
    if (journal_state(s->env->journal, seq) != JOURNAL_DURABLE)
        return false;
    return !s->env->forwarder || forwarder_seq(s->env->forwarder) >= seq;
}

/* Lets go of the ACKs whose records are stored. A record whose fsync
 * failed is never acknowledged: the output is cut where its ACK starts and
 * an ERROR takes its place (the replies before it still go out). So is one
 * waiting for a forwarder that cannot deliver now (replicated): ERROR
 * unavailable, and the client re-sends elsewhere (the record is forwarded
 * later all the same; the stream drops the re-send by its message id). */
/* The held ACK h will never go: the output is cut where it starts, an
 * ERROR takes its place (the replies before it still go out), and nothing
 * more is answered. */
static void session_fail_held(struct session *s, const struct session_held *h,
                              enum frame_error code, const char *text, uint64_t now)
{
    size_t keep = (size_t)(h->pos - s->bytes_out);
    s->out.len = s->out.off + keep;
    s->held_head = s->nheld = 0;
    s->in.off = s->in.len;
    if (s->state == SESSION_OPEN || s->state == SESSION_CLOSING) {
        s->state = SESSION_OPEN;
        s->reason = NULL;
        session_error(s, 0, code, text, now);
    }
}

static void session_release(struct session *s, uint64_t now)
{
    struct journal *j = s->env->journal;
    while (s->held_head < s->nheld) {
        struct session_held *h = &s->held[s->held_head];
        enum journal_state st = journal_state(j, h->seq);
        if (st == JOURNAL_DURABLE && s->env->forwarder &&
            forwarder_seq(s->env->forwarder) < h->seq) {
            if (!forwarder_healthy(s->env->forwarder, NULL, 0))
                session_fail_held(s, h, FRAME_ERR_UNAVAILABLE, SESSION_UNAVAILABLE_TEXT, now);
            return;
        }
        if (st == JOURNAL_PENDING)
            return;
        if (st == JOURNAL_LOST) {
            /* The journal logged the failure with its detail. */
            session_fail_held(s, h, FRAME_ERR_INTERNAL, SESSION_JOURNAL_TEXT ": fsync failed",
                              now);
            return;
        }
        s->held_head++;
    }
    s->held_head = s->nheld = 0;
}

size_t session_output_ready(struct session *s)
{
    if (s->held_head < s->nheld)
        session_release(s, s->last_active_ms);
    if (s->held_head == s->nheld)
        return buf_size(&s->out);
    return (size_t)(s->held[s->held_head].pos - s->bytes_out);
}

void session_output_consume(struct session *s, size_t n)
{
    session_count_written(s, n);
    buf_consume(&s->out, n);
    s->bytes_out += n;
}

static bool session_on_send(struct session *s, const struct frame *f, uint64_t now)
{
    uint64_t rid = f->h.request_id;
    struct frame_send req;
    if (frame_parse_send(f, &req) != 0) {
        session_error(s, rid, FRAME_ERR_MALFORMED, "SEND body does not parse", now);
        return false;
    }
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    static const uint8_t empty = 0;
    const EVP_MD *sha256 = session_sha256();
    if (!sha256 ||
        EVP_Digest(req.len ? req.data : &empty, req.len, md, &mdlen, sha256, NULL) != 1 ||
        mdlen != FRAME_SHA256_LEN) {
        session_error(s, rid, FRAME_ERR_INTERNAL, "SHA-256 failed", now);
        return false;
    }
    uint64_t seq = 0;
    struct journal *j = s->env->journal;
    /* --ack-after replicated: what cannot be replicated now is not taken
     * (and not journaled); the client sends it elsewhere. */
    char why[160];
    if (s->env->forwarder && !forwarder_healthy(s->env->forwarder, why, sizeof(why))) {
        log_debug("send_unavailable", "session=%" PRIu64 " reason=\"%s\"", s->id, why);
        session_error(s, rid, FRAME_ERR_UNAVAILABLE, SESSION_UNAVAILABLE_TEXT, now);
        return false;
    }
    if (j) {
        struct journal_entry e = {
            .message_id = req.message_id,
            .name = s->client, .name_len = strlen(s->client),
            .peer = s->peer, .peer_len = strlen(s->peer),
            .cert = s->cert, .cert_len = s->cert_len,
            .producer = s->producer, .producer_len = strlen(s->producer),
            .data = req.data, .len = req.len,
        };
        char err[200];
        errno = 0;
        if (journal_append(j, &e, &seq, err, sizeof(err)) != 0) {
            /* Nothing is acknowledged that is not stored: the client sends
             * it again elsewhere. The detail (it names the journal's
             * directory) stays in the log; the client gets a fixed text and
             * the cause's class. */
            int cause = errno;
            log_debug("journal_refused", "session=%" PRIu64 " peer=%s error=\"%s\"", s->id,
                      s->peer, err);
            char text[SESSION_JOURNAL_TEXT_MAX];
            session_journal_text(text, sizeof(text), journal_held_full(j) ? -1 : cause);
            session_error(s, rid, FRAME_ERR_INTERNAL, text, now);
            return false;
        }
    }
    uint64_t pos = s->bytes_out + buf_size(&s->out);
    if (frame_append_ack(&s->out, rid, req.message_id, md, seq) != 0) {
        session_error(s, rid, FRAME_ERR_INTERNAL, NULL, now);
        return false;
    }
    if (seq && !session_stored(s, seq) && session_hold(s, pos, seq) != 0) {
        session_closed(s, "out_of_memory", now);
        return false;
    }
    return true;
}

static bool session_on_info(struct session *s, const struct frame *f, uint64_t now)
{
    char *text = session_info_json(s, now);
    bool ok = text && frame_append(&s->out, FRAME_INFO_REPLY, f->h.request_id, text,
                                   strlen(text)) == 0;
    free(text);
    if (!ok)
        session_error(s, f->h.request_id, FRAME_ERR_INTERNAL, NULL, now);
    return ok;
}

/* Answers one decoded request into the output; an ERROR reply instead
 * when the request is refused. */
static void session_on_frame(struct session *s, const struct frame *f, uint64_t now)
{
    uint64_t rid = f->h.request_id;
    uint8_t type = f->h.type;
    bool ok = false;

    /* A reply type is wrong wherever it comes, so that check goes before
     * the HELLO-first one (docs/PROTOCOL.md section 5.1): a PONG before
     * HELLO is unexpected, not not_ready. */
    if (frame_type_is_reply(type)) {
        session_error(s, rid, FRAME_ERR_UNEXPECTED, "replies are not requests", now);
        return;
    }
    if (!s->hello_seen && type != FRAME_HELLO) {
        session_error(s, rid, FRAME_ERR_NOT_READY, "HELLO must come first", now);
        return;
    }
    switch (type) {
    case FRAME_HELLO:
        ok = session_on_hello(s, f, now);
        break;
    case FRAME_PING:
        ok = frame_append(&s->out, FRAME_PONG, rid, f->payload, f->h.length) == 0;
        break;
    case FRAME_ECHO:
        ok = frame_append(&s->out, FRAME_ECHO_REPLY, rid, f->payload, f->h.length) == 0;
        break;
    case FRAME_SEND:
        ok = session_on_send(s, f, now);
        break;
    case FRAME_INFO:
        ok = session_on_info(s, f, now);
        break;
    case FRAME_BYE:
        ok = frame_append(&s->out, FRAME_BYE, rid, NULL, 0) == 0;
        if (ok)
            session_closing(s, "bye", now);
        break;
    default:
        /* frame_decode refuses unknown types; kept for a future type. */
        session_error(s, rid, FRAME_ERR_UNKNOWN_TYPE, NULL, now);
        return;
    }
    if (!ok) {
        /* A handler that refused has queued its ERROR already. */
        if (s->state == SESSION_OPEN)
            session_error(s, rid, FRAME_ERR_INTERNAL, NULL, now);
        return;
    }
    s->requests++;
    node_stats_add(&s->ws->requests, 1);
}

/* Below both limits on unanswered work: --max-output bytes of replies not
 * yet written, --max-inflight requests without a written reply (0: none). */
static bool session_below_limits(const struct session *s)
{
    return buf_size(&s->out) < s->env->max_output &&
           (s->env->max_inflight == 0 || s->inflight < s->env->max_inflight);
}

/* Answers every complete frame in p[0, len) while the session is below
 * its limits; *used gets the bytes answered (what follows waits, unparsed).
 * Returns true if anything changed. */
static bool session_answer(struct session *s, const uint8_t *p, size_t len, size_t *used,
                           uint64_t now)
{
    bool progress = false;
    *used = 0;
    while (s->state == SESSION_OPEN && session_below_limits(s)) {
        struct frame f;
        enum frame_error err = FRAME_ERR_NONE;
        memset(&f, 0, sizeof(f));
        size_t avail = len - *used;
        long n = avail ? frame_decode(p + *used, avail, s->env->max_frame, &f, &err) : 0;
        if (n < 0) {
            /* The header alone condemns the frame: nothing more is buffered. */
            session_error(s, f.h.request_id, err == FRAME_ERR_NONE ? FRAME_ERR_MALFORMED : err,
                          NULL, now);
            return true;
        }
        if (n == 0) {
            /* Every complete request is answered; what remains is partial. */
            if (s->draining && !s->hello_seen) {
                session_error(s, 0, FRAME_ERR_SHUTTING_DOWN, NULL, now);
                return true;
            }
            if (s->draining) {
                if (frame_append(&s->out, FRAME_BYE, 0, NULL, 0) != 0)
                    session_closed(s, "out_of_memory", now);
                else
                    session_closing(s, "drain", now);
                return true;
            }
            if (s->peer_closed) {
                session_closing(s, "peer_closed", now);
                return true;
            }
            break;
        }
        s->last_active_ms = now;
        s->inflight++; /* every request gets exactly one reply, ERROR included */
        session_on_frame(s, &f, now);
        *used += (size_t)n;
        progress = true;
    }
    return progress;
}

/* Answers the complete frames buffered in the input (see session_answer). */
static bool session_process(struct session *s, uint64_t now)
{
    size_t used = 0;
    bool progress = session_answer(s, buf_head(&s->in), buf_size(&s->in), &used, now);
    buf_consume(&s->in, used);
    session_trim(&s->in);
    return progress;
}

int session_feed(struct session *s, const void *data, size_t len, uint64_t now_ms)
{
    if (s->state != SESSION_OPEN)
        return 0; /* closing: further input is ignored */
    if (len > 0) {
        s->got_bytes = true;
        if (buf_append(&s->in, data, len) != 0) {
            session_closed(s, "out_of_memory", now_ms);
            session_account(s);
            return -1;
        }
        s->bytes_in += len;
    }
    session_process(s, now_ms);
    session_account(s);
    return 0;
}

static bool session_can_read(const struct session *s)
{
    return s->state == SESSION_OPEN && !s->draining && !s->peer_closed &&
           session_below_limits(s);
}

/* One TLS read into the input. Returns true if bytes arrived or the state
 * changed. */
static bool session_read(struct session *s, uint64_t now)
{
    size_t n = 0;
    enum tls_status st = tls_conn_read(s->tls, session_scratch, sizeof(session_scratch), &n);
    /* One socket read per wake-up: more bytes in the socket keep the
     * level-triggered fd ready, so another read now would mostly return
     * EAGAIN for the price of a syscall. Only bytes OpenSSL has already
     * taken in (epoll cannot see them) are read on at once. */
    s->read_more = st == TLS_DONE && tls_conn_has_pending(s->tls);
    switch (st) {
    case TLS_DONE: {
        s->read_wait = 0;
        if (n == 0)
            return false;
        s->bytes_in += n;
        /* With nothing buffered before them, the bytes are answered where
         * they landed and only what is left (a partial frame, or frames
         * over the limits) is copied into the input: a request that arrives
         * whole costs no copy and no input buffer. */
        size_t used = 0;
        if (buf_size(&s->in) == 0 && s->state == SESSION_OPEN)
            session_answer(s, session_scratch, n, &used, now);
        if (used < n && s->state == SESSION_OPEN &&
            buf_append(&s->in, session_scratch + used, n - used) != 0) {
            session_closed(s, "out_of_memory", now);
            return true;
        }
        return true;
    }
    case TLS_AGAIN:
        s->read_wait = tls_conn_events(s->tls);
        return false;
    case TLS_CLOSED:
        s->read_wait = 0;
        s->peer_closed = true;
        return true;
    case TLS_ERROR:
    default:
        log_debug("session_error", "session=%" PRIu64 " peer=%s op=read error=\"%s\"", s->id,
                  s->peer, tls_conn_error(s->tls));
        session_closed(s, "tls_error", now);
        return true;
    }
}

/* Writes as much of the output as the socket takes. Returns true if bytes
 * left or the state changed. */
static bool session_flush(struct session *s, uint64_t now)
{
    bool progress = false;
    if (s->held_head < s->nheld)
        session_release(s, now);
    size_t ready;
    while ((ready = session_output_ready(s)) > 0) {
        size_t n = 0;
        enum tls_status st = tls_conn_write(s->tls, buf_head(&s->out), ready, &n);
        if (st == TLS_DONE && n > 0) {
            session_count_written(s, n);
            buf_consume(&s->out, n);
            s->bytes_out += n;
            s->last_active_ms = now;
            s->write_wait = 0;
            progress = true;
            continue;
        }
        if (st == TLS_DONE || st == TLS_AGAIN) {
            s->write_wait = st == TLS_AGAIN ? tls_conn_events(s->tls) : 0;
            break;
        }
        log_debug("session_error", "session=%" PRIu64 " peer=%s op=write error=\"%s\"", s->id,
                  s->peer, st == TLS_CLOSED ? "peer closed" : tls_conn_error(s->tls));
        session_closed(s, st == TLS_CLOSED ? "peer_closed" : "tls_error", now);
        return true;
    }
    session_trim(&s->out);
    return progress;
}

/* The length of the longest prefix of t ending in a whole UTF-8 character
 * (JSON needs valid UTF-8; the identity may be cut at SESSION_CERT_ID_MAX). */
static size_t session_utf8_whole(const char *t, size_t len)
{
    size_t i = len, cont = 0;
    while (i > 0 && cont < 3 && ((unsigned char)t[i - 1] & 0xC0) == 0x80) {
        i--;
        cont++;
    }
    if (i == 0 || (unsigned char)t[i - 1] < 0xC0)
        return len; /* ends in ASCII (or is not UTF-8 to begin with) */
    unsigned char lead = (unsigned char)t[i - 1];
    size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
    return cont + 1 >= need ? len : i - 1;
}

static int session_hex_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* After the handshake: keeps the verified client certificate's digest and
 * identity (mTLS; nothing without a certificate). 0, or -1 out of memory. */
static int session_take_cert(struct session *s)
{
    char id[SESSION_CERT_ID_MAX + 1], hex[2 * JOURNAL_CERT_SHA256_LEN + 1];
    if (tls_conn_peer_identity(s->tls, id, sizeof(id)) != 0 ||
        tls_conn_peer_sha256(s->tls, hex) != 0)
        return 0;
    size_t idlen = session_utf8_whole(id, strlen(id));
    s->cert = malloc(JOURNAL_CERT_SHA256_LEN + idlen + 1);
    if (!s->cert)
        return -1;
    for (size_t i = 0; i < JOURNAL_CERT_SHA256_LEN; i++) {
        int hi = session_hex_nibble(hex[2 * i]), lo = session_hex_nibble(hex[2 * i + 1]);
        s->cert[i] = (uint8_t)((hi < 0 ? 0 : hi) << 4 | (lo < 0 ? 0 : lo));
    }
    memcpy(s->cert + JOURNAL_CERT_SHA256_LEN, id, idlen);
    s->cert[JOURNAL_CERT_SHA256_LEN + idlen] = '\0';
    s->cert_len = JOURNAL_CERT_SHA256_LEN + idlen;
    return 0;
}

static void session_handshake(struct session *s, uint64_t now)
{
    enum tls_status st = tls_conn_handshake(s->tls);
    switch (st) {
    case TLS_DONE:
        if (session_take_cert(s) != 0) {
            node_stats_add(&s->ws->handshakes_failed, 1);
            log_warn("session_create_failed", "peer=%s reason=out_of_memory", s->peer);
            session_closed(s, "out_of_memory", now);
            break;
        }
        s->state = SESSION_OPEN;
        s->hs_wait = 0;
        s->last_active_ms = now;
        node_stats_add(&s->ws->handshakes_ok, 1);
        log_debug("session_open",
                  "session=%" PRIu64 " peer=%s protocol=%s cipher=%s client_cert=\"%s\"", s->id,
                  s->peer, tls_conn_protocol(s->tls), tls_conn_cipher(s->tls), session_cert_id(s));
        break;
    case TLS_AGAIN:
        s->hs_wait = tls_conn_events(s->tls);
        break;
    case TLS_CLOSED:
    case TLS_ERROR:
    default:
        node_stats_add(&s->ws->handshakes_failed, 1);
        log_debug("handshake_failed", "session=%" PRIu64 " peer=%s error=\"%s\"", s->id, s->peer,
                  st == TLS_CLOSED ? "peer closed" : tls_conn_error(s->tls));
        session_closed(s, "handshake_failed", now);
        break;
    }
}

static void session_run(struct session *s, uint32_t events, uint64_t now_ms)
{
    s->rerun = false;
    if (!s->tls || s->state == SESSION_CLOSED)
        return;
    if (s->state == SESSION_HANDSHAKE) {
        /* Level-triggered epoll reports EPOLLIN only with bytes (or EOF)
         * to read: the client has started. */
        if (events & EPOLLIN)
            s->got_bytes = true;
        session_handshake(s, now_ms);
        if (s->state != SESSION_OPEN)
            return;
        /* The client may have sent its first frames with its Finished. */
    }
    bool any = false;
    s->read_more = true;
    int round;
    for (round = 0; round < SESSION_PUMP_MAX; round++) {
        bool progress = session_flush(s, now_ms);
        if (s->state == SESSION_CLOSED)
            return;
        progress |= session_process(s, now_ms);
        /* Read only after the replies so far are written or queued: with
         * the output above --max-output, or --max-inflight requests
         * unanswered, this is where reading stops. Bytes
         * OpenSSL already holds are read here too: read_more stays set
         * while it holds any. */
        if (s->read_more && session_can_read(s))
            progress |= session_read(s, now_ms);
        if (s->state == SESSION_CLOSED)
            return;
        if (s->state == SESSION_CLOSING && buf_size(&s->out) == 0) {
            tls_conn_shutdown(s->tls);
            session_closed(s, s->reason, now_ms);
            return;
        }
        any |= progress;
        if (!progress)
            break;
    }
    if (round == SESSION_PUMP_MAX) {
        s->rerun = true;
        return;
    }
    /* A hung-up or failed socket that let nothing move: give up on it, or
     * level-triggered epoll reports it forever. */
    if (!any && (events & (EPOLLERR | EPOLLHUP)))
        session_closed(s, "hangup", now_ms);
}

void session_handle(struct session *s, uint32_t events, uint64_t now_ms)
{
    session_run(s, events, now_ms);
    session_account(s);
}

bool session_slow_reader(const struct session *s)
{
    return s->state != SESSION_CLOSED && buf_size(&s->out) > 0 &&
           (s->held_head == s->nheld || s->held[s->held_head].pos > s->bytes_out);
}

void session_evict(struct session *s, uint64_t node_memory, uint64_t now_ms)
{
    if (s->state == SESSION_CLOSED)
        return;
    node_stats_add(&s->ws->memory_evictions, 1);
    log_info("session_evicted",
             "session=%" PRIu64 " peer=%s client=\"%s\" reason=max_session_memory "
             "memory=%zu unsent=%zu node_memory=%" PRIu64 " budget=%zu",
             s->id, s->peer, s->client, session_memory(s), buf_size(&s->out), node_memory,
             s->env->max_session_memory);
    s->reason = "memory_budget";
    session_closed(s, "memory_budget", now_ms);
}

uint32_t session_events(const struct session *s)
{
    if (!s->tls)
        return 0;
    switch (s->state) {
    case SESSION_HANDSHAKE:
        return s->hs_wait ? s->hs_wait : EPOLLIN;
    case SESSION_OPEN:
    case SESSION_CLOSING: {
        uint32_t ev = 0;
        if (session_can_read(s))
            ev |= s->read_wait ? s->read_wait : EPOLLIN;
        size_t ready = buf_size(&s->out);
        if (s->held_head < s->nheld)
            ready = (size_t)(s->held[s->held_head].pos - s->bytes_out);
        if (ready > 0)
            ev |= s->write_wait ? s->write_wait : EPOLLOUT;
        return ev;
    }
    case SESSION_CLOSED:
    default:
        return 0;
    }
}

/* A session that answered several requests since the last sweep keeps
 * OpenSSL's record buffers (no allocation per record); one that went quiet
 * gives them back, so idle sessions stay small. */
static void session_sweep_buffers(struct session *s)
{
    bool busy = s->requests - s->requests_at_sweep >= SESSION_BUSY_REQUESTS;
    s->requests_at_sweep = s->requests;
    if (busy != s->busy) {
        tls_conn_keep_buffers(s->tls, busy);
        s->busy = busy;
    }
}

static void session_sweep_timers(struct session *s, uint64_t now_ms)
{
    if (s->tls && s->state == SESSION_OPEN)
        session_sweep_buffers(s);
    switch (s->state) {
    case SESSION_HANDSHAKE:
        /* A bare TCP connection holds a slot for nothing: it gets a
         * shorter deadline than a handshake that has begun. */
        if (!s->got_bytes && s->env->first_byte_timeout_ms &&
            now_ms - s->created_ms >= s->env->first_byte_timeout_ms &&
            s->env->first_byte_timeout_ms < s->env->handshake_timeout_ms) {
            node_stats_add(&s->ws->first_byte_timeouts, 1);
            node_stats_add(&s->ws->handshakes_failed, 1);
            log_debug("handshake_failed", "session=%" PRIu64 " peer=%s error=first_byte_timeout",
                      s->id, s->peer);
            session_closed(s, "first_byte_timeout", now_ms);
            break;
        }
        if (now_ms - s->created_ms >= s->env->handshake_timeout_ms) {
            node_stats_add(&s->ws->handshakes_failed, 1);
            log_debug("handshake_failed", "session=%" PRIu64 " peer=%s error=timeout", s->id,
                      s->peer);
            session_closed(s, "handshake_timeout", now_ms);
        }
        break;
    case SESSION_OPEN: {
        /* The handshake timeout covers the HELLO too, from the accept. */
        const char *why = NULL;
        if (!s->hello_seen && now_ms - s->created_ms >= s->env->handshake_timeout_ms)
            why = "hello_timeout";
        else if (now_ms - s->last_active_ms >= s->env->idle_timeout_ms)
            why = "idle_timeout";
        if (!why)
            break;
        log_debug("session_timeout", "session=%" PRIu64 " peer=%s reason=%s", s->id, s->peer, why);
        /* Best effort: the ERROR goes out if the socket takes it soon. */
        if (frame_append_error(&s->out, 0, FRAME_ERR_TIMEOUT,
                               strcmp(why, "idle_timeout") == 0 ? "idle timeout"
                                                                : "no HELLO in time") != 0) {
            session_closed(s, "out_of_memory", now_ms);
            break;
        }
        session_closing(s, why, now_ms);
        session_handle(s, 0, now_ms);
        break;
    }
    case SESSION_CLOSING:
        if (now_ms - s->closing_ms >= SESSION_CLOSE_LINGER_MS)
            session_closed(s, "flush_timeout", now_ms);
        break;
    case SESSION_CLOSED:
    default:
        break;
    }
}

void session_sweep(struct session *s, uint64_t now_ms)
{
    session_sweep_timers(s, now_ms);
    session_account(s);
}

void session_drain(struct session *s, uint64_t now_ms)
{
    switch (s->state) {
    case SESSION_HANDSHAKE:
        session_closed(s, "drain", now_ms);
        break;
    case SESSION_OPEN:
        s->draining = true;
        if (s->tls)
            session_handle(s, 0, now_ms);
        else
            session_process(s, now_ms);
        session_account(s);
        break;
    case SESSION_CLOSING:
    case SESSION_CLOSED:
    default:
        break;
    }
}
