/* journal: segment files of checksummed records, one writer lock, one sync
 * thread doing group commit and waking the workers through their eventfds,
 * recovery at open, retention by size and age, and the on-disk reader. */
#include "journal.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "be.h"
#include "errbuf.h"
#include "hb_msg.h"
#include "log.h"
#include "mono.h"

#define JOURNAL_WAITERS_MAX 64
#define JOURNAL_LOST_MAX 16         /* lost ranges kept apart; older ones fold into lost[0] */
#define JOURNAL_MAINT_MS 1000       /* retention and health probe period */
#define JOURNAL_PROBE_BYTES 65536   /* what the directory must take to be healthy again */
#define JOURNAL_REASON_MAX 160
#define JOURNAL_LIVENESS_NAME ".liveness" /* the liveness probe writes here */
#define JOURNAL_LIVENESS_BYTES 512
#define JOURNAL_CONSUMER_SUFFIX ".consumer"

/* Why the journal is unhealthy. Causes come and go independently: a
 * write that works says nothing about the next fsync, a disk that answers
 * the probe again may still be full. Listed gravest first: that one is
 * the reason reported. */
enum journal_cause {
    JOURNAL_CAUSE_SYNC,   /* an fsync failed: records were lost */
    JOURNAL_CAUSE_WRITE,  /* the last append could not be written */
    JOURNAL_CAUSE_HELD,   /* over --journal-retain-bytes, a consumer holds the oldest segment */
    JOURNAL_CAUSE_FULL,   /* the filesystem has less than JOURNAL_PROBE_BYTES free */
    JOURNAL_CAUSE_PROBE,  /* the liveness probe's write or fsync failed */
    JOURNAL_CAUSES
};

/* A configured consumer and the last seq it confirmed (0: none yet). */
struct journal_consumer {
    char name[JOURNAL_CONSUMER_NAME_MAX + 1];
    uint64_t confirmed;
};

struct journal_seg {
    uint64_t first;                       /* seq in the name */
    char name[JOURNAL_SEG_NAME_LEN + 1];
};

struct journal {
    char *dir;
    int dirfd;
    struct journal_config cfg;            /* dir points at ->dir */
    pthread_mutex_t mu;                   /* everything below but the atomics and waiters */
    pthread_cond_t cond;                  /* wakes the sync thread */
    bool mu_ok, cond_ok;                  /* initialised: journal_free destroys them */
    pthread_t thread;
    bool started, stop;
    int fd;                               /* active segment, -1: roll on next append */
    uint64_t seg_first, seg_size;
    int *retired;                         /* rolled segments not yet fsynced; grows */
    unsigned nretired, retired_cap;
    int *syncing;                         /* the sync round's swap of retired */
    unsigned syncing_cap;
    bool dir_dirty;                       /* a segment was created: fsync the directory */
    uint64_t next_seq;
    uint64_t written_seq;                 /* last record written */
    uint64_t synced_seq;                  /* last record an fsync was attempted for */
    uint64_t notified_seq;                /* last written seq the waiters heard of */
    uint64_t pending, pending_since_ms;   /* records since the last fsync, and since when */
    atomic_uint_fast64_t durable;         /* last record that is durable */
    struct { uint64_t lo, hi; } lost[JOURNAL_LOST_MAX]; /* ascending, never forgotten */
    unsigned nlost;
    atomic_uint lost_gen;                 /* non-zero once any record was lost */
    atomic_bool unhealthy;                /* any of bad[] */
    bool bad[JOURNAL_CAUSES];             /* what is wrong now, by cause */
    char reason[JOURNAL_CAUSES][JOURNAL_REASON_MAX];
    atomic_bool held_full;                /* over retain_bytes, held by a consumer: refuse */
    int lock_fd;                          /* holds the flock on LOCK_NAME */
    int probe_fd;                         /* the liveness probe's file */
    pthread_t probe_thread;
    bool probe_started;
    atomic_uint_fast64_t probe_since_ms;  /* a probe write+fsync under way since (0: none) */
    atomic_uint_fast64_t sync_since_ms;   /* a sync round's fsyncs under way since (0: none) */
    pthread_cond_t probe_cond;            /* wakes the probe thread (to stop) */
    bool probe_cond_ok;
    struct journal_consumer consumers[JOURNAL_CONSUMERS_MAX]; /* confirmed under mu */
    size_t nconsumers;
    pthread_mutex_t cmu;                  /* one consumer file write at a time */
    bool cmu_ok;
    uint64_t first_on_disk;               /* oldest seq kept */
    pthread_mutex_t wmu;                  /* waiters; held while they are written */
    bool wmu_ok;
    int waiters[JOURNAL_WAITERS_MAX];
    unsigned nwaiters;
    uint64_t next_maint_ms;
};

/* ------------------------------------------------------------ segments */

static bool journal_seg_name(const char *name, uint64_t *first)
{
    if (strlen(name) != JOURNAL_SEG_NAME_LEN || strcmp(name + 20, ".seg") != 0)
        return false;
    uint64_t v = 0;
    for (int i = 0; i < 20; i++) {
        if (name[i] < '0' || name[i] > '9')
            return false;
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(name[i] - '0');
    }
    *first = v;
    return true;
}

static int journal_seg_cmp(const void *a, const void *b)
{
    const struct journal_seg *x = a, *y = b;
    return x->first < y->first ? -1 : x->first > y->first;
}

/* The segments in dir, oldest first; caller frees *out. 0 or -1 (errno). */
static int journal_list(const char *dir, struct journal_seg **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    size_t cap = 0;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) != NULL) {
        uint64_t first;
        if (!journal_seg_name(de->d_name, &first))
            continue;
        if (*n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            struct journal_seg *ns = realloc(*out, nc * sizeof(**out));
            if (!ns) {
                errno = ENOMEM;
                rc = -1;
                break;
            }
            *out = ns;
            cap = nc;
        }
        (*out)[*n].first = first;
        memcpy((*out)[*n].name, de->d_name, JOURNAL_SEG_NAME_LEN + 1); /* length checked */
        (*n)++;
    }
    closedir(d);
    if (rc != 0) {
        free(*out);
        *out = NULL;
        *n = 0;
        return -1;
    }
    if (*n > 1)
        qsort(*out, *n, sizeof(**out), journal_seg_cmp);
    return 0;
}

static void journal_gap_name(char *name, size_t len, uint64_t seg_first);

static uint64_t journal_real_wall_ms(void *arg)
{
    (void)arg;
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return (uint64_t)time(NULL) * 1000u; /* cannot fail on Linux; whole seconds if it does */
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t journal_wall(const struct journal *j)
{
    return j->cfg.wall_ms(j->cfg.clock_arg);
}

/* Sets cause c with its reason text. Caller holds mu. */
static void journal_set_cause(struct journal *j, enum journal_cause c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void journal_set_cause(struct journal *j, enum journal_cause c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->reason[c], JOURNAL_REASON_MAX, fmt, ap);
    va_end(ap);
    if (!j->bad[c])
        log_error("journal_unhealthy", "dir=%s reason=\"%s\"", j->dir, j->reason[c]);
    j->bad[c] = true;
    atomic_store(&j->unhealthy, true);
}

/* Caller holds mu. */
static void journal_set_unhealthy(struct journal *j, enum journal_cause c, const char *what,
                                  int e)
{
    journal_set_cause(j, c, "journal: %s: %s", what, strerror(e));
}

/* Clears one cause; healthy once none is left. Caller holds mu. */
static void journal_clear_cause(struct journal *j, enum journal_cause c)
{
    if (!j->bad[c])
        return;
    j->bad[c] = false;
    bool any = false;
    for (int i = 0; i < JOURNAL_CAUSES; i++)
        any = any || j->bad[i];
    if (!any) {
        atomic_store(&j->unhealthy, false);
        log_info("journal_healthy", "dir=%s was=\"%s\"", j->dir, j->reason[c]);
    }
    j->reason[c][0] = '\0';
}

static int journal_fdatasync(struct journal *j, int fd)
{
    return j->cfg.fsync_hook ? j->cfg.fsync_hook(fd) : fdatasync(fd);
}

/* Room for two more retired segments (a roll, then an abandoned write),
 * so neither ever has to fsync or drop a segment itself. Caller holds mu. */
static int journal_retired_reserve(struct journal *j)
{
    if (j->nretired + 2 <= j->retired_cap)
        return 0;
    unsigned cap = j->retired_cap ? j->retired_cap * 2 : 16;
    int *r = realloc(j->retired, cap * sizeof(*r));
    if (!r)
        return -1;
    j->retired = r;
    j->retired_cap = cap;
    return 0;
}

/* A segment is done with: the sync round fsyncs it (never inline: a worker
 * holds mu here), or, with fsync off, it just closes. Caller holds mu and
 * reserved room. */
static void journal_retire(struct journal *j, int fd)
{
    if (j->cfg.fsync == JOURNAL_FSYNC_OFF) {
        close(fd);
        return;
    }
    assert(j->nretired < j->retired_cap);
    j->retired[j->nretired++] = fd;
}

/* Starts a new segment named after the next seq. Caller holds mu. */
static int journal_roll(struct journal *j, char *err, size_t errlen)
{
    char name[JOURNAL_SEG_NAME_LEN + 1];
    snprintf(name, sizeof(name), "%020" PRIu64 ".seg", j->next_seq);
    /* A file of that name can hold no record we keep: every stored seq is
     * below next_seq, so an old one is an empty or failed start. */
    int fd = openat(j->dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        errbuf_setf(err, errlen, "journal: create %s/%s: %s", j->dir, name, strerror(e));
        journal_set_unhealthy(j, JOURNAL_CAUSE_WRITE, "create segment", e);
        errno = e;
        return -1;
    }
    if (j->fd >= 0)
        journal_retire(j, j->fd);
    j->fd = fd;
    j->seg_first = j->next_seq;
    j->seg_size = 0;
    j->dir_dirty = true;
    if (j->first_on_disk == 0)
        j->first_on_disk = j->next_seq;
    return 0;
}

static ssize_t journal_writev_all(struct journal *j, int fd, struct iovec *iov, int n)
{
    size_t total = 0;
    while (n > 0) {
        ssize_t w = j->cfg.writev_hook ? j->cfg.writev_hook(fd, iov, n) : writev(fd, iov, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        total += (size_t)w;
        size_t left = (size_t)w;
        while (n > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return (ssize_t)total;
}

int journal_append(struct journal *j, const struct journal_entry *e, uint64_t *seq, char *err,
                   size_t errlen)
{
    if (journal_record_size(e) == 0) {
        errbuf_setf(err, errlen, "journal: record too large");
        return -1;
    }
    uint32_t rl = (uint32_t)journal_record_size(e);
    uint8_t hdr[JOURNAL_HEADER_SIZE], trailer[JOURNAL_TRAILER_SIZE];
    pthread_mutex_lock(&j->mu);
    if (atomic_load(&j->held_full)) {
        /* Storing more would mean deleting what a consumer has not read. */
        errbuf_setf(err, errlen, "%s", j->reason[JOURNAL_CAUSE_HELD]);
        pthread_mutex_unlock(&j->mu);
        errno = ENOSPC;
        return -1;
    }
    if (journal_retired_reserve(j) != 0) {
        errbuf_setf(err, errlen, "journal: out of memory");
        journal_set_unhealthy(j, JOURNAL_CAUSE_WRITE, "write", ENOMEM);
        pthread_mutex_unlock(&j->mu);
        errno = ENOMEM;
        return -1;
    }
    if (j->fd < 0 || (j->seg_size > 0 && j->seg_size + rl > j->cfg.segment_bytes)) {
        if (journal_roll(j, err, errlen) != 0) {
            pthread_mutex_unlock(&j->mu);
            return -1;
        }
    }
    uint64_t s = j->next_seq;
    be_put32(trailer, journal_record_header(hdr, s, journal_wall(j), e));
    struct iovec iov[7] = {
        {hdr, sizeof(hdr)},
        {(void *)e->name, e->name_len},
        {(void *)e->peer, e->peer_len},
        {(void *)e->cert, e->cert_len},
        {(void *)e->producer, e->producer_len},
        {(void *)e->data, e->len},
        {trailer, sizeof(trailer)},
    };
    if (journal_writev_all(j, j->fd, iov, 7) < 0) {
        int werr = errno;
        errbuf_setf(err, errlen, "journal: write %s: %s", j->dir, strerror(werr));
        journal_set_unhealthy(j, JOURNAL_CAUSE_WRITE, "write", werr);
        /* A part of the record may be in the file: cut it, so the segment
         * stays a sequence of whole records. If that fails too, the segment
         * ends in a torn record (recovery cuts it) and gets its fsync. */
        if (ftruncate(j->fd, (off_t)j->seg_size) != 0) {
            log_error("journal_truncate_failed",
                      "dir=%s segment=%020" PRIu64 ".seg offset=%" PRIu64 " error=\"%s\"", j->dir,
                      j->seg_first, j->seg_size, strerror(errno));
            journal_retire(j, j->fd);
            j->fd = -1;
        }
        pthread_mutex_unlock(&j->mu);
        errno = werr;
        return -1;
    }
    j->seg_size += rl;
    j->next_seq++;
    j->written_seq = s;
    /* A write that works clears only a write failure: it says nothing of
     * the next fsync. */
    if (j->bad[JOURNAL_CAUSE_WRITE])
        journal_clear_cause(j, JOURNAL_CAUSE_WRITE);
    if (j->cfg.fsync == JOURNAL_FSYNC_OFF) {
        atomic_store_explicit(&j->durable, s, memory_order_release);
        /* The thread only notifies: wake it for the first record since it
         * last did, not on a timer. */
        if (s - 1 == j->notified_seq)
            pthread_cond_signal(&j->cond);
    } else {
        if (j->pending++ == 0) {
            j->pending_since_ms = mono_now_ms();
            pthread_cond_signal(&j->cond);
        } else if (j->cfg.fsync == JOURNAL_FSYNC_ALWAYS || j->pending == j->cfg.fsync_batch) {
            pthread_cond_signal(&j->cond);
        }
    }
    pthread_mutex_unlock(&j->mu);
    *seq = s;
    return 0;
}

enum journal_state journal_state(struct journal *j, uint64_t seq)
{
    uint64_t d = atomic_load_explicit(&j->durable, memory_order_acquire);
    if (atomic_load_explicit(&j->lost_gen, memory_order_acquire) == 0)
        return seq <= d ? JOURNAL_DURABLE : JOURNAL_PENDING;
    enum journal_state st = JOURNAL_PENDING;
    pthread_mutex_lock(&j->mu);
    /* Lost before durable: the durable seq moves on past lost ranges. */
    for (unsigned i = 0; i < j->nlost && st != JOURNAL_LOST; i++)
        if (seq >= j->lost[i].lo && seq <= j->lost[i].hi)
            st = JOURNAL_LOST;
    if (st != JOURNAL_LOST && seq <= atomic_load(&j->durable))
        st = JOURNAL_DURABLE;
    pthread_mutex_unlock(&j->mu);
    return st;
}

uint64_t journal_durable_seq(const struct journal *j)
{
    return atomic_load_explicit(&j->durable, memory_order_acquire);
}

uint64_t journal_next_seq(struct journal *j)
{
    pthread_mutex_lock(&j->mu);
    uint64_t s = j->next_seq;
    pthread_mutex_unlock(&j->mu);
    return s;
}

uint64_t journal_first_seq(struct journal *j)
{
    pthread_mutex_lock(&j->mu);
    uint64_t s = j->first_on_disk ? j->first_on_disk : j->next_seq;
    pthread_mutex_unlock(&j->mu);
    return s;
}

const char *journal_dir(const struct journal *j) { return j->dir; }

int journal_add_waiter(struct journal *j, int efd)
{
    pthread_mutex_lock(&j->wmu);
    int rc = -1;
    if (j->nwaiters < JOURNAL_WAITERS_MAX) {
        j->waiters[j->nwaiters++] = efd;
        rc = 0;
    }
    pthread_mutex_unlock(&j->wmu);
    return rc;
}

void journal_remove_waiter(struct journal *j, int efd)
{
    /* wmu is held through every notify: none is under way once we have it. */
    pthread_mutex_lock(&j->wmu);
    for (unsigned i = 0; i < j->nwaiters; i++) {
        if (j->waiters[i] == efd) {
            j->waiters[i] = j->waiters[--j->nwaiters];
            break;
        }
    }
    pthread_mutex_unlock(&j->wmu);
}

bool journal_held_full(struct journal *j) { return atomic_load(&j->held_full); }

/* Is a disk operation that started at since_ms (0: none) overdue? */
static bool journal_overdue(const atomic_uint_fast64_t *since_ms, uint64_t now, uint64_t limit,
                            uint64_t *waited)
{
    uint64_t t = atomic_load(since_ms);
    if (t == 0 || now < t || now - t <= limit)
        return false;
    *waited = now - t;
    return true;
}

bool journal_healthy(struct journal *j, char *reason, size_t len)
{
    /* A disk that stopped answering (frozen, hung) shows only here: the
     * thread waiting for it cannot say so itself. */
    uint64_t now = mono_now_ms(), waited = 0, limit = j->cfg.probe_timeout_ms;
    if (limit && (journal_overdue(&j->sync_since_ms, now, limit, &waited) ||
                  journal_overdue(&j->probe_since_ms, now, limit, &waited))) {
        if (reason && len)
            snprintf(reason, len, "journal: disk not responding: a write or fsync has not "
                     "returned in %" PRIu64 " ms", waited);
        return false;
    }
    if (!atomic_load(&j->unhealthy))
        return true;
    pthread_mutex_lock(&j->mu);
    bool bad = atomic_load(&j->unhealthy);
    for (int c = 0; bad && reason && len && c < JOURNAL_CAUSES; c++) {
        if (j->bad[c]) {
            snprintf(reason, len, "%s", j->reason[c]);
            break;
        }
    }
    pthread_mutex_unlock(&j->mu);
    return !bad;
}

/* ------------------------------------------------------------ sync thread */

/* Writes every waiter's eventfd. Called without mu, so appenders never
 * wait for these writes. */
static void journal_notify(struct journal *j)
{
    uint64_t one = 1;
    pthread_mutex_lock(&j->wmu);
    for (unsigned i = 0; i < j->nwaiters; i++) {
        ssize_t r;
        do
            r = write(j->waiters[i], &one, sizeof(one));
        while (r < 0 && errno == EINTR);
        /* EAGAIN: the counter is saturated, the reader is woken anyway. */
    }
    pthread_mutex_unlock(&j->wmu);
}

void journal_wake(struct journal *j) { journal_notify(j); }

/* Remembers [lo, hi] as lost. Ranges come in ascending order. When there
 * are too many, the two oldest fold into one that also covers the durable
 * records between them: forgetting a range would let its records read as
 * durable, while a durable record read as lost only costs its client a
 * re-send (at least once). Caller holds mu. */
static void journal_lose(struct journal *j, uint64_t lo, uint64_t hi)
{
    if (j->nlost > 0 && lo <= j->lost[j->nlost - 1].hi + 1) {
        if (hi > j->lost[j->nlost - 1].hi)
            j->lost[j->nlost - 1].hi = hi;
    } else {
        if (j->nlost == JOURNAL_LOST_MAX) {
            j->lost[0].hi = j->lost[1].hi;
            memmove(&j->lost[1], &j->lost[2], (JOURNAL_LOST_MAX - 2) * sizeof(j->lost[0]));
            j->nlost--;
        }
        j->lost[j->nlost].lo = lo;
        j->lost[j->nlost].hi = hi;
        j->nlost++;
    }
    atomic_fetch_add(&j->lost_gen, 1);
}

/* One fsync round for everything written so far. Called with mu held;
 * drops it around the disk work and the notify. */
static void journal_sync_round(struct journal *j)
{
    uint64_t target = j->written_seq;
    int fd = j->fd;
    /* Take the retired segments; appenders go on rolling into the spare. */
    int *ret = j->retired;
    unsigned nret = j->nretired, cap = j->retired_cap;
    j->retired = j->syncing;
    j->retired_cap = j->syncing_cap;
    j->nretired = 0;
    j->syncing = ret;
    j->syncing_cap = cap;
    bool dir = j->dir_dirty;
    j->dir_dirty = false;
    j->pending = 0;
    pthread_mutex_unlock(&j->mu);

    int e = 0;
    const char *what = "fsync";
    uint64_t t0 = mono_now_ms();
    atomic_store(&j->sync_since_ms, t0 ? t0 : 1);
    for (unsigned i = 0; i < nret; i++) {
        if (!e && journal_fdatasync(j, ret[i]) != 0)
            e = errno;
        close(ret[i]);
    }
    if (!e && fd >= 0 && journal_fdatasync(j, fd) != 0)
        e = errno;
    if (!e && dir && fsync(j->dirfd) != 0) {
        e = errno;
        what = "fsync directory";
    }
    atomic_store(&j->sync_since_ms, 0);

    pthread_mutex_lock(&j->mu);
    uint64_t from = j->synced_seq + 1;
    if (e == 0) {
        j->synced_seq = target;
        atomic_store_explicit(&j->durable, target, memory_order_release);
        if (j->bad[JOURNAL_CAUSE_SYNC] && (fd >= 0 || nret > 0))
            journal_clear_cause(j, JOURNAL_CAUSE_SYNC);
    } else {
        /* Workers went on appending to these files while the fsync ran, and
         * Linux reports a failed writeback once: a later fsync of the same
         * file returns 0 whatever was lost. So everything written so far is
         * lost, never acknowledged, and no file written so far is written
         * or fsynced again: the next append starts a new segment. */
        uint64_t to = j->written_seq;
        j->synced_seq = to;
        j->pending = 0;
        journal_set_unhealthy(j, JOURNAL_CAUSE_SYNC, what, e);
        if (to >= from) {
            journal_lose(j, from, to);
            log_error("journal_records_lost", "dir=%s from_seq=%" PRIu64 " to_seq=%" PRIu64
                      " reason=\"%s\"", j->dir, from, to, j->reason[JOURNAL_CAUSE_SYNC]);
        } else {
            log_error("journal_fsync_failed", "dir=%s records_lost=0 reason=\"%s\"", j->dir,
                      j->reason[JOURNAL_CAUSE_SYNC]);
        }
        if (j->fd >= 0) {
            close(j->fd);
            j->fd = -1;
            log_warn("journal_segment_abandoned", "dir=%s segment=%020" PRIu64 ".seg", j->dir,
                     j->seg_first);
        }
        for (unsigned i = 0; i < j->nretired; i++)
            close(j->retired[i]);
        j->nretired = 0;
        target = to;
    }
    j->notified_seq = target;
    pthread_mutex_unlock(&j->mu);
    journal_notify(j);
    pthread_mutex_lock(&j->mu);
}

/* Deletes the oldest segments beyond --journal-retain-bytes/-age; never the
 * active one nor one with records not yet durable. Called without mu. */
static void journal_retain(struct journal *j)
{
    if (j->cfg.retain_bytes == 0 && j->cfg.retain_age_ms == 0)
        return;
    pthread_mutex_lock(&j->mu);
    uint64_t active = j->fd >= 0 ? j->seg_first : j->next_seq;
    uint64_t durable = atomic_load(&j->durable);
    /* The oldest position a consumer has confirmed holds everything after it. */
    uint64_t hold = UINT64_MAX;
    const char *holder = NULL;
    for (size_t i = 0; i < j->nconsumers; i++) {
        if (j->consumers[i].confirmed < hold) {
            hold = j->consumers[i].confirmed;
            holder = j->consumers[i].name;
        }
    }
    char holder_name[JOURNAL_CONSUMER_NAME_MAX + 1] = "";
    if (holder)
        snprintf(holder_name, sizeof(holder_name), "%s", holder);
    pthread_mutex_unlock(&j->mu);

    struct journal_seg *segs;
    size_t n;
    if (journal_list(j->dir, &segs, &n) != 0) {
        log_warn("journal_list_failed", "dir=%s error=\"%s\"", j->dir, strerror(errno));
        return;
    }
    uint64_t *sizes = calloc(n ? n : 1, sizeof(*sizes));
    uint64_t *mtimes = calloc(n ? n : 1, sizeof(*mtimes));
    uint64_t total = 0;
    for (size_t i = 0; sizes && mtimes && i < n; i++) {
        struct stat st;
        if (fstatat(j->dirfd, segs[i].name, &st, 0) == 0) {
            sizes[i] = (uint64_t)st.st_size;
            mtimes[i] = (uint64_t)st.st_mtim.tv_sec * 1000u +
                        (uint64_t)st.st_mtim.tv_nsec / 1000000u;
        }
        total += sizes[i];
    }
    uint64_t now = journal_wall(j);
    uint64_t new_first = 0;
    bool held = false;
    for (size_t i = 0; sizes && mtimes && i + 1 < n; i++) {
        /* Segment i holds seqs up to segs[i+1].first - 1. */
        if (segs[i].first >= active || segs[i + 1].first - 1 > durable)
            break;
        bool too_big = j->cfg.retain_bytes && total > j->cfg.retain_bytes;
        bool too_old = j->cfg.retain_age_ms && now > mtimes[i] &&
                       now - mtimes[i] > j->cfg.retain_age_ms;
        if (!too_big && !too_old)
            break;
        if (segs[i + 1].first - 1 > hold) {
            held = too_big;
            break;
        }
        if (unlinkat(j->dirfd, segs[i].name, 0) != 0) {
            log_warn("journal_delete_failed", "dir=%s segment=%s error=\"%s\"", j->dir,
                     segs[i].name, strerror(errno));
            break;
        }
        log_info("journal_segment_deleted", "dir=%s segment=%s bytes=%" PRIu64 " reason=%s",
                 j->dir, segs[i].name, sizes[i], too_big ? "size" : "age");
        total -= sizes[i];
        new_first = segs[i + 1].first;
        /* A gap before the oldest segment needs no marker. */
        char gap[JOURNAL_SEG_NAME_LEN + 1];
        journal_gap_name(gap, sizeof(gap), new_first);
        if (unlinkat(j->dirfd, gap, 0) != 0 && errno != ENOENT)
            log_warn("journal_delete_failed", "dir=%s file=%s error=\"%s\"", j->dir, gap,
                     strerror(errno));
    }
    /* Without it a crash can bring deleted segments back: recovery then
     * finds them ahead of a gap, or retention deletes them twice. */
    if (new_first && fsync(j->dirfd) != 0)
        log_warn("journal_fsync_dir_failed", "dir=%s error=\"%s\"", j->dir, strerror(errno));
    pthread_mutex_lock(&j->mu);
    if (new_first && new_first > j->first_on_disk)
        j->first_on_disk = new_first;
    /* Over the size limit with the oldest segment unread: stop taking
     * records (the node leaves rotation) rather than delete them. */
    if (held) {
        journal_set_cause(j, JOURNAL_CAUSE_HELD,
                          "journal: full: consumer %s has confirmed only up to seq %" PRIu64
                          " and the journal holds %" PRIu64 " bytes (--journal-retain-bytes %"
                          PRIu64 ")", holder_name, hold, total, j->cfg.retain_bytes);
        atomic_store(&j->held_full, true);
    } else if (j->bad[JOURNAL_CAUSE_HELD]) {
        atomic_store(&j->held_full, false);
        journal_clear_cause(j, JOURNAL_CAUSE_HELD);
    }
    pthread_mutex_unlock(&j->mu);
    free(sizes);
    free(mtimes);
    free(segs);
}

/* Unhealthy: does the directory take JOURNAL_PROBE_BYTES now? */
static void journal_probe(struct journal *j)
{
    if (!atomic_load(&j->unhealthy))
        return;
    static const char probe_name[] = ".probe";
    int fd = openat(j->dirfd, probe_name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    bool ok = false;
    if (fd >= 0) {
        static const uint8_t zeros[4096];
        size_t done = 0;
        while (done < JOURNAL_PROBE_BYTES) {
            size_t want = JOURNAL_PROBE_BYTES - done;
            ssize_t w = write(fd, zeros, want < sizeof(zeros) ? want : sizeof(zeros));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break; /* ENOSPC and the like: still unhealthy */
            done += (size_t)w;
        }
        ok = done == JOURNAL_PROBE_BYTES && journal_fdatasync(j, fd) == 0;
        close(fd);
        if (unlinkat(j->dirfd, probe_name, 0) != 0)
            log_warn("journal_probe_unlink_failed", "dir=%s error=\"%s\"", j->dir,
                     strerror(errno));
    }
    if (ok) {
        /* The directory takes writes and fsyncs again; records already lost
         * stay lost. */
        pthread_mutex_lock(&j->mu);
        journal_clear_cause(j, JOURNAL_CAUSE_WRITE);
        journal_clear_cause(j, JOURNAL_CAUSE_SYNC);
        pthread_mutex_unlock(&j->mu);
    }
}

static void journal_maintain(struct journal *j)
{
    journal_retain(j);
    journal_probe(j);
}

void journal_sync_now(struct journal *j)
{
    pthread_mutex_lock(&j->mu);
    if (j->cfg.fsync != JOURNAL_FSYNC_OFF && (j->written_seq > j->synced_seq || j->nretired))
        journal_sync_round(j);
    else if (j->written_seq > j->notified_seq) {
        j->notified_seq = j->written_seq;
        pthread_mutex_unlock(&j->mu);
        journal_notify(j);
        pthread_mutex_lock(&j->mu);
    }
    pthread_mutex_unlock(&j->mu);
    journal_maintain(j);
}

static void journal_deadline(struct timespec *ts, uint64_t ms_from_now)
{
    if (clock_gettime(CLOCK_MONOTONIC, ts) != 0) {
        ts->tv_sec = 0; /* cannot fail on Linux; if it does, do not sleep */
        ts->tv_nsec = 0;
        return;
    }
    ts->tv_sec += (time_t)(ms_from_now / 1000);
    ts->tv_nsec += (long)(ms_from_now % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void *journal_thread(void *arg)
{
    struct journal *j = arg;
    pthread_mutex_lock(&j->mu);
    while (!j->stop) {
        uint64_t now = mono_now_ms();
        uint64_t wait_ms = j->next_maint_ms > now ? j->next_maint_ms - now : 0;
        bool due = false;
        if (j->cfg.fsync == JOURNAL_FSYNC_OFF) {
            if (j->written_seq > j->notified_seq) {
                /* Nothing to fsync; the feed still wants to hear of it.
                 * journal_append wakes us for this, no timer needed. */
                j->notified_seq = j->written_seq;
                pthread_mutex_unlock(&j->mu);
                journal_notify(j);
                pthread_mutex_lock(&j->mu);
                continue;
            }
        } else if (j->written_seq > j->synced_seq || j->nretired) {
            uint64_t since = now - j->pending_since_ms;
            if (j->cfg.fsync == JOURNAL_FSYNC_ALWAYS || j->pending >= j->cfg.fsync_batch ||
                since >= j->cfg.fsync_interval_ms || j->pending == 0)
                due = true;
            else if (j->cfg.fsync_interval_ms - since < wait_ms)
                wait_ms = j->cfg.fsync_interval_ms - since;
        }
        if (due) {
            journal_sync_round(j);
            continue;
        }
        if (now >= j->next_maint_ms) {
            j->next_maint_ms = now + JOURNAL_MAINT_MS;
            pthread_mutex_unlock(&j->mu);
            journal_maintain(j);
            pthread_mutex_lock(&j->mu);
            continue;
        }
        struct timespec ts;
        journal_deadline(&ts, wait_ms);
        pthread_cond_timedwait(&j->cond, &j->mu, &ts);
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

/* ------------------------------------------------------------ recovery */

/* Is there a whole valid record with a seq of at least min_seq anywhere
 * in p[from..len)? (A record inside a payload that happens to parse would
 * carry an older seq, or a client would have had to guess a future one.) */
static bool journal_valid_after(const uint8_t *p, size_t from, size_t len, uint64_t min_seq)
{
    static const uint8_t magic[4] = {0x42, 0x4A, 0x52, 0x31};
    while (from + JOURNAL_HEADER_SIZE + JOURNAL_TRAILER_SIZE <= len) {
        const uint8_t *m = memmem(p + from, len - from, magic, sizeof(magic));
        if (!m)
            return false;
        struct journal_record rec;
        if (journal_record_parse(m, len - (size_t)(m - p), &rec) > 0 && rec.seq >= min_seq)
            return true;
        from = (size_t)(m - p) + 1;
    }
    return false;
}

/* "<seq>.gap": the seqs missing before segment <seq> were never
 * acknowledged (recovery cut them from the end of the segment before).
 * Kept so that later starts accept the gap too. */
static void journal_gap_name(char *name, size_t len, uint64_t seg_first)
{
    snprintf(name, len, "%020" PRIu64 ".gap", seg_first);
}

static bool journal_gap_known(struct journal *j, uint64_t seg_first)
{
    char name[JOURNAL_SEG_NAME_LEN + 1];
    journal_gap_name(name, sizeof(name), seg_first);
    return faccessat(j->dirfd, name, F_OK, 0) == 0;
}

/* Writes the marker, durably, before the cut that makes the gap: a crash
 * in between leaves the bad tail, which the next start cuts again. */
static int journal_mark_gap(struct journal *j, uint64_t seg_first, char *err, size_t errlen)
{
    char name[JOURNAL_SEG_NAME_LEN + 1];
    journal_gap_name(name, sizeof(name), seg_first);
    int fd = openat(j->dirfd, name, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || close(fd) != 0 || fsync(j->dirfd) != 0) {
        errbuf_setf(err, errlen, "journal: create %s/%s: %s", j->dir, name, strerror(errno));
        return -1;
    }
    return 0;
}

/* Scans one segment. next_first: the first seq of the segment after it (0:
 * it is the newest). Sets *next to the seq after its last good record; on
 * the newest, leaves *fd_out open for appending. */
static int journal_recover_seg(struct journal *j, const struct journal_seg *seg,
                               uint64_t next_first, uint64_t *next, uint64_t *size_out,
                               int *fd_out, char *err, size_t errlen)
{
    bool last = next_first == 0;
    int fd = openat(j->dirfd, seg->name, O_RDWR | O_APPEND | O_CLOEXEC);
    if (fd < 0) {
        errbuf_setf(err, errlen, "journal: open %s/%s: %s", j->dir, seg->name, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        errbuf_setf(err, errlen, "journal: stat %s/%s: %s", j->dir, seg->name, strerror(errno));
        close(fd);
        return -1;
    }
    size_t size = (size_t)st.st_size;
    uint8_t *p = NULL;
    if (size > 0) {
        p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            errbuf_setf(err, errlen, "journal: mmap %s/%s: %s", j->dir, seg->name,
                        strerror(errno));
            close(fd);
            return -1;
        }
    }
    uint64_t expect = *next;
    size_t off = 0;
    int rc = 0;
    while (off < size) {
        struct journal_record rec;
        long n = journal_record_parse(p + off, size - off, &rec);
        const char *why = NULL;
        if (n > 0 && rec.seq == expect) {
            off += (size_t)n;
            expect++;
            continue;
        }
        why = n == 0 ? "record cut short" : n > 0 ? "sequence number out of order"
                                                  : "bad magic, length or CRC32C";
        /* A bad tail is torn only when no valid record follows it in this
         * segment, in the newest one too: then no record from here on was
         * acknowledged (a power loss before its fsync, or a segment
         * abandoned after a failed fsync; a record becomes durable only once
         * every segment before it is fsynced). A length running past the
         * end proves nothing by itself: one flipped bit in it looks like
         * that, with acknowledged records behind it. */
        bool torn = !journal_valid_after(p, off + 1, size, expect);
        if (torn || j->cfg.recover == JOURNAL_RECOVER_TRUNCATE) {
            if (!last && next_first > expect && !journal_gap_known(j, next_first) &&
                journal_mark_gap(j, next_first, err, errlen) != 0) {
                rc = -1;
                break;
            }
            if (ftruncate(fd, (off_t)off) != 0 || fdatasync(fd) != 0) {
                errbuf_setf(err, errlen, "journal: truncate %s/%s at byte %zu: %s", j->dir,
                            seg->name, off, strerror(errno));
                rc = -1;
                break;
            }
            if (torn && last)
                log_warn("journal_torn_tail", "dir=%s segment=%s offset=%zu dropped_bytes=%zu"
                         " reason=\"%s\"", j->dir, seg->name, off, size - off, why);
            else if (torn)
                log_error("journal_torn_tail", "dir=%s segment=%s offset=%zu dropped_bytes=%zu"
                          " reason=\"%s\" newest=false lost_from_seq=%" PRIu64, j->dir,
                          seg->name, off, size - off, why, expect);
            else
                log_error("journal_truncated", "dir=%s segment=%s offset=%zu dropped_bytes=%zu"
                          " reason=\"%s\" recover=truncate", j->dir, seg->name, off, size - off,
                          why);
            size = off;
            break;
        }
        errbuf_setf(err, errlen,
                    "journal: corrupt record in %s/%s at byte %zu (%s) with records after it; "
                    "refusing to start (--journal-recover=truncate cuts the segment there)",
                    j->dir, seg->name, off, why);
        rc = -1;
        break;
    }
    if (p)
        munmap(p, st.st_size);
    if (rc != 0) {
        close(fd);
        return -1;
    }
    *next = expect;
    *size_out = size;
    if (last)
        *fd_out = fd;
    else
        close(fd);
    return 0;
}

static int journal_recover(struct journal *j, char *err, size_t errlen)
{
    struct journal_seg *segs;
    size_t n;
    if (journal_list(j->dir, &segs, &n) != 0) {
        errbuf_setf(err, errlen, "journal: list %s: %s", j->dir, strerror(errno));
        return -1;
    }
    uint64_t next = n ? segs[0].first : 1;
    if (next == 0) {
        errbuf_setf(err, errlen, "journal: %s/%s: sequence numbers start at 1", j->dir,
                    segs[0].name);
        free(segs);
        return -1;
    }
    uint64_t records = 0;
    for (size_t i = 0; i < n; i++) {
        if (segs[i].first != next) {
            /* A gap is what cutting the segment before it leaves (its tail
             * was never acknowledged; the cut wrote the marker) or a
             * truncating recovery; anything else is a segment missing or
             * misnamed. */
            bool known = segs[i].first > next && journal_gap_known(j, segs[i].first);
            if (!(segs[i].first > next &&
                  (known || j->cfg.recover == JOURNAL_RECOVER_TRUNCATE))) {
                errbuf_setf(err, errlen, "journal: %s/%s starts at seq %" PRIu64
                            " but the segments before end at %" PRIu64 "; refusing to start",
                            j->dir, segs[i].name, segs[i].first, next - 1);
                free(segs);
                return -1;
            }
            log_error("journal_gap", "dir=%s segment=%s missing_from=%" PRIu64 " missing_to=%"
                      PRIu64, j->dir, segs[i].name, next, segs[i].first - 1);
            if (!known && journal_mark_gap(j, segs[i].first, err, errlen) != 0) {
                free(segs);
                return -1;
            }
            next = segs[i].first;
        }
        uint64_t before = next, size = 0;
        int fd = -1;
        bool last = i + 1 == n;
        if (journal_recover_seg(j, &segs[i], last ? 0 : segs[i + 1].first, &next, &size, &fd,
                                err, errlen) != 0) {
            free(segs);
            return -1;
        }
        records += next - before;
        if (last) {
            j->fd = fd;
            j->seg_first = segs[i].first;
            j->seg_size = size;
        }
    }
    j->next_seq = next;
    j->written_seq = j->synced_seq = j->notified_seq = next - 1;
    atomic_store(&j->durable, next - 1);
    j->first_on_disk = n ? segs[0].first : 0;
    log_info("journal_open", "dir=%s segments=%zu records=%" PRIu64 " first_seq=%" PRIu64
             " next_seq=%" PRIu64, j->dir, n, records, n ? segs[0].first : next, next);
    free(segs);
    return 0;
}

/* ------------------------------------------------------------ open */

/* An exclusive flock on LOCK_NAME, held while the journal is open, with
 * our pid in the file for the message a second node gets. */
static int journal_lock(struct journal *j, char *err, size_t errlen)
{
    j->lock_fd = openat(j->dirfd, JOURNAL_LOCK_NAME, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (j->lock_fd < 0) {
        errbuf_setf(err, errlen, "journal: open %s/%s: %s", j->dir, JOURNAL_LOCK_NAME,
                    strerror(errno));
        return -1;
    }
    int rc;
    do
        rc = flock(j->lock_fd, LOCK_EX | LOCK_NB);
    while (rc != 0 && errno == EINTR);
    if (rc != 0) {
        int e = errno;
        char pid[32] = "";
        ssize_t n = pread(j->lock_fd, pid, sizeof(pid) - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        if (e == EWOULDBLOCK)
            errbuf_setf(err, errlen, "journal: %s is in use by another berth-node (pid %s); "
                        "each node needs a journal directory of its own", j->dir,
                        pid[0] ? pid : "unknown");
        else
            errbuf_setf(err, errlen, "journal: lock %s/%s: %s", j->dir, JOURNAL_LOCK_NAME,
                        strerror(e));
        return -1;
    }
    char pid[32];
    int len = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(j->lock_fd, 0) != 0 || pwrite(j->lock_fd, pid, (size_t)len, 0) != len)
        log_warn("journal_lock_pid", "dir=%s error=\"%s\"", j->dir, strerror(errno));
    return 0;
}

/* fsyncs the directory holding the journal directory: without it a power
 * loss can take the journal directory's own name, and every segment with
 * it, however well they were fsynced. */
static int journal_sync_parent(struct journal *j, char *err, size_t errlen)
{
    int fd = openat(j->dirfd, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        errbuf_setf(err, errlen, "journal: fsync the directory holding %s: %s", j->dir,
                    strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

static void journal_consumer_file(char *name, size_t len, const char *consumer)
{
    snprintf(name, len, "%s%s", consumer, JOURNAL_CONSUMER_SUFFIX);
}

/* Reads each configured consumer's confirmed seq ("<seq>\n"; no file: 0). */
static int journal_consumers_load(struct journal *j, char *err, size_t errlen)
{
    for (size_t i = 0; i < j->nconsumers; i++) {
        char name[JOURNAL_CONSUMER_NAME_MAX + 32], text[32];
        journal_consumer_file(name, sizeof(name), j->consumers[i].name);
        int fd = openat(j->dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0 && errno == ENOENT)
            continue;
        ssize_t n = fd < 0 ? -1 : pread(fd, text, sizeof(text) - 1, 0);
        int e = errno;
        if (fd >= 0)
            close(fd);
        if (n < 0) {
            errbuf_setf(err, errlen, "journal: read %s/%s: %s", j->dir, name, strerror(e));
            return -1;
        }
        text[n] = '\0';
        char *end;
        errno = 0;
        unsigned long long v = strtoull(text, &end, 10);
        if (errno || end == text || *end != '\n') {
            errbuf_setf(err, errlen, "journal: %s/%s does not hold a sequence number", j->dir,
                        name);
            return -1;
        }
        j->consumers[i].confirmed = v;
    }
    return 0;
}

static struct journal_consumer *journal_consumer_find(struct journal *j, const char *name)
{
    for (size_t i = 0; i < j->nconsumers; i++)
        if (strcmp(j->consumers[i].name, name) == 0)
            return &j->consumers[i];
    return NULL;
}

int journal_consumer_position(struct journal *j, const char *name, uint64_t *seq)
{
    pthread_mutex_lock(&j->mu);
    struct journal_consumer *c = journal_consumer_find(j, name);
    if (c)
        *seq = c->confirmed;
    pthread_mutex_unlock(&j->mu);
    return c ? 0 : -1;
}

int journal_consumer_confirm(struct journal *j, const char *name, uint64_t seq, char *err,
                             size_t errlen)
{
    uint64_t have;
    if (journal_consumer_position(j, name, &have) != 0) {
        errbuf_setf(err, errlen, "consumer %.64s is not configured on this node "
                    "(--journal-consumers)", name);
        return -1;
    }
    if (seq <= have)
        return 0;
    uint64_t durable = journal_durable_seq(j);
    if (seq > durable) {
        errbuf_setf(err, errlen, "consumer %.64s confirms seq %" PRIu64 " but the journal "
                    "holds up to %" PRIu64, name, seq, durable);
        return -1;
    }
    /* Written aside, fsynced, renamed over, directory fsynced: a power
     * loss leaves the old position or the new one, never a torn one. */
    char file[JOURNAL_CONSUMER_NAME_MAX + 32], tmp[JOURNAL_CONSUMER_NAME_MAX + 40], text[32];
    journal_consumer_file(file, sizeof(file), name);
    snprintf(tmp, sizeof(tmp), "%s.tmp", file);
    int len = snprintf(text, sizeof(text), "%" PRIu64 "\n", seq);
    pthread_mutex_lock(&j->cmu);
    int rc = -1;
    int fd = openat(j->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd >= 0 && write(fd, text, (size_t)len) == len && fdatasync(fd) == 0 && close(fd) == 0) {
        fd = -1;
        if (renameat(j->dirfd, tmp, j->dirfd, file) == 0 && fsync(j->dirfd) == 0)
            rc = 0;
    }
    int e = errno;
    if (fd >= 0)
        close(fd);
    if (rc == 0) {
        pthread_mutex_lock(&j->mu);
        struct journal_consumer *c = journal_consumer_find(j, name);
        if (c && seq > c->confirmed)
            c->confirmed = seq;
        pthread_mutex_unlock(&j->mu);
    } else {
        errbuf_setf(err, errlen, "journal: store the position of consumer %s: %s", name,
                    strerror(e));
    }
    pthread_mutex_unlock(&j->cmu);
    return rc;
}

void journal_probe_now(struct journal *j)
{
    struct statvfs sv;
    bool full = false;
    uint64_t avail = 0;
    if (fstatvfs(j->dirfd, &sv) == 0) {
        avail = (uint64_t)sv.f_bavail * sv.f_frsize;
        full = avail < JOURNAL_PROBE_BYTES;
    }
    if (j->probe_fd < 0)
        j->probe_fd = openat(j->dirfd, JOURNAL_LIVENESS_NAME, O_WRONLY | O_CREAT | O_CLOEXEC,
                             0600);
    int e = 0;
    const char *what = "probe write";
    uint64_t t0 = mono_now_ms();
    atomic_store(&j->probe_since_ms, t0 ? t0 : 1);
    if (j->probe_fd < 0) {
        e = errno;
        what = "probe open";
    } else {
        static const uint8_t block[JOURNAL_LIVENESS_BYTES];
        ssize_t w;
        do
            w = pwrite(j->probe_fd, block, sizeof(block), 0);
        while (w < 0 && errno == EINTR);
        if (w != (ssize_t)sizeof(block)) {
            e = w < 0 ? errno : EIO;
        } else if (fdatasync(j->probe_fd) != 0) {
            e = errno;
            what = "probe fsync";
        }
    }
    atomic_store(&j->probe_since_ms, 0);
    pthread_mutex_lock(&j->mu);
    if (full)
        journal_set_cause(j, JOURNAL_CAUSE_FULL, "journal: disk full: %" PRIu64
                          " bytes free", avail);
    else
        journal_clear_cause(j, JOURNAL_CAUSE_FULL);
    if (e)
        journal_set_unhealthy(j, JOURNAL_CAUSE_PROBE, what, e);
    else
        journal_clear_cause(j, JOURNAL_CAUSE_PROBE);
    pthread_mutex_unlock(&j->mu);
}

/* Probes the disk every probe_interval_ms until journal_free. Its own
 * thread: a disk that hangs holds this one, and journal_healthy sees it
 * from outside. */
static void *journal_probe_thread(void *arg)
{
    struct journal *j = arg;
    pthread_mutex_lock(&j->mu);
    while (!j->stop) {
        pthread_mutex_unlock(&j->mu);
        journal_probe_now(j);
        pthread_mutex_lock(&j->mu);
        if (j->stop)
            break;
        struct timespec ts;
        journal_deadline(&ts, j->cfg.probe_interval_ms);
        pthread_cond_timedwait(&j->probe_cond, &j->mu, &ts);
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

struct journal *journal_open(const struct journal_config *cfg, char *err, size_t errlen)
{
    struct journal *j = calloc(1, sizeof(*j));
    if (!j) {
        errbuf_setf(err, errlen, "journal: out of memory");
        return NULL;
    }
    j->cfg = *cfg;
    j->cfg.consumers = NULL; /* copied into j->consumers below */
    j->fd = j->dirfd = j->lock_fd = j->probe_fd = -1;
    if (!j->cfg.wall_ms)
        j->cfg.wall_ms = journal_real_wall_ms;
    if (j->cfg.fsync_batch == 0)
        j->cfg.fsync_batch = 1;
    if (j->cfg.segment_bytes == 0)
        j->cfg.segment_bytes = 64u << 20;
    j->dir = strdup(cfg->dir ? cfg->dir : "");
    j->cfg.dir = j->dir;
    if (!j->dir) {
        errbuf_setf(err, errlen, "journal: out of memory");
        goto fail;
    }
    int rc = pthread_mutex_init(&j->mu, NULL);
    j->mu_ok = rc == 0;
    if (rc == 0) {
        rc = pthread_mutex_init(&j->wmu, NULL);
        j->wmu_ok = rc == 0;
    }
    if (rc == 0) {
        rc = pthread_mutex_init(&j->cmu, NULL);
        j->cmu_ok = rc == 0;
    }
    pthread_condattr_t ca;
    if (rc == 0)
        rc = pthread_condattr_init(&ca);
    if (rc == 0) {
        /* Deadlines on the monotonic clock: a wall clock step must not
         * stall or hurry group commit. */
        rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        if (rc == 0) {
            rc = pthread_cond_init(&j->cond, &ca);
            j->cond_ok = rc == 0;
        }
        if (rc == 0) {
            rc = pthread_cond_init(&j->probe_cond, &ca);
            j->probe_cond_ok = rc == 0;
        }
        pthread_condattr_destroy(&ca);
    }
    if (rc != 0) {
        errbuf_setf(err, errlen, "journal: pthread init: %s", strerror(rc));
        goto fail;
    }
    atomic_init(&j->durable, 0);
    atomic_init(&j->lost_gen, 0);
    atomic_init(&j->unhealthy, false);
    atomic_init(&j->held_full, false);
    atomic_init(&j->probe_since_ms, 0);
    atomic_init(&j->sync_since_ms, 0);

    if (j->dir[0] == '\0') {
        errbuf_setf(err, errlen, "journal: no directory given");
        goto fail;
    }
    if (cfg->nconsumers > JOURNAL_CONSUMERS_MAX) {
        errbuf_setf(err, errlen, "journal: at most %d consumers", JOURNAL_CONSUMERS_MAX);
        goto fail;
    }
    for (size_t i = 0; i < cfg->nconsumers; i++) {
        if (!hb_node_id_valid(cfg->consumers[i])) {
            errbuf_setf(err, errlen, "journal: consumer name \"%.64s\" is not [A-Za-z0-9._-]{1,64}",
                        cfg->consumers[i]);
            goto fail;
        }
        snprintf(j->consumers[j->nconsumers++].name, JOURNAL_CONSUMER_NAME_MAX + 1, "%s",
                 cfg->consumers[i]);
    }
    /* Segments hold client payloads: the node's user only. */
    if (mkdir(j->dir, 0700) != 0 && errno != EEXIST) {
        errbuf_setf(err, errlen, "journal: mkdir %s: %s", j->dir, strerror(errno));
        goto fail;
    }
    j->dirfd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (j->dirfd < 0) {
        errbuf_setf(err, errlen, "journal: open %s: %s", j->dir, strerror(errno));
        goto fail;
    }
    if (journal_lock(j, err, errlen) != 0 || journal_sync_parent(j, err, errlen) != 0 ||
        journal_consumers_load(j, err, errlen) != 0)
        goto fail;
    if (journal_recover(j, err, errlen) != 0)
        goto fail;
    j->probe_fd = openat(j->dirfd, JOURNAL_LIVENESS_NAME, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    /* A failure here (a full disk, say) is for the probe to report. */
    j->next_maint_ms = mono_now_ms();
    if (!j->cfg.manual_sync) {
        rc = pthread_create(&j->thread, NULL, journal_thread, j);
        if (rc != 0) {
            errbuf_setf(err, errlen, "journal: pthread_create: %s", strerror(rc));
            goto fail;
        }
        j->started = true;
        if (j->cfg.probe_interval_ms) {
            rc = pthread_create(&j->probe_thread, NULL, journal_probe_thread, j);
            if (rc != 0) {
                errbuf_setf(err, errlen, "journal: pthread_create: %s", strerror(rc));
                goto fail;
            }
            j->probe_started = true;
        }
    }
    return j;
fail:
    journal_free(j);
    return NULL;
}

void journal_free(struct journal *j)
{
    if (!j)
        return;
    if (j->started) {
        pthread_mutex_lock(&j->mu);
        j->stop = true;
        pthread_cond_signal(&j->cond);
        if (j->probe_started)
            pthread_cond_signal(&j->probe_cond);
        pthread_mutex_unlock(&j->mu);
        pthread_join(j->thread, NULL);
        if (j->probe_started)
            pthread_join(j->probe_thread, NULL);
    }
    /* A clean stop leaves everything written on disk, whatever the policy. */
    if (j->mu_ok && j->wmu_ok) {
        pthread_mutex_lock(&j->mu);
        if (j->dirfd >= 0 && (j->written_seq > j->synced_seq || j->nretired || j->dir_dirty))
            journal_sync_round(j);
        pthread_mutex_unlock(&j->mu);
    }
    for (unsigned i = 0; i < j->nretired; i++)
        close(j->retired[i]);
    free(j->retired);
    free(j->syncing);
    if (j->fd >= 0)
        close(j->fd);
    if (j->probe_fd >= 0)
        close(j->probe_fd);
    if (j->lock_fd >= 0)
        close(j->lock_fd); /* releases the flock */
    if (j->dirfd >= 0)
        close(j->dirfd);
    if (j->cond_ok)
        pthread_cond_destroy(&j->cond);
    if (j->probe_cond_ok)
        pthread_cond_destroy(&j->probe_cond);
    if (j->cmu_ok)
        pthread_mutex_destroy(&j->cmu);
    if (j->wmu_ok)
        pthread_mutex_destroy(&j->wmu);
    if (j->mu_ok)
        pthread_mutex_destroy(&j->mu);
    free(j->dir);
    free(j);
}

/* ------------------------------------------------------------ reader */

struct journal_reader {
    char *dir;
    int fd;              /* segment being read, -1 before the first */
    uint64_t seg_first;
    uint64_t off;
    uint64_t next;       /* seq the next record must have */
    bool at_end;         /* at the end of fd, no newer segment as of ... */
    uint64_t at_end_max; /* ... this max_seq: no need to list again before it moves */
};

struct journal_reader *journal_reader_new(const char *dir, uint64_t from_seq)
{
    struct journal_reader *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->dir = strdup(dir);
    if (!r->dir) {
        free(r);
        return NULL;
    }
    r->fd = -1;
    r->next = from_seq ? from_seq : 1;
    return r;
}

void journal_reader_free(struct journal_reader *r)
{
    if (!r)
        return;
    if (r->fd >= 0)
        close(r->fd);
    free(r->dir);
    free(r);
}

uint64_t journal_reader_seq(const struct journal_reader *r) { return r->next; }

/* Opens the segment holding r->next, or the first one after the current.
 * 1 opened, 0 none there (yet), -1 error. */
static int journal_reader_open(struct journal_reader *r, bool after_current, char *err,
                               size_t errlen)
{
    struct journal_seg *segs;
    size_t n;
    if (journal_list(r->dir, &segs, &n) != 0) {
        errbuf_setf(err, errlen, "journal: list %s: %s", r->dir, strerror(errno));
        return -1;
    }
    ssize_t pick = -1;
    for (size_t i = 0; i < n; i++) {
        if (after_current) {
            if (segs[i].first > r->seg_first) {
                pick = (ssize_t)i;
                break;
            }
        } else if (segs[i].first <= r->next) {
            pick = (ssize_t)i;
        }
    }
    if (pick < 0 && !after_current && n > 0)
        pick = 0; /* what was asked for is gone: start at the oldest kept */
    if (pick < 0) {
        free(segs);
        return 0;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", r->dir, segs[pick].name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        free(segs);
        if (e == ENOENT)
            return 0; /* deleted by retention meanwhile: the next call lists again */
        errbuf_setf(err, errlen, "journal: open %s: %s", path, strerror(e));
        return -1;
    }
    if (r->fd >= 0)
        close(r->fd);
    r->fd = fd;
    r->seg_first = segs[pick].first;
    r->off = 0;
    r->at_end = false;
    if (r->seg_first > r->next)
        r->next = r->seg_first; /* a gap: retention or a truncating recovery */
    free(segs);
    return 1;
}

static ssize_t journal_pread_all(int fd, void *p, size_t len, uint64_t off)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, (uint8_t *)p + got, len - got, (off_t)(off + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

int journal_reader_next(struct journal_reader *r, uint64_t max_seq, struct buf *raw,
                        struct journal_record *rec, char *err, size_t errlen)
{
    for (int hops = 0; hops < 1000000; hops++) {
        if (r->next > max_seq)
            return 0;
        if (r->fd < 0) {
            int o = journal_reader_open(r, false, err, errlen);
            if (o <= 0)
                return o;
        }
        uint8_t h[JOURNAL_HEADER_SIZE];
        ssize_t got = journal_pread_all(r->fd, h, sizeof(h), r->off);
        if (got < 0) {
            errbuf_setf(err, errlen, "journal: read %s/%020" PRIu64 ".seg: %s", r->dir,
                        r->seg_first, strerror(errno));
            return -1;
        }
        if (got == 0) {
            /* End of this segment: the record is in the next one. Any
             * segment holding a record <= max_seq existed before max_seq
             * was published, so one listing per max_seq finds it. */
            if (r->at_end && r->at_end_max == max_seq && max_seq != UINT64_MAX)
                return 0;
            int o = journal_reader_open(r, true, err, errlen);
            if (o == 0) {
                r->at_end = true;
                r->at_end_max = max_seq;
            }
            if (o <= 0)
                return o;
            continue;
        }
        if ((size_t)got < sizeof(h))
            return 0; /* being written: not durable yet */
        uint32_t rl;
        if (journal_record_length(h, sizeof(h), &rl) != 1) {
            errbuf_setf(err, errlen, "journal: bad record header in %s/%020" PRIu64
                        ".seg at byte %" PRIu64, r->dir, r->seg_first, r->off);
            return -1;
        }
        buf_clear(raw);
        if (buf_reserve(raw, rl) != 0) {
            errbuf_setf(err, errlen, "journal: out of memory");
            return -1;
        }
        got = journal_pread_all(r->fd, buf_tail(raw), rl, r->off);
        if (got < 0) {
            errbuf_setf(err, errlen, "journal: read %s/%020" PRIu64 ".seg: %s", r->dir,
                        r->seg_first, strerror(errno));
            return -1;
        }
        if ((size_t)got < rl)
            return 0;
        buf_commit(raw, rl);
        if (journal_record_parse(buf_head(raw), rl, rec) != (long)rl) {
            errbuf_setf(err, errlen, "journal: bad record (CRC32C) in %s/%020" PRIu64
                        ".seg at byte %" PRIu64, r->dir, r->seg_first, r->off);
            return -1;
        }
        if (rec->seq > max_seq)
            return 0;
        r->off += rl;
        if (rec->seq < r->next)
            continue; /* before the start asked for */
        r->next = rec->seq + 1;
        return 1;
    }
    return 0;
}

int journal_reader_skip(struct journal_reader *r, char *err, size_t errlen)
{
    return journal_reader_open(r, r->fd >= 0, err, errlen);
}

int journal_read_next(struct journal *j, struct journal_reader *r, struct buf *raw,
                      struct journal_record *rec, char *err, size_t errlen)
{
    uint64_t durable = journal_durable_seq(j);
    for (int hops = 0; hops < 4096; hops++) {
        int rc = journal_reader_next(r, durable, raw, rec, err, errlen);
        if (rc == 1) {
            if (journal_state(j, rec->seq) != JOURNAL_LOST)
                return 1;
            continue; /* its client was told it failed */
        }
        uint64_t s = journal_reader_seq(r);
        if (s > durable || journal_state(j, s) != JOURNAL_LOST)
            return rc;
        /* A segment abandoned after a failed fsync: its tail may be missing
         * or unreadable, and holds only lost records. Go on in the next. */
        int o = journal_reader_skip(r, err, errlen);
        if (o <= 0)
            return o;
    }
    return 0; /* a long lost stretch: the caller comes back for the rest */
}
