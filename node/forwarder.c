/* forwarder: one thread that reads durable records from the journal in
 * batches, hands each batch to the engine, waits for its acknowledgements,
 * publishes the new forwarded seq (workers holding ACKs for it are woken
 * through the journal's waiters) and then confirms it as the journal
 * consumer's durable position. A failed batch is sent again from its first
 * unacknowledged record after a backoff; the engine drops duplicates by
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
#define FORWARDER_REASON_MAX 200

struct forwarder {
    struct forwarder_config cfg;
    char consumer[JOURNAL_CONSUMER_NAME_MAX + 1];
    pthread_t thread;
    bool started;
    int wake_fd;                       /* the journal writes it when the durable seq moves */
    int stop_fd;                       /* forwarder_free writes it */
    struct journal_reader *reader;     /* at the first record not yet acknowledged */
    struct buf *raws;                  /* one per record of a batch */
    struct journal_record *recs;
    atomic_uint_fast64_t forwarded;    /* forwarder_seq */
    atomic_bool healthy;
    pthread_mutex_t mu;                /* everything below */
    char reason[FORWARDER_REASON_MAX];
    uint64_t oldest_pending_ts;        /* Unix ms of the first record not acknowledged, 0 none */
    uint64_t failing_since_ms;         /* mono ms of the first failure since the last success */
    uint64_t publish_errors, duplicates, total;
};

static uint64_t forwarder_wall_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void forwarder_set_health(struct forwarder *f, bool ok, const char *why);

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

/* Waits up to ms for the journal to say more is durable; false once told to stop. */
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

/* Starts the reader again at seq (after a failed batch: from its first
 * record not acknowledged). */
static int forwarder_seek(struct forwarder *f, uint64_t seq)
{
    journal_reader_free(f->reader);
    f->reader = journal_reader_new(journal_dir(f->cfg.journal), seq);
    return f->reader ? 0 : -1;
}

/* One batch: read, publish, advance. Returns 1 when it sent something, 0
 * when nothing was waiting, -1 after a failure (the caller backs off). */
static int forwarder_round(struct forwarder *f)
{
    size_t n = 0;
    char err[512];
    while (n < f->cfg.batch) {
        int r = journal_read_next(f->cfg.journal, f->reader, &f->raws[n], &f->recs[n], err,
                                  sizeof(err));
        if (r < 0) {
            log_error("forwarder_read_failed", "error=\"%s\"", err);
            forwarder_failed(f, true, "cannot read the journal");
            return -1;
        }
        if (r == 0)
            break;
        n++;
    }
    if (n == 0)
        return 0;
    pthread_mutex_lock(&f->mu);
    if (f->oldest_pending_ts == 0)
        f->oldest_pending_ts = f->recs[0].timestamp_ms;
    pthread_mutex_unlock(&f->mu);

    struct forwarder_batch b = {.recs = f->recs, .n = n};
    size_t acked = 0;
    uint64_t dups = 0;
    int rc = f->cfg.engine.publish(f->cfg.engine.impl, &b, f->cfg.timeout_ms, &acked, &dups, err,
                                   sizeof(err));
    if (acked > n)
        acked = n; /* an engine's mistake must not skip records */
    if (acked > 0) {
        uint64_t last = f->recs[acked - 1].seq;
        /* Published first, then woken, then made durable: an ACK waiting in
         * --ack-after replicated needs only the engine's word. */
        atomic_store_explicit(&f->forwarded, last, memory_order_release);
        journal_wake(f->cfg.journal);
        char cerr[256];
        if (journal_consumer_confirm(f->cfg.journal, f->consumer, last, cerr, sizeof(cerr)) != 0)
            log_warn("forwarder_confirm_failed", "consumer=%s error=\"%s\"", f->consumer, cerr);
    }
    pthread_mutex_lock(&f->mu);
    f->duplicates += dups;
    f->total += acked;
    f->oldest_pending_ts = acked < n ? f->recs[acked].timestamp_ms : 0;
    if (rc != 0)
        f->publish_errors++;
    pthread_mutex_unlock(&f->mu);
    if (rc != 0 || acked < n) {
        forwarder_failed(f, false, rc != 0 ? err : "not every record was acknowledged");
        if (forwarder_seek(f, f->recs[acked].seq) != 0)
            log_error("forwarder_seek_failed", "error=\"out of memory\"");
        return -1;
    }
    forwarder_set_health(f, true, NULL);
    return 1;
}

static void *forwarder_thread(void *arg)
{
    struct forwarder *f = arg;
    uint64_t backoff = FORWARDER_BACKOFF_MIN_MS, last_probe = 0;
    for (;;) {
        if (!f->reader && forwarder_seek(f, atomic_load(&f->forwarded) + 1) != 0) {
            if (!forwarder_wait(f, FORWARDER_BACKOFF_MAX_MS))
                break;
            continue;
        }
        int r = forwarder_round(f);
        if (r > 0) {
            backoff = FORWARDER_BACKOFF_MIN_MS;
            continue;
        }
        if (r < 0) {
            if (!forwarder_wait(f, backoff))
                break;
            backoff = backoff * 2 > FORWARDER_BACKOFF_MAX_MS ? FORWARDER_BACKOFF_MAX_MS
                                                             : backoff * 2;
            continue;
        }
        /* Idle: is the engine still there? A node that must replicate
         * leaves rotation before a client finds out. */
        uint64_t now = mono_now_ms();
        if (now - last_probe >= f->cfg.probe_ms) {
            last_probe = now;
            char err[512];
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
    snprintf(f->consumer, sizeof(f->consumer), "%s", cfg->consumer);
    f->cfg.consumer = f->consumer;
    if (f->cfg.batch == 0)
        f->cfg.batch = 1;
    if (f->cfg.probe_ms == 0)
        f->cfg.probe_ms = 1000;
    atomic_init(&f->healthy, true);
    int prc = pthread_mutex_init(&f->mu, NULL);
    uint64_t confirmed = 0;
    if (prc != 0) {
        errbuf_setf(err, errlen, "pthread_mutex_init: %s", strerror(prc));
        if (cfg->engine.free)
            cfg->engine.free(cfg->engine.impl);
        free(f);
        return NULL;
    }
    if (journal_consumer_position(cfg->journal, f->consumer, &confirmed) != 0) {
        errbuf_setf(err, errlen, "consumer %s is not configured in the journal", f->consumer);
        goto fail;
    }
    uint64_t from = cfg->replay_from ? cfg->replay_from : confirmed + 1;
    atomic_init(&f->forwarded, from - 1);
    f->raws = calloc(f->cfg.batch, sizeof(*f->raws));
    f->recs = calloc(f->cfg.batch, sizeof(*f->recs));
    if (!f->raws || !f->recs || forwarder_seek(f, from) != 0) {
        errbuf_setf(err, errlen, "out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < f->cfg.batch; i++)
        buf_init(&f->raws[i]);
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
    int rc = pthread_create(&f->thread, NULL, forwarder_thread, f);
    if (rc != 0) {
        journal_remove_waiter(cfg->journal, f->wake_fd);
        errbuf_setf(err, errlen, "pthread_create: %s", strerror(rc));
        goto fail;
    }
    f->started = true;
    log_info("forwarder_start", "engine=%s consumer=%s from_seq=%" PRIu64 "%s",
             f->cfg.engine.name, f->consumer, from, cfg->replay_from ? " replay=true" : "");
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
    if (f->cfg.engine.free)
        f->cfg.engine.free(f->cfg.engine.impl);
    journal_reader_free(f->reader);
    for (uint32_t i = 0; f->raws && i < f->cfg.batch; i++)
        buf_release(&f->raws[i]);
    free(f->raws);
    free(f->recs);
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
    pthread_mutex_lock(&f->mu);
    out->forwarded_seq = fw;
    out->lag_records = durable > fw ? durable - fw : 0;
    uint64_t now = forwarder_wall_ms();
    out->lag_ms = out->lag_records && f->oldest_pending_ts && now > f->oldest_pending_ts
                      ? now - f->oldest_pending_ts
                      : 0;
    out->publish_errors = f->publish_errors;
    out->duplicates = f->duplicates;
    out->forwarded = f->total;
    out->healthy = atomic_load(&f->healthy);
    pthread_mutex_unlock(&f->mu);
}
