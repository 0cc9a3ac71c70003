/* forwarder: one thread streams durable records from the journal to the
 * engine, keeping up to a window of them in flight. The engine's ack
 * callback (its own threads) marks records in a ring and wakes the thread,
 * which advances the forwarded seq over the acknowledged prefix, wakes the
 * workers holding ACKs for it (through the journal's waiters) and, at most
 * every FORWARDER_CONFIRM_MS, confirms it as the journal consumer's durable
 * position. A failure (an error outcome, or the oldest record waiting past
 * the timeout) abandons what is in flight and starts again from the first
 * record not acknowledged, after a backoff; the engine drops re-sends by
 * message id. */
#include "forwarder.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "errbuf.h"
#include "log.h"
#include "mono.h"

#define FORWARDER_BACKOFF_MIN_MS 50
#define FORWARDER_BACKOFF_MAX_MS 2000
#define FORWARDER_IDLE_WAIT_MS 200
#define FORWARDER_BUSY_WAIT_MS 20   /* with records in flight: look at the oldest this often */
#define FORWARDER_CONFIRM_MS 50     /* the durable position trails by at most this */
#define FORWARDER_REASON_MAX 200

/* One record in flight. */
struct forwarder_slot {
    uint64_t seq;
    uint64_t ts;        /* its Unix ms timestamp (lag) */
    uint64_t sent_ms;   /* mono ms it was sent */
    bool acked;
};

struct forwarder {
    struct forwarder_config cfg;
    char consumer[JOURNAL_CONSUMER_NAME_MAX + 1];
    pthread_t thread;
    bool started;
    int wake_fd;                       /* the journal and the ack callback write it */
    int stop_fd;                       /* forwarder_free writes it */
    struct journal_reader *reader;     /* at the next record to send */
    struct buf raw;                    /* the record being sent */
    atomic_uint_fast64_t forwarded;    /* forwarder_seq */
    atomic_bool healthy;
    uint64_t confirmed;                /* thread only: last seq confirmed durably */
    uint64_t confirmed_ms;
    pthread_mutex_t mu;                /* everything below */
    struct forwarder_slot *ring;       /* window slots, oldest at head */
    size_t head, count;
    bool failed;                       /* an error outcome since the last restart */
    char fail_why[FORWARDER_REASON_MAX];
    char reason[FORWARDER_REASON_MAX];
    uint64_t failing_since_ms;         /* mono ms of the first failure since the last success */
    uint64_t stalled_ts;               /* after a restart: Unix ms of the first record not
                                        * acknowledged (lag while nothing is in flight) */
    uint64_t publish_errors, duplicates, total;
};

static void forwarder_wake_self(struct forwarder *f)
{
    uint64_t one = 1;
    ssize_t w;
    do
        w = write(f->wake_fd, &one, sizeof(one));
    while (w < 0 && errno == EINTR);
    /* EAGAIN: the counter is saturated, the thread is woken anyway. */
}

/* The engine's outcome for seq (its threads). Records come back in any
 * order; those no longer in flight (abandoned) are ignored. */
static void forwarder_on_ack(void *arg, uint64_t seq, bool ok, bool duplicate, const char *why)
{
    struct forwarder *f = arg;
    pthread_mutex_lock(&f->mu);
    size_t lo = 0, hi = f->count;
    size_t cap = f->cfg.window;
    while (lo < hi) { /* seqs increase along the ring */
        size_t mid = lo + (hi - lo) / 2;
        uint64_t s = f->ring[(f->head + mid) % cap].seq;
        if (s < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < f->count && f->ring[(f->head + lo) % cap].seq == seq) {
        if (ok) {
            f->ring[(f->head + lo) % cap].acked = true;
            if (duplicate)
                f->duplicates++;
        } else if (!f->failed) {
            f->failed = true;
            snprintf(f->fail_why, sizeof(f->fail_why), "%s", why ? why : "not stored");
        }
    }
    pthread_mutex_unlock(&f->mu);
    forwarder_wake_self(f);
}

static void forwarder_set_health(struct forwarder *f, bool ok, const char *why)
{
    pthread_mutex_lock(&f->mu);
    if (ok)
        f->failing_since_ms = 0;
    bool was = atomic_load(&f->healthy);
    if (!ok)
        snprintf(f->reason, sizeof(f->reason), "%s: %s", f->cfg.engine.name, why);
    if (ok && !was)
        log_info("forwarder_healthy", "engine=%s was=\"%s\"", f->cfg.engine.name, f->reason);
    else if (!ok && was)
        log_error("forwarder_unhealthy", "engine=%s reason=\"%s\"", f->cfg.engine.name, why);
    atomic_store(&f->healthy, ok);
    pthread_mutex_unlock(&f->mu);
    /* Sessions holding ACKs for the forwarder answer them with ERROR once
     * it cannot deliver: wake them to look. */
    if (was && !ok)
        journal_wake(f->cfg.journal);
}

/* A failure: unhealthy when definite, or once failures have lasted
 * unhealthy_after_ms; until then the records wait (held ACKs too). */
static void forwarder_failed(struct forwarder *f, bool definite, const char *why)
{
    uint64_t now = mono_now_ms();
    pthread_mutex_lock(&f->mu);
    if (f->failing_since_ms == 0)
        f->failing_since_ms = now ? now : 1;
    bool long_enough = now - f->failing_since_ms >= f->cfg.unhealthy_after_ms;
    pthread_mutex_unlock(&f->mu);
    if (definite || long_enough)
        forwarder_set_health(f, false, why);
    else
        log_debug("forwarder_retry", "engine=%s reason=\"%s\"", f->cfg.engine.name, why);
}

/* Waits up to ms for a wake-up; false once told to stop. */
static bool forwarder_wait(struct forwarder *f, uint64_t ms)
{
    struct pollfd p[2] = {{.fd = f->wake_fd, .events = POLLIN}, {.fd = f->stop_fd, .events = POLLIN}};
    int rc = poll(p, 2, (int)ms);
    if (rc < 0 && errno != EINTR) {
        log_error("forwarder_poll_failed", "error=\"%s\"", strerror(errno));
        return false;
    }
    if (rc > 0 && (p[1].revents & POLLIN))
        return false;
    if (rc > 0 && (p[0].revents & POLLIN)) {
        uint64_t v;
        while (read(f->wake_fd, &v, sizeof(v)) < 0 && errno == EINTR)
            ;
    }
    return true;
}

static int forwarder_seek(struct forwarder *f, uint64_t seq)
{
    journal_reader_free(f->reader);
    f->reader = journal_reader_new(journal_dir(f->cfg.journal), seq);
    return f->reader ? 0 : -1;
}

/* Moves the forwarded seq over the acknowledged prefix of the ring; 1 when
 * it moved. */
static int forwarder_advance(struct forwarder *f, uint64_t now)
{
    uint64_t last = 0;
    pthread_mutex_lock(&f->mu);
    while (f->count && f->ring[f->head].acked) {
        f->stalled_ts = 0;
        last = f->ring[f->head].seq;
        f->head = (f->head + 1) % f->cfg.window;
        f->count--;
        f->total++;
    }
    pthread_mutex_unlock(&f->mu);
    if (last) {
        /* Published first, then woken: an ACK waiting in --ack-after
         * replicated needs only the engine's word. */
        atomic_store_explicit(&f->forwarded, last, memory_order_release);
        journal_wake(f->cfg.journal);
        forwarder_set_health(f, true, NULL);
    }
    /* The durable position trails a little: a restart re-sends at most
     * that much, which the engine drops by message id. */
    uint64_t fw = atomic_load(&f->forwarded);
    if (fw > f->confirmed && (now - f->confirmed_ms >= FORWARDER_CONFIRM_MS || f->count == 0)) {
        char err[256];
        if (journal_consumer_confirm(f->cfg.journal, f->consumer, fw, err, sizeof(err)) == 0)
            f->confirmed = fw;
        else
            log_warn("forwarder_confirm_failed", "consumer=%s error=\"%s\"", f->consumer, err);
        f->confirmed_ms = now;
    }
    return last ? 1 : 0;
}

/* After a failure: forget what is in flight, start again from the first
 * record not acknowledged. */
static void forwarder_restart(struct forwarder *f, const char *why)
{
    f->cfg.engine.abandon(f->cfg.engine.impl);
    pthread_mutex_lock(&f->mu);
    uint64_t from = f->count ? f->ring[f->head].seq : atomic_load(&f->forwarded) + 1;
    if (f->count)
        f->stalled_ts = f->ring[f->head].ts;
    f->head = f->count = 0;
    f->failed = false;
    f->publish_errors++;
    pthread_mutex_unlock(&f->mu);
    forwarder_failed(f, false, why);
    if (forwarder_seek(f, from) != 0)
        log_error("forwarder_seek_failed", "error=\"out of memory\"");
}

/* Sends what is durable while the window has room. 1 sent some, 0 none
 * waiting (or a send failed: f->failed says so), -1 the journal could not
 * be read. */
static int forwarder_fill(struct forwarder *f, uint64_t now, char *err, size_t errlen)
{
    int sent = 0;
    for (;;) {
        pthread_mutex_lock(&f->mu);
        bool room = f->count < f->cfg.window;
        pthread_mutex_unlock(&f->mu);
        if (!room)
            break;
        struct journal_record rec;
        int r = journal_read_next(f->cfg.journal, f->reader, &f->raw, &rec, err, errlen);
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        if (f->cfg.engine.send(f->cfg.engine.impl, &rec, err, errlen) != 0) {
            /* Not sent: the restart starts again at the first record not
             * acknowledged, which is this one or one before it. */
            pthread_mutex_lock(&f->mu);
            if (!f->failed) {
                f->failed = true;
                snprintf(f->fail_why, sizeof(f->fail_why), "%.*s", (int)sizeof(f->fail_why) - 1, err);
            }
            pthread_mutex_unlock(&f->mu);
            return 0;
        }
        pthread_mutex_lock(&f->mu);
        struct forwarder_slot *sl = &f->ring[(f->head + f->count) % f->cfg.window];
        *sl = (struct forwarder_slot){.seq = rec.seq, .ts = rec.timestamp_ms, .sent_ms = now};
        f->count++;
        pthread_mutex_unlock(&f->mu);
        sent = 1;
    }
    return sent;
}

static void *forwarder_thread(void *arg)
{
    struct forwarder *f = arg;
    uint64_t backoff = FORWARDER_BACKOFF_MIN_MS, last_probe = 0;
    for (;;) {
        uint64_t now = mono_now_ms();
        forwarder_advance(f, now);
        /* A failed outcome, or the oldest record waiting too long. */
        pthread_mutex_lock(&f->mu);
        bool failed = f->failed;
        bool late = f->count && now - f->ring[f->head].sent_ms > f->cfg.timeout_ms;
        char why[FORWARDER_REASON_MAX];
        if (failed)
            snprintf(why, sizeof(why), "%s", f->fail_why);
        else if (late)
            snprintf(why, sizeof(why), "no acknowledgement within %" PRIu32 " ms",
                     f->cfg.timeout_ms);
        size_t inflight = f->count;
        pthread_mutex_unlock(&f->mu);
        if (failed || late) {
            forwarder_restart(f, why);
            if (!forwarder_wait(f, backoff))
                break;
            backoff = backoff * 2 > FORWARDER_BACKOFF_MAX_MS ? FORWARDER_BACKOFF_MAX_MS
                                                             : backoff * 2;
            continue;
        }
        char err[512];
        int r = f->reader ? forwarder_fill(f, now, err, sizeof(err)) : -1;
        if (r == -1) {
            if (f->reader)
                log_error("forwarder_read_failed", "error=\"%s\"", err);
            forwarder_failed(f, true, "cannot read the journal");
            if (!f->reader && forwarder_seek(f, atomic_load(&f->forwarded) + 1) != 0)
                log_error("forwarder_seek_failed", "error=\"out of memory\"");
            if (!forwarder_wait(f, FORWARDER_BACKOFF_MAX_MS))
                break;
            continue;
        }
        if (r > 0 || inflight) {
            backoff = FORWARDER_BACKOFF_MIN_MS;
            if (!forwarder_wait(f, r > 0 ? 0 : FORWARDER_BUSY_WAIT_MS))
                break;
            continue;
        }
        /* Idle: is the engine still there? A node that must replicate
         * leaves rotation before a client finds out. */
        if (now - last_probe >= f->cfg.probe_ms) {
            last_probe = now;
            int pr = f->cfg.engine.probe(f->cfg.engine.impl, f->cfg.timeout_ms, err, sizeof(err));
            if (pr == 0)
                forwarder_set_health(f, true, NULL);
            else
                forwarder_failed(f, pr == FORWARDER_DEFINITE, err);
        }
        uint64_t wait = FORWARDER_IDLE_WAIT_MS < f->cfg.probe_ms ? FORWARDER_IDLE_WAIT_MS
                                                                 : f->cfg.probe_ms;
        if (!forwarder_wait(f, wait))
            break;
    }
    return NULL;
}

struct forwarder *forwarder_new(const struct forwarder_config *cfg, char *err, size_t errlen)
{
    struct forwarder *f = calloc(1, sizeof(*f));
    if (!f) {
        errbuf_setf(err, errlen, "out of memory");
        if (cfg->engine.free)
            cfg->engine.free(cfg->engine.impl);
        return NULL;
    }
    f->cfg = *cfg;
    f->wake_fd = f->stop_fd = -1;
    buf_init(&f->raw);
    snprintf(f->consumer, sizeof(f->consumer), "%s", cfg->consumer);
    f->cfg.consumer = f->consumer;
    if (f->cfg.window == 0)
        f->cfg.window = 1;
    if (f->cfg.probe_ms == 0)
        f->cfg.probe_ms = 1000;
    atomic_init(&f->healthy, true);
    int prc = pthread_mutex_init(&f->mu, NULL);
    if (prc != 0) {
        errbuf_setf(err, errlen, "pthread_mutex_init: %s", strerror(prc));
        if (cfg->engine.free)
            cfg->engine.free(cfg->engine.impl);
        free(f);
        return NULL;
    }
    uint64_t confirmed = 0;
    if (journal_consumer_position(cfg->journal, f->consumer, &confirmed) != 0) {
        errbuf_setf(err, errlen, "consumer %s is not configured in the journal", f->consumer);
        goto fail;
    }
    uint64_t from = cfg->replay_from ? cfg->replay_from : confirmed + 1;
    atomic_init(&f->forwarded, from - 1);
    f->confirmed = confirmed;
    f->ring = calloc(f->cfg.window, sizeof(*f->ring));
    if (!f->ring || forwarder_seek(f, from) != 0) {
        errbuf_setf(err, errlen, "out of memory");
        goto fail;
    }
    f->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    f->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (f->wake_fd < 0 || f->stop_fd < 0) {
        errbuf_setf(err, errlen, "eventfd: %s", strerror(errno));
        goto fail;
    }
    if (journal_add_waiter(cfg->journal, f->wake_fd) != 0) {
        errbuf_setf(err, errlen, "journal: too many waiters");
        goto fail;
    }
    f->cfg.engine.set_ack(f->cfg.engine.impl, forwarder_on_ack, f);
    int rc = pthread_create(&f->thread, NULL, forwarder_thread, f);
    if (rc != 0) {
        journal_remove_waiter(cfg->journal, f->wake_fd);
        errbuf_setf(err, errlen, "pthread_create: %s", strerror(rc));
        goto fail;
    }
    f->started = true;
    log_info("forwarder_start", "engine=%s consumer=%s from_seq=%" PRIu64 " window=%" PRIu32 "%s",
             f->cfg.engine.name, f->consumer, from, f->cfg.window,
             cfg->replay_from ? " replay=true" : "");
    return f;
fail:
    forwarder_free(f);
    return NULL;
}

void forwarder_free(struct forwarder *f)
{
    if (!f)
        return;
    if (f->started) {
        uint64_t one = 1;
        if (write(f->stop_fd, &one, sizeof(one)) < 0)
            log_warn("forwarder_stop_failed", "error=\"%s\"", strerror(errno));
        pthread_join(f->thread, NULL);
        journal_remove_waiter(f->cfg.journal, f->wake_fd);
    }
    /* The engine first: its threads call forwarder_on_ack until it is gone. */
    if (f->cfg.engine.free)
        f->cfg.engine.free(f->cfg.engine.impl);
    journal_reader_free(f->reader);
    buf_release(&f->raw);
    free(f->ring);
    if (f->wake_fd >= 0)
        close(f->wake_fd);
    if (f->stop_fd >= 0)
        close(f->stop_fd);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

uint64_t forwarder_seq(const struct forwarder *f)
{
    return atomic_load_explicit(&f->forwarded, memory_order_acquire);
}

bool forwarder_healthy(struct forwarder *f, char *reason, size_t len)
{
    if (atomic_load(&f->healthy))
        return true;
    pthread_mutex_lock(&f->mu);
    if (reason && len)
        snprintf(reason, len, "%s", f->reason);
    pthread_mutex_unlock(&f->mu);
    return false;
}

void forwarder_get_stats(struct forwarder *f, struct forwarder_stats *out)
{
    uint64_t durable = journal_durable_seq(f->cfg.journal);
    uint64_t fw = forwarder_seq(f);
    struct timespec ts;
    uint64_t wall = clock_gettime(CLOCK_REALTIME, &ts) == 0
                        ? (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u
                        : 0;
    pthread_mutex_lock(&f->mu);
    out->forwarded_seq = fw;
    out->lag_records = durable > fw ? durable - fw : 0;
    /* The oldest record not acknowledged: in flight, or not yet sent (then
     * at most as old as the newest acknowledged one's successor). */
    uint64_t oldest = f->count ? f->ring[f->head].ts : f->stalled_ts;
    out->lag_ms = out->lag_records && oldest && wall > oldest ? wall - oldest : 0;
    out->publish_errors = f->publish_errors;
    out->duplicates = f->duplicates;
    out->forwarded = f->total;
    out->healthy = atomic_load(&f->healthy);
    pthread_mutex_unlock(&f->mu);
}
