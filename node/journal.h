/* journal: the node's append-only, checksummed record of every SEND it
 * acknowledges: segment files in one directory, group commit on its own
 * thread, recovery at open, retention, and a reader for the downstream feed.
 * Record format and guarantees: docs/DESIGN.md, "Journal". */
#ifndef BERTH_JOURNAL_H
#define BERTH_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "buf.h"
#include "journal_record.h" /* the record format, shared with the feed and berth tail */

#define JOURNAL_SEG_NAME_LEN 24      /* 20 digits + ".seg" */
#define JOURNAL_CONSUMER_NAME_MAX 64 /* consumer names follow the node-id rule */
#define JOURNAL_CONSUMERS_MAX 16
#define JOURNAL_LOCK_NAME "LOCK"     /* flock'ed by the node that has the directory open */

enum journal_fsync {
    JOURNAL_FSYNC_ALWAYS, /* no ACK before its record is fsynced; fsync whatever is queued */
    JOURNAL_FSYNC_BATCH,  /* group commit: fsync every interval or batch records */
    JOURNAL_FSYNC_OFF,    /* ACK after write(): a power loss can lose ACKed records */
};

enum journal_recover {
    JOURNAL_RECOVER_REFUSE,   /* a bad record before the tail: journal_open fails */
    JOURNAL_RECOVER_TRUNCATE, /* ... cut that segment at the bad record, log it, go on */
};

/* Settings; strings are copied. */
struct journal_config {
    const char *dir;               /* created (one level) if missing */
    enum journal_fsync fsync;
    uint32_t fsync_interval_ms;    /* batch: longest a record waits for its fsync */
    uint32_t fsync_batch;          /* batch: this many pending records fsync at once */
    uint64_t segment_bytes;        /* a segment rolls before it would exceed this */
    uint64_t retain_bytes;         /* delete oldest segments above this total; 0: no limit */
    uint64_t retain_age_ms;        /* delete segments last written longer ago; 0: no limit */
    enum journal_recover recover;
    /* Wall clock in Unix ms for timestamps and retention age; NULL: the real one. */
    uint64_t (*wall_ms)(void *arg);
    void *clock_arg;
    /* Tests: no thread; journal_sync_now does one pass of its work. */
    bool manual_sync;
    /* Tests: replaces writev(2) for appends to inject failures. */
    ssize_t (*writev_hook)(int fd, const struct iovec *iov, int iovcnt);
    /* Tests: replaces fdatasync(2) of segments (and the health probe). */
    int (*fsync_hook)(int fd);
    /* Liveness probe: every probe_interval_ms a small write+fdatasync and a
     * free-space check on the journal's filesystem, on a thread of its own
     * (0: no probe thread). A write or fsync of the probe or of a sync
     * round pending longer than probe_timeout_ms makes the journal
     * unhealthy while it lasts (0: never). */
    uint32_t probe_interval_ms;
    uint32_t probe_timeout_ms;
    /* Consumers retention waits for (names as hb_node_id_valid, at most
     * JOURNAL_CONSUMERS_MAX): no segment holding a record a consumer has
     * not confirmed is deleted. Over retain_bytes with the oldest segment
     * held, appends are refused and the journal is unhealthy until a
     * consumer confirms more. No consumers: retention deletes by size and
     * age alone, read or not. */
    const char *const *consumers;
    size_t nconsumers;
};

/* Where a record's ACK stands. */
enum journal_state {
    JOURNAL_PENDING, /* written, not yet durable under the fsync policy */
    JOURNAL_DURABLE, /* stored: the ACK may go */
    JOURNAL_LOST,    /* its fsync failed: it must never be acknowledged */
};

struct journal;

/* Opens (creating, mode 0700, and making its name durable) the directory,
 * takes its lock (a second node on the same directory fails here, naming
 * the holder's pid), recovers the segments (keeps every complete record,
 * cuts a torn tail, refuses a bad record with a valid one after it,
 * naming the file and byte offset in err) and starts the sync and probe
 * threads. NULL with the reason in err. */
struct journal *journal_open(const struct journal_config *cfg, char *err, size_t errlen);
/* Stops the thread, fsyncs what was written, closes. NULL is a no-op. */
void journal_free(struct journal *j);

/* Appends one record (thread-safe; never waits for the disk except in the
 * write(2) itself: rolled segments get their fsync on the sync thread).
 * Returns 0 with *seq set, or -1 with the cause in err: nothing was stored
 * and the journal reports itself unhealthy. */
int journal_append(struct journal *j, const struct journal_entry *e, uint64_t *seq, char *err,
                   size_t errlen);

/* Durability of seq as of now; cheap (one atomic load on the fast path).
 * A lost record stays LOST for the journal's lifetime (past many failures,
 * a durable record between two lost ranges may read as LOST too). */
enum journal_state journal_state(struct journal *j, uint64_t seq);
/* The durable watermark: every record up to it is DURABLE or LOST (lost
 * ranges lie below it once a later fsync worked). */
uint64_t journal_durable_seq(const struct journal *j);
/* The seq the next record gets; the last stored is one less. */
uint64_t journal_next_seq(struct journal *j);
/* The seq of the oldest record still on disk (journal_next_seq if none). */
uint64_t journal_first_seq(struct journal *j);
const char *journal_dir(const struct journal *j);

/* Registers an eventfd written after the durable (or, with fsync off, the
 * written) seq advanced or a record was lost; written without the append
 * lock held. Up to 64. Returns 0 or -1. */
int journal_add_waiter(struct journal *j, int efd);

/* Writes every registered eventfd now (the forwarder, when what it
 * delivered lets held ACKs go). */
void journal_wake(struct journal *j);

/* Unregisters efd: once this returns the journal never writes it again. */
void journal_remove_waiter(struct journal *j, int efd);

/* True while appends are refused because the journal is over its size
 * limit and a consumer holds its oldest segment (journal_append then fails
 * with errno ENOSPC). */
bool journal_held_full(struct journal *j);

/* False with "journal: <cause>" in reason while writes or fsyncs fail (disk
 * full, I/O error). A write failure clears with the next append that works;
 * an fsync failure with the next sync round that works; both with the
 * health probe (the directory takes a write and an fsync again). */
bool journal_healthy(struct journal *j, char *reason, size_t len);

/* Records that consumer name (configured) has everything up to seq, which
 * must be durable: written to "<name>.consumer" in the directory with
 * fsyncs before it returns, so a restart keeps it. A seq at or below the
 * one already confirmed is a no-op. 0, or -1 with err (not configured,
 * beyond the durable seq, a write failure). Thread-safe; waits for the disk. */
int journal_consumer_confirm(struct journal *j, const char *name, uint64_t seq, char *err,
                             size_t errlen);
/* The last seq consumer name confirmed (0: none yet); -1 if it is not
 * configured. */
int journal_consumer_position(struct journal *j, const char *name, uint64_t *seq);

/* One run of the liveness probe (what the probe thread does each period);
 * for tests with probe_interval_ms 0. */
void journal_probe_now(struct journal *j);

/* manual_sync mode (tests): one pass of the thread's work (fsync, notify,
 * retention, health probe), on the wall clock of journal_config.wall_ms. */
void journal_sync_now(struct journal *j);

/* Reader over the segments on disk, for replay and the feed (one thread). */
struct journal_reader;
/* Starts at from_seq (or the oldest record kept, if that is later). */
struct journal_reader *journal_reader_new(const char *dir, uint64_t from_seq);
void journal_reader_free(struct journal_reader *r);
/* Reads the next record with seq <= max_seq into raw (replacing its
 * content) and parses it into rec (borrowing from raw). Returns 1, 0 when
 * there is none up to max_seq yet, or -1 with err (a bad record, a missing
 * segment). */
int journal_reader_next(struct journal_reader *r, uint64_t max_seq, struct buf *raw,
                        struct journal_record *rec, char *err, size_t errlen);
/* The seq the next journal_reader_next returns. */
uint64_t journal_reader_seq(const struct journal_reader *r);
/* Leaves the current segment for the next newer one (the rest of this one
 * is not wanted). 1 moved, 0 none newer yet, -1 with err. */
int journal_reader_skip(struct journal_reader *r, char *err, size_t errlen);
/* What the feed sends: journal_reader_next up to the durable seq, passing
 * over lost records (their clients were told they failed) and the rest of
 * a segment abandoned after a failed fsync. Same returns. */
int journal_read_next(struct journal *j, struct journal_reader *r, struct buf *raw,
                      struct journal_record *rec, char *err, size_t errlen);

#endif
