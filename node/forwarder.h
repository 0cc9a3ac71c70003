/* forwarder: delivers every journal record, in journal order, to a
 * replicated engine outside the node (NATS JetStream today, behind struct
 * forwarder_engine so another can be added), from the journal on disk, on
 * a thread of its own, streaming: up to a window of records in flight.
 * It is a journal consumer: its position is durable
 * (journal_consumer_confirm) and retention keeps what it has not
 * delivered. docs/DESIGN.md, "Replicated delivery". */
#ifndef BERTH_FORWARDER_H
#define BERTH_FORWARDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "journal.h"

/* How an engine reports the outcome of one record it was sent: ok (stored;
 * duplicate: it had it already), or not (why: for the log). Called from the
 * engine's own threads; must not call back into the engine. */
typedef void (*forwarder_ack_fn)(void *arg, uint64_t seq, bool ok, bool duplicate,
                                 const char *why);

/* An engine. All calls but the ack callback come from the forwarder's thread. */
struct forwarder_engine {
    const char *name;  /* "jetstream": logs and reasons */
    void *impl;
    /* Where outcomes go; set once, before the first send. */
    void (*set_ack)(void *impl, forwarder_ack_fn fn, void *arg);
    /* Publishes r asynchronously (its bytes are copied before it returns);
     * its outcome comes through the ack callback. 0, or -1 with err: not
     * sent (the forwarder starts again from it later). */
    int (*send)(void *impl, const struct journal_record *r, char *err, size_t errlen);
    /* Forgets every send not yet acknowledged (after a failure): their
     * outcomes may still arrive, or not. */
    void (*abandon)(void *impl);
    /* Can the engine store now (connected, a quorum behind the stream)?
     * Called when idle, at most once per probe interval; may wait up to
     * timeout_ms. 0; -1 with err when it did not answer (which a leader
     * election also causes); FORWARDER_DEFINITE when it answered that it
     * cannot store (no quorum). */
    int (*probe)(void *impl, uint32_t timeout_ms, char *err, size_t errlen);
    void (*free)(void *impl);
};

#define FORWARDER_DEFINITE (-2)

struct forwarder_config {
    struct journal *journal;        /* borrowed; outlives the forwarder */
    const char *consumer;           /* its journal consumer name (configured in the journal) */
    struct forwarder_engine engine; /* the forwarder takes ownership (engine.free) */
    uint32_t window;                /* records sent and not yet acknowledged, at most */
    uint32_t timeout_ms;            /* the oldest unacknowledged record waits at most this
                                     * long; a probe too */
    uint32_t probe_ms;              /* idle: probe the engine this often */
    uint32_t unhealthy_after_ms;    /* failing this long (publishes or probes that get no
                                     * answer) makes it unhealthy; an engine's definite
                                     * "cannot store" does at once. Longer than the engine's
                                     * own fail-over (a JetStream leader election), so one
                                     * server's loss is a pause, not an outage */
    uint64_t replay_from;           /* 0, or re-publish from this seq (duplicates dropped by id) */
};

struct forwarder_stats {
    uint64_t forwarded_seq;   /* every record up to it is acknowledged by the engine */
    uint64_t lag_records;     /* durable in the journal, not yet acknowledged */
    uint64_t lag_ms;          /* age of the oldest record not yet acknowledged (0: none) */
    uint64_t publish_errors;  /* failures (each restarts from the first unacknowledged) */
    uint64_t duplicates;      /* records the engine already had */
    uint64_t forwarded;       /* records acknowledged since start */
    bool healthy;             /* the last publish or probe worked */
};

struct forwarder;

/* Starts the thread, from the consumer's confirmed seq + 1 (or
 * replay_from). NULL with err; the engine is freed then too. */
struct forwarder *forwarder_new(const struct forwarder_config *cfg, char *err, size_t errlen);
/* Stops the thread and frees the engine (records in flight are sent again
 * after a restart; the engine drops them by message id).
 * NULL is a no-op. */
void forwarder_free(struct forwarder *f);

/* Every record up to this seq is stored by the engine (acquire load). */
uint64_t forwarder_seq(const struct forwarder *f);
/* False with the cause in reason while the engine cannot store. */
bool forwarder_healthy(struct forwarder *f, char *reason, size_t len);
void forwarder_get_stats(struct forwarder *f, struct forwarder_stats *out);

#endif
