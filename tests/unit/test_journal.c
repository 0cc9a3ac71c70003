/* Unit tests for node/journal.c: append and reopen, torn tails cut, a
 * corrupt record in the middle refused with its file and offset (or cut
 * with --journal-recover=truncate), segment roll, retention by size and by
 * age on a fake clock, the reader across segments, write and fsync
 * failures (an injected writev or fdatasync, RLIMIT_FSIZE) that store and
 * ACK nothing, lost records kept lost, and recovery after them; a flipped
 * length bit refused, the directory lock, owner-only modes, consumers that
 * hold retention, a hung fsync seen from outside. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "journal.h"

struct fx {
    char dir[256];
    uint64_t wall;          /* fake wall clock, Unix ms */
    struct journal_config cfg;
    char err[512];
};

static uint64_t fx_wall(void *arg) { return ((struct fx *)arg)->wall; }

static int fx_setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/berth-test-journal-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    f->wall = 1700000000000ull;
    f->cfg.dir = f->dir;
    f->cfg.fsync = JOURNAL_FSYNC_BATCH;
    f->cfg.fsync_interval_ms = 2;
    f->cfg.fsync_batch = 1024;
    f->cfg.segment_bytes = 1u << 20;
    f->cfg.wall_ms = fx_wall;
    f->cfg.clock_arg = f;
    f->cfg.manual_sync = true;
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static uint64_t put(struct journal *j, uint64_t mid, const char *text)
{
    struct journal_entry e = {
        .message_id = mid, .name = "cli", .name_len = 3, .peer = "127.0.0.1:9", .peer_len = 11,
        .data = text, .len = strlen(text),
    };
    uint64_t seq = 0;
    char err[256];
    assert_int_equal(journal_append(j, &e, &seq, err, sizeof(err)), 0);
    return seq;
}

static char *seg_path(struct fx *f, uint64_t first)
{
    static char p[400];
    snprintf(p, sizeof(p), "%s/%020llu.seg", f->dir, (unsigned long long)first);
    return p;
}

static off_t file_size(const char *p)
{
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    return st.st_size;
}

/* Reads every record from from_seq; checks they are consecutive; returns
 * how many, and the first seq in *first. */
static int read_all(struct fx *f, uint64_t from, uint64_t *first)
{
    struct journal_reader *r = journal_reader_new(f->dir, from);
    assert_non_null(r);
    struct buf raw;
    buf_init(&raw);
    struct journal_record rec;
    int n = 0, rc;
    uint64_t prev = 0;
    while ((rc = journal_reader_next(r, UINT64_MAX, &raw, &rec, f->err, sizeof(f->err))) == 1) {
        if (n == 0 && first)
            *first = rec.seq;
        if (n > 0)
            assert_int_equal(rec.seq, prev + 1);
        assert_int_equal(rec.message_id, rec.seq * 10);
        prev = rec.seq;
        n++;
    }
    assert_int_equal(rc, 0);
    buf_release(&raw);
    journal_reader_free(r);
    return n;
}

static void test_append_durable_reopen(void **state)
{
    struct fx *f = *state;
    struct journal *j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    assert_int_equal(journal_next_seq(j), 1);
    uint64_t s1 = put(j, 10, "hello");
    uint64_t s2 = put(j, 20, "world");
    assert_int_equal(s1, 1);
    assert_int_equal(s2, 2);
    /* batch: nothing is durable before the fsync */
    assert_int_equal(journal_state(j, 1), JOURNAL_PENDING);
    journal_sync_now(j);
    assert_int_equal(journal_state(j, 2), JOURNAL_DURABLE);
    assert_int_equal(journal_state(j, 3), JOURNAL_PENDING);
    journal_free(j);

    j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    assert_int_equal(journal_next_seq(j), 3);
    assert_int_equal(journal_durable_seq(j), 2);
    assert_int_equal(put(j, 30, "again"), 3);
    journal_free(j);

    struct journal_reader *r = journal_reader_new(f->dir, 1);
    struct buf raw;
    buf_init(&raw);
    struct journal_record rec;
    assert_int_equal(journal_reader_next(r, UINT64_MAX, &raw, &rec, f->err, sizeof(f->err)), 1);
    assert_int_equal(rec.seq, 1);
    assert_int_equal(rec.message_id, 10);
    assert_int_equal(rec.len, 5);
    assert_memory_equal(rec.data, "hello", 5);
    assert_int_equal(rec.name_len, 3);
    assert_memory_equal(rec.name, "cli", 3);
    assert_memory_equal(rec.peer, "127.0.0.1:9", 11);
    assert_int_equal(rec.timestamp_ms, f->wall);
    /* max_seq bounds what a reader sees: the feed reads only durable ones */
    assert_int_equal(journal_reader_next(r, 1, &raw, &rec, f->err, sizeof(f->err)), 0);
    buf_release(&raw);
    journal_reader_free(r);
    assert_int_equal(read_all(f, 1, NULL), 3);
}

static void test_torn_tail_cut(void **state)
{
    struct fx *f = *state;
    struct journal *j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    for (uint64_t i = 1; i <= 5; i++)
        put(j, i * 10, "payload");
    journal_free(j);
    char *p = seg_path(f, 1);
    off_t full = file_size(p);
    off_t rec = full / 5;
    /* Half of the last record: a crash mid-write. */
    assert_int_equal(truncate(p, full - rec / 2), 0);
    j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    assert_int_equal(journal_next_seq(j), 5);
    assert_int_equal(file_size(p), full - rec);
    assert_int_equal(put(j, 50, "payload"), 5);
    journal_free(j);

    /* A flipped byte in the last record: CRC bad at the very tail. */
    int fd = open(p, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "X", 1, full - 3), 1);
    close(fd);
    j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    assert_int_equal(journal_next_seq(j), 5);
    journal_free(j);

    /* Zeros after the last record (a file extended, data not written). */
    fd = open(p, O_RDWR | O_APPEND);
    char zeros[100] = {0};
    assert_int_equal(write(fd, zeros, sizeof(zeros)), sizeof(zeros));
    close(fd);
    j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    assert_int_equal(journal_next_seq(j), 5);
    assert_int_equal(file_size(p), full - rec);
    journal_free(j);
    assert_int_equal(read_all(f, 1, NULL), 4);
}

static void test_mid_corruption_refused(void **state)
{
    struct fx *f = *state;
    struct journal *j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    for (uint64_t i = 1; i <= 5; i++)
        put(j, i * 10, "payload");
    journal_free(j);
    char *p = seg_path(f, 1);
    off_t rec = file_size(p) / 5;
    int fd = open(p, O_RDWR);
    assert_int_equal(pwrite(fd, "X", 1, rec + JOURNAL_HEADER_SIZE + 2), 1); /* in record 2 */
    close(fd);
    assert_null(journal_open(&f->cfg, f->err, sizeof(f->err)));
    char want[64];
    snprintf(want, sizeof(want), "at byte %lld", (long long)rec);
    assert_non_null(strstr(f->err, want));
    assert_non_null(strstr(f->err, "00000000000000000001.seg"));
    /* refusing changed nothing on disk */
    assert_int_equal(file_size(p), rec * 5);

    f->cfg.recover = JOURNAL_RECOVER_TRUNCATE;
    j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    assert_int_equal(journal_next_seq(j), 2);
    assert_int_equal(file_size(p), rec);
    journal_free(j);
}

static void test_roll_and_corrupt_older_segment(void **state)
{
    struct fx *f = *state;
    f->cfg.segment_bytes = 300; /* about 4 records of 71 bytes */
    struct journal *j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    for (uint64_t i = 1; i <= 20; i++)
        assert_int_equal(put(j, i * 10, "payload1234"), i);
    journal_sync_now(j);
    assert_int_equal(journal_durable_seq(j), 20);
    journal_free(j);
    struct stat st;
    assert_int_equal(stat(seg_path(f, 5), &st), 0);
    assert_true(file_size(seg_path(f, 1)) <= 300);
    uint64_t first = 0;
    assert_int_equal(read_all(f, 7, &first), 14);
    assert_int_equal(first, 7);

    j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    assert_int_equal(put(j, 210, "payload1234"), 21);
    journal_free(j);

    /* A cut at the end of an older segment is a torn tail too (a power
     * loss before the roll was fsynced): nothing from there on was ever
     * durable. The segment is cut to whole records and the sequence goes on
     * after the newest, with a gap where the cut records were. */
    off_t sz = file_size(seg_path(f, 5));
    assert_int_equal(truncate(seg_path(f, 5), sz - 3), 0);
    j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    assert_int_equal(journal_next_seq(j), 22);
    journal_free(j);
    assert_int_equal(file_size(seg_path(f, 5)), sz / 4 * 3);
    struct journal_reader *r = journal_reader_new(f->dir, 6);
    struct buf raw;
    buf_init(&raw);
    struct journal_record rec;
    assert_int_equal(journal_reader_next(r, UINT64_MAX, &raw, &rec, f->err, sizeof(f->err)), 1);
    assert_int_equal(rec.seq, 6);
    assert_int_equal(journal_reader_next(r, UINT64_MAX, &raw, &rec, f->err, sizeof(f->err)), 1);
    assert_int_equal(rec.seq, 7);
    assert_int_equal(journal_reader_next(r, UINT64_MAX, &raw, &rec, f->err, sizeof(f->err)), 1);
    assert_int_equal(rec.seq, 9); /* 8 was cut */
    buf_release(&raw);
    journal_reader_free(r);

    /* A bad record in an older segment with valid ones after it in that
     * segment is corruption: refused, naming the file and offset. */
    int fd = open(seg_path(f, 9), O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "X", 1, JOURNAL_HEADER_SIZE + 1), 1);
    close(fd);
    assert_null(journal_open(&f->cfg, f->err, sizeof(f->err)));
    assert_non_null(strstr(f->err, "00000000000000000009.seg at byte 0"));
    assert_non_null(strstr(f->err, "refusing to start"));
}

static void test_retention_size_and_age(void **state)
{
    struct fx *f = *state;
    f->cfg.segment_bytes = 300;
    f->cfg.retain_bytes = 1000;
    struct journal *j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    for (uint64_t i = 1; i <= 40; i++)
        put(j, i * 10, "payload1234");
    /* Not durable yet: nothing may go. */
    journal_sync_now(j);
    uint64_t first = 0;
    int n = read_all(f, 1, &first);
    assert_true(first > 1);
    assert_int_equal(n, (int)(41 - first));
    assert_int_equal(journal_first_seq(j), first);
    /* what is left fits the limit plus the active segment */
    assert_true(n * 71 <= 1000 + 300);
    journal_free(j);

    /* Age: segments last written more than an hour ago go, the active stays. */
    f->cfg.retain_bytes = 0;
    f->cfg.retain_age_ms = 3600 * 1000;
    j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    f->wall = (uint64_t)time(NULL) * 1000 + 2 * 3600 * 1000;
    journal_sync_now(j);
    n = read_all(f, 1, &first);
    assert_int_equal(first, 37);  /* the last segment: seqs 37..40 */
    assert_int_equal(n, 4);
    journal_free(j);
    /* and recovery accepts a journal that starts later than 1 */
    j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    assert_int_equal(journal_next_seq(j), 41);
    journal_free(j);
}

static int fail_writes;
static int fail_errno;
static ssize_t failing_writev(int fd, const struct iovec *iov, int n)
{
    if (fail_writes) {
        /* a short write first, as a filling disk gives, then the error */
        if (fail_writes-- == 2 && iov[0].iov_len > 3)
            return write(fd, iov[0].iov_base, 3);
        errno = fail_errno;
        return -1;
    }
    return writev(fd, iov, n);
}

static void test_write_failure(void **state)
{
    struct fx *f = *state;
    f->cfg.writev_hook = failing_writev;
    struct journal *j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    put(j, 10, "one");
    fail_writes = 2;
    fail_errno = ENOSPC;
    struct journal_entry e = {.message_id = 20, .name = "c", .name_len = 1, .data = "two", .len = 3};
    uint64_t seq = 0;
    assert_int_equal(journal_append(j, &e, &seq, f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "No space left on device"));
    char reason[200];
    assert_false(journal_healthy(j, reason, sizeof(reason)));
    assert_string_equal(reason, "journal: write: No space left on device");
    /* the next write works: healthy again, and the seq was not used up */
    fail_writes = 0;
    assert_int_equal(put(j, 20, "two"), 2);
    assert_true(journal_healthy(j, NULL, 0));
    journal_sync_now(j);
    journal_free(j);
    /* the half record was cut: the file reopens clean */
    f->cfg.writev_hook = NULL;
    j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    assert_int_equal(journal_next_seq(j), 3);
    journal_free(j);
    assert_int_equal(read_all(f, 1, NULL), 2);
}

/* The real kernel path without root: a file size limit gives EFBIG. */
static void test_efbig_rlimit(void **state)
{
    struct fx *f = *state;
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_IGN);
    struct journal *j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    put(j, 10, "first");
    lim = old;
    lim.rlim_cur = 200;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    char big[300];
    memset(big, 'b', sizeof(big));
    struct journal_entry e = {.message_id = 20, .name = "c", .name_len = 1, .data = big,
                              .len = sizeof(big)};
    uint64_t seq = 0;
    int rc = journal_append(j, &e, &seq, f->err, sizeof(f->err));
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_DFL);
    assert_int_equal(rc, -1);
    assert_non_null(strstr(f->err, "File too large"));
    assert_false(journal_healthy(j, NULL, 0));
    /* the probe finds the directory writable again */
    journal_sync_now(j);
    assert_true(journal_healthy(j, NULL, 0));
    journal_free(j);
    j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    assert_int_equal(journal_next_seq(j), 2);
    journal_free(j);
}

static void test_off_and_always(void **state)
{
    struct fx *f = *state;
    f->cfg.fsync = JOURNAL_FSYNC_OFF;
    struct journal *j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    assert_int_equal(journal_state(j, put(j, 10, "x")), JOURNAL_DURABLE);
    journal_free(j);
    /* the thread: always fsyncs what is queued and wakes the waiter */
    f->cfg.fsync = JOURNAL_FSYNC_ALWAYS;
    f->cfg.manual_sync = false;
    j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    int efd = eventfd(0, 0);
    assert_true(efd >= 0);
    assert_int_equal(journal_add_waiter(j, efd), 0);
    uint64_t s = put(j, 20, "y");
    uint64_t v;
    for (int i = 0; i < 100 && journal_state(j, s) != JOURNAL_DURABLE; i++)
        assert_int_equal(read(efd, &v, sizeof(v)), sizeof(v)); /* blocks until a round */
    assert_int_equal(journal_state(j, s), JOURNAL_DURABLE);
    journal_free(j);
    close(efd);
}

/* fdatasync injection: fails the next fsync_fail calls; with hook_j set,
 * the first call appends one record to it first, as a worker does while
 * the sync thread is inside fdatasync. */
static int fsync_calls, fsync_fail;
static struct journal *hook_j;
static uint64_t hook_seq;
static int hooked_fsync(int fd)
{
    (void)fd;
    fsync_calls++;
    if (hook_j) {
        struct journal *j = hook_j;
        hook_j = NULL;
        hook_seq = put(j, 990, "during");
    }
    if (fsync_fail > 0) {
        fsync_fail--;
        errno = EIO;
        return -1;
    }
    return 0;
}

static struct journal *open_hooked(struct fx *f)
{
    fsync_calls = fsync_fail = 0;
    hook_j = NULL;
    hook_seq = 0;
    f->cfg.fsync = JOURNAL_FSYNC_ALWAYS;
    f->cfg.fsync_hook = hooked_fsync;
    struct journal *j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    return j;
}

/* Records appended while a failing fdatasync ran went to the same file:
 * lost with the rest. The file is not fsynced again (Linux reports the
 * error once, the next fdatasync returns 0), and later records go to a new
 * segment. The feed never gets a lost record. */
static void test_fsync_failure_loses_everything_written(void **state)
{
    struct fx *f = *state;
    struct journal *j = open_hooked(f);
    uint64_t s1 = put(j, 10, "first");
    hook_j = j;
    fsync_fail = 2; /* the round and the health probe after it */
    journal_sync_now(j);
    assert_int_equal(hook_seq, 2);
    assert_int_equal(journal_state(j, s1), JOURNAL_LOST);
    assert_int_equal(journal_state(j, hook_seq), JOURNAL_LOST);
    char reason[200];
    assert_false(journal_healthy(j, reason, sizeof(reason)));
    assert_string_equal(reason, "journal: fsync: Input/output error");
    int calls = fsync_calls;
    journal_sync_now(j); /* fdatasync would work now: nothing may turn durable */
    assert_int_equal(journal_state(j, hook_seq), JOURNAL_LOST);
    assert_int_equal(fsync_calls, calls + 1); /* the probe only: the file is not fsynced again */
    assert_true(journal_healthy(j, NULL, 0));
    uint64_t s3 = put(j, 30, "after");
    assert_int_equal(s3, 3);
    struct stat st;
    assert_int_equal(stat(seg_path(f, 3), &st), 0); /* a new segment */
    journal_sync_now(j);
    assert_int_equal(journal_state(j, s3), JOURNAL_DURABLE);
    assert_int_equal(journal_durable_seq(j), 3);
    assert_int_equal(journal_state(j, s1), JOURNAL_LOST);

    /* The feed's read passes over the lost records. */
    struct journal_reader *r = journal_reader_new(f->dir, 1);
    struct buf raw;
    buf_init(&raw);
    struct journal_record rec;
    assert_int_equal(journal_read_next(j, r, &raw, &rec, f->err, sizeof(f->err)), 1);
    assert_int_equal(rec.seq, 3);
    assert_int_equal(journal_read_next(j, r, &raw, &rec, f->err, sizeof(f->err)), 0);
    journal_reader_free(r);
    journal_free(j);

    /* The failed writeback really lost the abandoned segment's tail (cut
     * mid-record 2): that older segment's bad tail is torn, and recovery
     * accepts the gap before segment 3. */
    off_t sz = file_size(seg_path(f, 1));
    assert_int_equal(truncate(seg_path(f, 1), sz - 5), 0);
    f->cfg.fsync_hook = NULL;
    j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    assert_int_equal(journal_next_seq(j), 4);
    journal_free(j);
    r = journal_reader_new(f->dir, 1);
    assert_int_equal(journal_reader_next(r, UINT64_MAX, &raw, &rec, f->err, sizeof(f->err)), 1);
    assert_int_equal(rec.seq, 1);
    assert_int_equal(journal_reader_next(r, UINT64_MAX, &raw, &rec, f->err, sizeof(f->err)), 1);
    assert_int_equal(rec.seq, 3);
    buf_release(&raw);
    journal_reader_free(r);
}

/* While the node runs, an abandoned segment whose lost tail cannot be read
 * does not stop the feed: it goes on in the next segment. */
static void test_feed_skips_unreadable_lost_tail(void **state)
{
    struct fx *f = *state;
    struct journal *j = open_hooked(f);
    uint64_t s1 = put(j, 10, "kept");
    journal_sync_now(j);
    assert_int_equal(journal_state(j, s1), JOURNAL_DURABLE);
    put(j, 20, "lost-a");
    put(j, 30, "lost-b");
    fsync_fail = 1;
    journal_sync_now(j);
    assert_int_equal(journal_state(j, 3), JOURNAL_LOST);
    off_t sz = file_size(seg_path(f, 1));
    assert_int_equal(truncate(seg_path(f, 1), sz - 7), 0); /* record 3 unreadable */
    uint64_t s4 = put(j, 40, "new");
    journal_sync_now(j);
    assert_int_equal(journal_state(j, s4), JOURNAL_DURABLE);
    struct journal_reader *r = journal_reader_new(f->dir, 1);
    struct buf raw;
    buf_init(&raw);
    struct journal_record rec;
    assert_int_equal(journal_read_next(j, r, &raw, &rec, f->err, sizeof(f->err)), 1);
    assert_int_equal(rec.seq, 1);
    assert_int_equal(journal_read_next(j, r, &raw, &rec, f->err, sizeof(f->err)), 1);
    assert_int_equal(rec.seq, 4);
    assert_int_equal(journal_read_next(j, r, &raw, &rec, f->err, sizeof(f->err)), 0);
    buf_release(&raw);
    journal_reader_free(r);
    journal_free(j);
}

/* Segments far smaller than a record: every append rolls. A worker never
 * fsyncs a rolled segment itself (it would wait for the disk under the
 * lock and, before, dropped the failure); the round does, and a failure
 * there loses every record. */
static void test_roll_never_fsyncs_inline(void **state)
{
    struct fx *f = *state;
    f->cfg.segment_bytes = 1;
    struct journal *j = open_hooked(f);
    for (uint64_t i = 1; i <= 40; i++)
        assert_int_equal(put(j, i * 10, "r"), i);
    assert_int_equal(fsync_calls, 0);
    fsync_fail = 2;
    journal_sync_now(j);
    for (uint64_t i = 1; i <= 40; i++)
        assert_int_equal(journal_state(j, i), JOURNAL_LOST);
    assert_false(journal_healthy(j, NULL, 0));
    journal_sync_now(j);
    assert_int_equal(journal_state(j, 40), JOURNAL_LOST);
    uint64_t s = put(j, 410, "r");
    journal_sync_now(j);
    assert_int_equal(journal_state(j, s), JOURNAL_DURABLE);
    assert_int_equal(journal_state(j, 17), JOURNAL_LOST);
    journal_free(j);
}

/* More failed rounds than ranges kept apart: the oldest lost record still
 * reads LOST once later rounds work (it read DURABLE when the ring forgot
 * its range). */
static void test_lost_ranges_never_forgotten(void **state)
{
    struct fx *f = *state;
    struct journal *j = open_hooked(f);
    uint64_t lost[40], good[40];
    for (int i = 0; i < 40; i++) {
        lost[i] = put(j, 1, "lost");
        fsync_fail = 1;
        journal_sync_now(j);
        good[i] = put(j, 2, "good");
        journal_sync_now(j);
        assert_int_equal(journal_state(j, good[i]), JOURNAL_DURABLE);
    }
    uint64_t last = put(j, 3, "last");
    journal_sync_now(j);
    for (int i = 0; i < 40; i++)
        assert_int_equal(journal_state(j, lost[i]), JOURNAL_LOST);
    assert_int_equal(journal_state(j, good[39]), JOURNAL_DURABLE);
    assert_int_equal(journal_state(j, last), JOURNAL_DURABLE);
    journal_free(j);
}

/* A write into the page cache says nothing about the disk: under a failing
 * fsync the journal stays unhealthy across appends, until a round works. */
static void test_fsync_failure_keeps_unhealthy(void **state)
{
    struct fx *f = *state;
    struct journal *j = open_hooked(f);
    put(j, 10, "a");
    fsync_fail = 2; /* the round and the probe */
    journal_sync_now(j);
    char reason[200];
    assert_false(journal_healthy(j, reason, sizeof(reason)));
    put(j, 20, "b");
    assert_false(journal_healthy(j, reason, sizeof(reason)));
    assert_string_equal(reason, "journal: fsync: Input/output error");
    journal_sync_now(j);
    assert_true(journal_healthy(j, NULL, 0));
    assert_int_equal(journal_state(j, 2), JOURNAL_DURABLE);
    journal_free(j);
}

/* One flipped bit in a record's length in the newest segment makes the
 * length run past the end of the file: with intact records after it, that
 * is corruption (refused, naming file and offset), not a torn tail whose
 * cut would drop acknowledged records and hand their seqs out again. */
static void test_length_bitflip_in_newest_refused(void **state)
{
    struct fx *f = *state;
    struct journal *j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    for (uint64_t i = 1; i <= 5; i++)
        put(j, i * 10, "payload");
    journal_sync_now(j);
    journal_free(j);
    char *p = seg_path(f, 1);
    off_t rec = file_size(p) / 5;
    int fd = open(p, O_RDWR);
    assert_true(fd >= 0);
    uint8_t len[4];
    assert_int_equal(pread(fd, len, 4, rec + 4), 4);  /* record 2's length */
    len[1] ^= 0x10;                                   /* now past the end of the file */
    assert_int_equal(pwrite(fd, len, 4, rec + 4), 4);
    close(fd);
    assert_null(journal_open(&f->cfg, f->err, sizeof(f->err)));
    char want[64];
    snprintf(want, sizeof(want), "at byte %lld", (long long)rec);
    assert_non_null(strstr(f->err, want));
    assert_non_null(strstr(f->err, "00000000000000000001.seg"));
    assert_int_equal(file_size(p), rec * 5); /* nothing cut */
}

/* A second open of the same directory fails at once, naming the holder. */
static void test_second_open_refused(void **state)
{
    struct fx *f = *state;
    struct journal *j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    assert_null(journal_open(&f->cfg, f->err, sizeof(f->err)));
    char want[64];
    snprintf(want, sizeof(want), "in use by another berth-node (pid %ld)", (long)getpid());
    assert_non_null(strstr(f->err, want));
    assert_non_null(strstr(f->err, f->dir));
    journal_free(j);
    j = journal_open(&f->cfg, f->err, sizeof(f->err)); /* the lock went with it */
    assert_non_null(j);
    journal_free(j);
}

/* Client payloads: the directory and every file in it for the node's user. */
static void test_modes_owner_only(void **state)
{
    struct fx *f = *state;
    char sub[300];
    snprintf(sub, sizeof(sub), "%s/j", f->dir);
    f->cfg.dir = sub;
    mode_t old = umask(0);
    struct journal *j = journal_open(&f->cfg, f->err, sizeof(f->err));
    umask(old);
    assert_non_null(j);
    put(j, 10, "payload");
    journal_sync_now(j);
    struct stat st;
    assert_int_equal(stat(sub, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    char seg[400];
    snprintf(seg, sizeof(seg), "%s/%020llu.seg", sub, 1ull);
    assert_int_equal(stat(seg, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    journal_free(j);
}

/* A consumer that has not confirmed holds retention: over the size limit
 * the journal refuses appends and is unhealthy, naming the consumer; once
 * it confirms, retention deletes and appends work again. Its position
 * survives a reopen. */
static void test_consumer_holds_retention(void **state)
{
    struct fx *f = *state;
    const char *consumers[] = {"archive"};
    f->cfg.segment_bytes = 300;
    f->cfg.retain_bytes = 1000;
    f->cfg.consumers = consumers;
    f->cfg.nconsumers = 1;
    struct journal *j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    for (uint64_t i = 1; i <= 40; i++)
        put(j, i * 10, "payload1234");
    journal_sync_now(j);
    uint64_t first = 0;
    assert_int_equal(read_all(f, 1, &first), 40); /* nothing deleted */
    assert_int_equal(first, 1);
    char reason[200];
    assert_false(journal_healthy(j, reason, sizeof(reason)));
    assert_non_null(strstr(reason, "consumer archive"));
    struct journal_entry e = {.message_id = 410, .name = "cli", .name_len = 3, .data = "x",
                              .len = 1};
    uint64_t seq;
    assert_int_equal(journal_append(j, &e, &seq, f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "consumer archive"));

    /* Not beyond what is stored, and not an unknown consumer. */
    assert_int_equal(journal_consumer_confirm(j, "archive", 41, f->err, sizeof(f->err)), -1);
    assert_int_equal(journal_consumer_confirm(j, "other", 1, f->err, sizeof(f->err)), -1);
    assert_int_equal(journal_consumer_confirm(j, "archive", 30, f->err, sizeof(f->err)), 0);
    journal_sync_now(j);
    assert_true(journal_healthy(j, NULL, 0));
    int n = read_all(f, 1, &first);
    assert_true(first > 1 && first <= 31);
    assert_int_equal(n, (int)(41 - first));
    assert_int_equal(put(j, 410, "payload1234"), 41);
    journal_free(j);

    j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    uint64_t pos = 0;
    assert_int_equal(journal_consumer_position(j, "archive", &pos), 0);
    assert_int_equal(pos, 30);
    assert_int_equal(journal_consumer_position(j, "other", &pos), -1);
    journal_free(j);

    const char *bad[] = {"../x"};
    f->cfg.consumers = bad;
    assert_null(journal_open(&f->cfg, f->err, sizeof(f->err)));
    assert_non_null(strstr(f->err, "consumer name"));
}

/* A sync round whose fsync does not return (a frozen disk) shows as
 * unhealthy from outside while it hangs, and healthy once it returns. */
static sem_t hang_go;
static int hanging_fsync(int fd)
{
    while (sem_wait(&hang_go) != 0 && errno == EINTR)
        ;
    return fdatasync(fd);
}

static void *sync_now_thread(void *arg)
{
    journal_sync_now(arg);
    return NULL;
}

static void test_hung_fsync_unhealthy(void **state)
{
    struct fx *f = *state;
    assert_int_equal(sem_init(&hang_go, 0, 0), 0);
    f->cfg.fsync_hook = hanging_fsync;
    f->cfg.probe_timeout_ms = 20;
    struct journal *j = journal_open(&f->cfg, f->err, sizeof(f->err));
    assert_non_null(j);
    put(j, 10, "payload");
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, sync_now_thread, j), 0);
    char reason[200] = "";
    /* Bounded: 100 x 10 ms, five times the timeout and more. */
    for (int i = 0; i < 100 && journal_healthy(j, reason, sizeof(reason)); i++)
        usleep(10 * 1000);
    assert_non_null(strstr(reason, "disk not responding"));
    assert_int_equal(journal_state(j, 1), JOURNAL_PENDING);
    assert_int_equal(sem_post(&hang_go), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_true(journal_healthy(j, NULL, 0));
    assert_int_equal(journal_state(j, 1), JOURNAL_DURABLE);
    journal_free(j);
    sem_destroy(&hang_go);
}

static void test_record_parse_rejects(void **state)
{
    (void)state;
    uint8_t b[64];
    struct journal_record rec;
    memset(b, 0, sizeof(b));
    assert_int_equal(journal_record_parse(b, 4, &rec), 0);
    assert_int_equal(journal_record_parse(b, sizeof(b), &rec), -1);
    b[0] = 0x42, b[1] = 0x4A, b[2] = 0x52, b[3] = 0x31;
    b[7] = 10; /* length below the header */
    assert_int_equal(journal_record_parse(b, sizeof(b), &rec), -1);
    b[6] = 0xff, b[5] = 0xff, b[4] = 0xff; /* beyond the maximum */
    assert_int_equal(journal_record_parse(b, sizeof(b), &rec), -1);
    b[4] = b[5] = 0, b[6] = 0, b[7] = 60; /* fits, CRC wrong */
    assert_int_equal(journal_record_parse(b, sizeof(b), &rec), -1);
    assert_int_equal(journal_record_parse(b, 50, &rec), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_append_durable_reopen, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_cut, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_mid_corruption_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_roll_and_corrupt_older_segment, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_retention_size_and_age, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_write_failure, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_efbig_rlimit, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_off_and_always, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_fsync_failure_loses_everything_written, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_feed_skips_unreadable_lost_tail, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_roll_never_fsyncs_inline, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_lost_ranges_never_forgotten, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_fsync_failure_keeps_unhealthy, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_length_bitflip_in_newest_refused, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_second_open_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_modes_owner_only, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_consumer_holds_retention, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_hung_fsync_unhealthy, fx_setup, fx_teardown),
        cmocka_unit_test(test_record_parse_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
