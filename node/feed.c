/* feed: one thread with a ROUTER socket (and, with CURVE, the ZAP handler
 * of its own context); each consumer has a journal reader (an open segment
 * and an offset), a next seq and a credit. Records come from disk, never
 * from the workers, so a slow consumer costs a file offset, not memory,
 * and never holds up a worker loop. */
#include "feed.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <zmq.h>

#include "buf.h"
#include "feed_msg.h"
#include "errbuf.h"
#include "log.h"
#include "mono.h"
#include "zap.h"

#define FEED_ID_MAX 255
#define FEED_BURST 256        /* records per consumer per turn, for fairness */
#define FEED_IDLE_WAIT_MS 1000
#define FEED_SNDHWM (FEED_CREDIT_MAX * 2)
#define FEED_ZAP_BATCH 64          /* ZAP requests answered per turn */
#define FEED_REFUSED_LOG_MS 1000   /* refused handshakes: one log line a second at most */

struct feed_consumer {
    bool used;
    uint8_t id[FEED_ID_MAX];      /* ROUTER routing id */
    size_t idlen;
    struct journal_reader *reader;
    uint64_t credit;              /* records it can still take */
    uint64_t last_seen_ms;
    uint64_t sent;
    char durable[FEED_NAME_MAX + 1]; /* consumer name; "": not durable */
};

struct feed {
    void *zctx;
    void *sock;                   /* ROUTER, used by the thread only once it runs */
    struct zap_handler *zap;      /* CURVE only: admits the allowed consumer keys */
    uint64_t refused;             /* handshakes refused since the last log line */
    uint64_t refused_logged_ms;
    int wake_fd;                  /* eventfd the journal writes */
    int stop_fd;                  /* eventfd feed_free writes */
    struct journal *journal;
    char node_id[FEED_ID_MAX + 1];
    pthread_t thread;
    bool started;
    struct feed_consumer consumers[FEED_CONSUMERS_MAX];
    struct buf raw;               /* one record being sent */
};

/* Sends [id][type + body]; body may be two parts (head, tail) to avoid a
 * copy. 0, 1 when the pipe is full (try later), -1 when the consumer is gone. */
static int feed_send(struct feed *f, struct feed_consumer *c, uint8_t type, const void *body,
                     size_t len)
{
    /* Built before the routing frame goes: once that is out, the ROUTER
     * is mid-message and nothing may fail before the body follows. */
    zmq_msg_t m;
    if (zmq_msg_init_size(&m, len + 1) != 0)
        return -1;
    uint8_t *p = zmq_msg_data(&m);
    p[0] = type;
    if (len)
        memcpy(p + 1, body, len);
    if (zmq_send(f->sock, c->id, c->idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        int e = zmq_errno();
        zmq_msg_close(&m);
        return e == EAGAIN ? 1 : -1;
    }
    /* The routing frame is out: the body must follow, so it may block for
     * the moment the pipe needs (credit keeps it below the HWM). */
    int rc = zmq_msg_send(&m, f->sock, 0);
    if (rc < 0) {
        zmq_msg_close(&m);
        return -1;
    }
    return 0;
}

static void feed_drop(struct feed *f, struct feed_consumer *c, const char *why)
{
    log_info("feed_consumer_gone", "reason=\"%s\" sent=%" PRIu64 " next_seq=%" PRIu64, why,
             c->sent, c->reader ? journal_reader_seq(c->reader) : 0);
    journal_reader_free(c->reader);
    memset(c, 0, sizeof(*c));
    (void)f;
}

static struct feed_consumer *feed_find(struct feed *f, const uint8_t *id, size_t idlen,
                                       bool create)
{
    struct feed_consumer *free_slot = NULL;
    for (int i = 0; i < FEED_CONSUMERS_MAX; i++) {
        struct feed_consumer *c = &f->consumers[i];
        if (c->used && c->idlen == idlen && memcmp(c->id, id, idlen) == 0)
            return c;
        if (!c->used && !free_slot)
            free_slot = c;
    }
    if (!create || !free_slot)
        return NULL;
    free_slot->used = true;
    memcpy(free_slot->id, id, idlen);
    free_slot->idlen = idlen;
    return free_slot;
}

/* Ends a consumer's subscription with ERROR code + text (the code is what
 * the consumer acts on). */
static void feed_error_to(struct feed *f, const uint8_t *id, size_t idlen, enum feed_err code,
                          const char *text)
{
    struct feed_consumer tmp;
    memset(&tmp, 0, sizeof(tmp));
    memcpy(tmp.id, id, idlen);
    tmp.idlen = idlen;
    uint8_t m[2 + FEED_ERROR_TEXT_MAX];
    size_t tl = strlen(text);
    struct feed_msg e = {.type = FEED_MSG_ERROR, .code = (uint8_t)code,
                         .body = (const uint8_t *)text,
                         .body_len = tl > FEED_ERROR_TEXT_MAX ? FEED_ERROR_TEXT_MAX : tl};
    size_t n = feed_msg_encode(&e, m, sizeof(m));
    if (n)
        (void)feed_send(f, &tmp, m[0], m + 1, n - 1);
}

static void feed_subscribe(struct feed *f, const uint8_t *id, size_t idlen,
                           const struct feed_msg *m, uint64_t now)
{
    char name[FEED_NAME_MAX + 1] = "";
    if (m->name)
        snprintf(name, sizeof(name), "%.*s", (int)m->name_len, m->name);
    uint64_t confirmed = 0;
    if (name[0] && journal_consumer_position(f->journal, name, &confirmed) != 0) {
        char text[160];
        snprintf(text, sizeof(text), "consumer %s is not configured on this node "
                 "(--journal-consumers)", name);
        feed_error_to(f, id, idlen, FEED_ERR_UNKNOWN_NAME, text);
        return;
    }
    struct feed_consumer *c = feed_find(f, id, idlen, true);
    if (!c) {
        feed_error_to(f, id, idlen, FEED_ERR_TOO_MANY, "too many consumers");
        return;
    }
    uint64_t from = m->seq;
    uint32_t credit = m->credit;
    if (from == 0)
        from = name[0] ? confirmed + 1 : journal_durable_seq(f->journal) + 1;
    journal_reader_free(c->reader);
    c->reader = journal_reader_new(journal_dir(f->journal), from);
    if (!c->reader) {
        feed_error_to(f, id, idlen, FEED_ERR_INTERNAL, "out of memory");
        memset(c, 0, sizeof(*c));
        return;
    }
    c->credit = credit > FEED_CREDIT_MAX ? FEED_CREDIT_MAX : credit;
    c->last_seen_ms = now;
    c->sent = 0;
    snprintf(c->durable, sizeof(c->durable), "%s", name);
    uint8_t w[FEED_MSG_MAX];
    struct feed_msg wm = {.type = FEED_MSG_WELCOME, .name = f->node_id,
                          .name_len = strlen(f->node_id), .seq = journal_first_seq(f->journal),
                          .next_seq = journal_next_seq(f->journal)};
    size_t wl = feed_msg_encode(&wm, w, sizeof(w));
    if (wl == 0 || feed_send(f, c, w[0], w + 1, wl - 1) < 0)
        feed_drop(f, c, "send failed");
    else
        log_info("feed_subscribe", "from_seq=%" PRIu64 " credit=%u durable=%s", from, credit,
                 name[0] ? name : "-");
}

/* Everything waiting on the ROUTER. */
static void feed_on_readable(struct feed *f, uint64_t now)
{
    for (int budget = 0; budget < 1024; budget++) {
        uint8_t id[FEED_ID_MAX + 1], body[FEED_MSG_MAX];
        int idn = zmq_recv(f->sock, id, sizeof(id), ZMQ_DONTWAIT);
        if (idn < 0)
            return;
        int more = 0;
        size_t ml = sizeof(more);
        if (zmq_getsockopt(f->sock, ZMQ_RCVMORE, &more, &ml) != 0) {
            log_error("feed_recv_failed", "error=\"%s\"", zmq_strerror(zmq_errno()));
            return;
        }
        if (!more)
            continue;
        int bn = zmq_recv(f->sock, body, sizeof(body), ZMQ_DONTWAIT);
        /* Anything beyond two frames is not ours: drain it. */
        for (;;) {
            more = 0;
            ml = sizeof(more);
            if (zmq_getsockopt(f->sock, ZMQ_RCVMORE, &more, &ml) != 0 || !more)
                break;
            uint8_t junk[64];
            if (zmq_recv(f->sock, junk, sizeof(junk), ZMQ_DONTWAIT) < 0)
                break;
            bn = -1;
        }
        if (idn > FEED_ID_MAX || bn < 1 || (size_t)bn > sizeof(body))
            continue; /* oversized or empty: not a consumer message */
        size_t idlen = (size_t)idn, len = (size_t)bn;
        struct feed_msg m;
        if (feed_msg_decode(body, len, &m) != 0) {
            bool known = body[0] == FEED_MSG_SUBSCRIBE || body[0] == FEED_MSG_CREDIT ||
                         body[0] == FEED_MSG_CONFIRM || body[0] == FEED_MSG_BYE;
            struct feed_consumer *c = feed_find(f, id, idlen, false);
            feed_error_to(f, id, idlen, known ? FEED_ERR_MALFORMED : FEED_ERR_UNKNOWN_TYPE,
                          known ? "malformed message" : "unknown message type");
            if (c)
                feed_drop(f, c, "malformed message");
            continue;
        }
        struct feed_consumer *c;
        switch (m.type) {
        case FEED_MSG_SUBSCRIBE:
            feed_subscribe(f, id, idlen, &m, now);
            break;
        case FEED_MSG_CREDIT:
            c = feed_find(f, id, idlen, false);
            if (!c) {
                feed_error_to(f, id, idlen, FEED_ERR_NOT_SUBSCRIBED, "not subscribed");
                break;
            }
            c->credit += m.credit;
            if (c->credit > FEED_CREDIT_MAX)
                c->credit = FEED_CREDIT_MAX;
            c->last_seen_ms = now;
            break;
        case FEED_MSG_CONFIRM: {
            c = feed_find(f, id, idlen, false);
            if (!c || !c->durable[0]) {
                feed_error_to(f, id, idlen, c ? FEED_ERR_NOT_DURABLE : FEED_ERR_NOT_SUBSCRIBED,
                              c ? "CONFIRM needs a durable subscription" : "not subscribed");
                break;
            }
            c->last_seen_ms = now;
            char err[256];
            if (journal_consumer_confirm(f->journal, c->durable, m.seq, err, sizeof(err)) != 0) {
                log_warn("feed_confirm_failed", "consumer=%s error=\"%s\"", c->durable, err);
                feed_error_to(f, id, idlen, FEED_ERR_CONFIRM, "confirm failed");
                feed_drop(f, c, "confirm failed");
            }
            break;
        }
        case FEED_MSG_BYE:
            c = feed_find(f, id, idlen, false);
            if (c)
                feed_drop(f, c, "bye");
            break;
        default: /* a node -> consumer type sent to the node */
            feed_error_to(f, id, idlen, FEED_ERR_UNKNOWN_TYPE, "unknown message type");
            break;
        }
    }
}

/* Sends what each consumer may take. Returns true if some consumer could
 * take more right away (the loop then does not wait). */
static bool feed_pump(struct feed *f, uint64_t now)
{
    bool more = false;
    for (int i = 0; i < FEED_CONSUMERS_MAX; i++) {
        struct feed_consumer *c = &f->consumers[i];
        if (!c->used)
            continue;
        if (now - c->last_seen_ms > FEED_CONSUMER_TIMEOUT_MS) {
            feed_drop(f, c, "timeout");
            continue;
        }
        for (int n = 0; n < FEED_BURST && c->credit > 0; n++) {
            struct journal_record rec;
            char err[512];
            /* Durable records only, never a lost one: its client was told
             * it failed and sends it again, maybe elsewhere. */
            int r = journal_read_next(f->journal, c->reader, &f->raw, &rec, err, sizeof(err));
            if (r == 0)
                break;
            if (r < 0) {
                log_error("feed_read_failed", "error=\"%s\"", err);
                /* The detail (paths) stays in the log. */
                feed_error_to(f, c->id, c->idlen, FEED_ERR_JOURNAL, "journal read failed");
                feed_drop(f, c, "journal read failed");
                break;
            }
            int s = feed_send(f, c, FEED_MSG_RECORD, buf_head(&f->raw), buf_size(&f->raw));
            if (s < 0) {
                feed_drop(f, c, "send failed");
                break;
            }
            if (s > 0) {
                /* Pipe full: the record is read again next turn. */
                journal_reader_free(c->reader);
                c->reader = journal_reader_new(journal_dir(f->journal), rec.seq);
                if (!c->reader)
                    feed_drop(f, c, "out of memory");
                break;
            }
            c->credit--;
            c->sent++;
            if (n == FEED_BURST - 1 && c->credit > 0)
                more = true;
        }
    }
    return more;
}

/* The ZAP handler refused a consumer's handshake: its key is not in
 * --feed-curve-allow. A refused client reconnects every 100 ms, so the
 * lines are counted and written at most once a second. */
static void feed_on_refused(void *arg, const struct zap_decision *d)
{
    struct feed *f = arg;
    f->refused++;
    uint64_t now = mono_now_ms();
    if (f->refused_logged_ms && now - f->refused_logged_ms < FEED_REFUSED_LOG_MS)
        return;
    log_warn("feed_refused", "address=%s key=\"%s\" reason=\"%s\" refused=%" PRIu64, d->address,
             d->key_z85[0] ? d->key_z85 : "none", d->reason, f->refused);
    f->refused = 0;
    f->refused_logged_ms = now;
}

static void *feed_thread(void *arg)
{
    struct feed *f = arg;
    bool busy = false;
    for (;;) {
        zmq_pollitem_t items[4] = {
            {.socket = f->sock, .events = ZMQ_POLLIN},
            {.fd = f->wake_fd, .events = ZMQ_POLLIN},
            {.fd = f->stop_fd, .events = ZMQ_POLLIN},
            {.socket = f->zap ? zap_handler_socket(f->zap) : NULL, .events = ZMQ_POLLIN},
        };
        int rc = zmq_poll(items, f->zap ? 4 : 3, busy ? 0 : FEED_IDLE_WAIT_MS);
        if (rc < 0) {
            if (zmq_errno() == EINTR)
                continue;
            log_error("feed_poll_failed", "error=\"%s\"", zmq_strerror(zmq_errno()));
            break;
        }
        if (items[2].revents & ZMQ_POLLIN)
            break;
        /* Before the ROUTER: a handshake waits on this answer. */
        if (f->zap && (items[3].revents & ZMQ_POLLIN))
            (void)zap_handler_drain(f->zap, FEED_ZAP_BATCH, feed_on_refused, f);
        uint64_t now = mono_now_ms();
        if (items[1].revents & ZMQ_POLLIN) {
            uint64_t v;
            while (read(f->wake_fd, &v, sizeof(v)) < 0 && errno == EINTR)
                ;
        }
        /* ZMQ_FD is edge-triggered: read until empty every turn. */
        feed_on_readable(f, now);
        busy = feed_pump(f, now);
    }
    return NULL;
}

/* Is the endpoint reachable from this host only? ipc:// and inproc://, or
 * tcp:// on 127.0.0.0/8, localhost or [::1]. */
static bool feed_endpoint_local(const char *ep)
{
    if (strncmp(ep, "ipc://", 6) == 0 || strncmp(ep, "inproc://", 9) == 0)
        return true;
    if (strncmp(ep, "tcp://", 6) != 0)
        return false;
    const char *h = ep + 6;
    const char *semi = strchr(h, ';'); /* "source;dest" form: judge the bound side */
    if (semi)
        return false;
    return strncmp(h, "127.", 4) == 0 || strncmp(h, "localhost:", 10) == 0 ||
           strncmp(h, "[::1]:", 6) == 0;
}

/* CURVE or plaintext, from the node's keys and the --feed-* settings; the
 * contradictions are refused by name. 0 (*curve set), or -1 with err. */
static int feed_choose_security(const struct feed_config *cfg, bool *curve, char *err,
                                size_t errlen)
{
    bool have_allow = cfg->curve_allow && cfg->curve_allow[0];
    *curve = false;
    if (cfg->plaintext) {
        if (have_allow) {
            errbuf_setf(err, errlen, "--feed-plaintext contradicts --feed-curve-allow: pass one "
                        "or the other");
            return -1;
        }
        return 0;
    }
    if (!cfg->curve_keys) {
        if (have_allow) {
            errbuf_setf(err, errlen, "--feed-curve-allow needs the node's CURVE key "
                        "(--curve-secret), which is the feed's server key");
            return -1;
        }
        return 0; /* a node without keys: today's plaintext feed, loopback only */
    }
    if (!have_allow) {
        errbuf_setf(err, errlen, "the node has a CURVE key (--curve-secret), so its feed is "
                    "CURVE: give --feed-curve-allow DIR|FILE (the consumers' public keys, from "
                    "`berth keygen`), or --feed-plaintext for an unauthenticated loopback feed");
        return -1;
    }
    *curve = true;
    return 0;
}

/* Loads --feed-curve-allow, warns when others may write it, and binds the
 * ZAP handler on the feed's context: before the ROUTER exists, since
 * libzmq admits every CURVE client of a context without one. 0 or -1. */
static int feed_setup_zap(struct feed *f, const char *path, char *err, size_t errlen)
{
    char why[512], which[4096];
    unsigned mode = 0;
    if (keys_check_mode(path, KEYS_FILE_ALLOWLIST, &mode, which, sizeof(which)) == KEYS_MODE_OPEN)
        log_warn("key_file_open", "setting=--feed-curve-allow path=\"%s\" mode=%04o "
                 "detail=\"%s\"", which, mode, keys_mode_advice(KEYS_FILE_ALLOWLIST));
    struct zap_allowlist *a = zap_allowlist_load(path, why, sizeof(why));
    if (!a) {
        errbuf_setf(err, errlen, "--feed-curve-allow: %s", why);
        return -1;
    }
    size_t n = zap_allowlist_size(a);
    f->zap = zap_handler_new(f->zctx, a, why, sizeof(why)); /* takes a */
    if (!f->zap) {
        errbuf_setf(err, errlen, "--feed-curve-allow: %s", why);
        return -1;
    }
    log_info("feed_security", "mode=curve allowed_keys=%zu allow=\"%s\"", n, path);
    return 0;
}

struct feed *feed_new(const struct feed_config *cfg, char *err, size_t errlen)
{
    bool curve;
    if (feed_choose_security(cfg, &curve, err, errlen) != 0)
        return NULL;
    /* Plaintext, the feed has neither authentication nor encryption: every
     * payload goes to whoever connects. CURVE authenticates and encrypts. */
    if (!curve && !feed_endpoint_local(cfg->endpoint) && !cfg->insecure) {
        errbuf_setf(err, errlen, "%s is reachable from other hosts and the feed is neither "
                    "authenticated nor encrypted: bind it to 127.0.0.1, [::1] or ipc://, or "
                    "pass --feed-insecure (docs/SECURITY.md)", cfg->endpoint);
        return NULL;
    }
    if (!curve && !feed_endpoint_local(cfg->endpoint))
        log_warn("feed_insecure", "endpoint=%s reason=\"--feed-insecure: every journaled "
                 "payload goes unencrypted to anyone who connects\"", cfg->endpoint);

    struct feed *f = calloc(1, sizeof(*f));
    if (!f) {
        errbuf_setf(err, errlen, "out of memory");
        return NULL;
    }
    f->wake_fd = f->stop_fd = -1;
    f->journal = cfg->journal;
    snprintf(f->node_id, sizeof(f->node_id), "%s", cfg->node_id);
    buf_init(&f->raw);
    f->zctx = zmq_ctx_new();
    if (!f->zctx) {
        errbuf_setf(err, errlen, "zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (curve && feed_setup_zap(f, cfg->curve_allow, err, errlen) != 0)
        goto fail;
    f->sock = zmq_socket(f->zctx, ZMQ_ROUTER);
    int one = 1, hwm = FEED_SNDHWM, linger = 0;
    if (!f->sock || zmq_setsockopt(f->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof(one)) != 0 ||
        zmq_setsockopt(f->sock, ZMQ_SNDHWM, &hwm, sizeof(hwm)) != 0 ||
        zmq_setsockopt(f->sock, ZMQ_LINGER, &linger, sizeof(linger)) != 0) {
        errbuf_setf(err, errlen, "zmq socket: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    /* Set before the bind: a connection is CURVE or not from its greeting. */
    if (curve && (zmq_setsockopt(f->sock, ZMQ_CURVE_SERVER, &one, sizeof(one)) != 0 ||
                  zmq_setsockopt(f->sock, ZMQ_CURVE_SECRETKEY, cfg->curve_keys->secret_key,
                                 KEYS_LEN) != 0 ||
                  zmq_setsockopt(f->sock, ZMQ_ZAP_DOMAIN, ZAP_DOMAIN, strlen(ZAP_DOMAIN)) != 0)) {
        errbuf_setf(err, errlen, "CURVE server set-up (libzmq built without CURVE?): %s",
                    zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (zmq_bind(f->sock, cfg->endpoint) != 0) {
        errbuf_setf(err, errlen, "bind: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    f->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    f->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (f->wake_fd < 0 || f->stop_fd < 0) {
        errbuf_setf(err, errlen, "eventfd: %s", strerror(errno));
        goto fail;
    }
    if (journal_add_waiter(f->journal, f->wake_fd) != 0) {
        errbuf_setf(err, errlen, "journal: too many waiters");
        goto fail;
    }
    int rc = pthread_create(&f->thread, NULL, feed_thread, f);
    if (rc != 0) {
        errbuf_setf(err, errlen, "pthread_create: %s", strerror(rc));
        goto fail;
    }
    f->started = true;
    if (curve) {
        char pub[KEYS_Z85_LEN + 1];
        keys_encode(cfg->curve_keys->public_key, pub);
        log_info("feed_listen", "endpoint=%s security=curve public_key=%s", cfg->endpoint, pub);
    } else {
        log_info("feed_listen", "endpoint=%s security=plaintext", cfg->endpoint);
    }
    return f;
fail:
    feed_free(f);
    return NULL;
}

void feed_free(struct feed *f)
{
    if (!f)
        return;
    if (f->started) {
        uint64_t one = 1;
        if (write(f->stop_fd, &one, sizeof(one)) < 0)
            log_warn("feed_stop_failed", "error=\"%s\"", strerror(errno));
        pthread_join(f->thread, NULL);
    }
    if (f->journal && f->wake_fd >= 0)
        journal_remove_waiter(f->journal, f->wake_fd);
    for (int i = 0; i < FEED_CONSUMERS_MAX; i++)
        journal_reader_free(f->consumers[i].reader);
    if (f->sock)
        zmq_close(f->sock);
    zap_handler_free(f->zap); /* after the ROUTER it guards, before the context ends */
    if (f->zctx) {
        int rc;
        do
            rc = zmq_ctx_term(f->zctx);
        while (rc != 0 && zmq_errno() == EINTR);
    }
    if (f->wake_fd >= 0)
        close(f->wake_fd);
    if (f->stop_fd >= 0)
        close(f->stop_fd);
    buf_release(&f->raw);
    free(f);
}
