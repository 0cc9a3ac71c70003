/* jetstream: the forwarder's NATS JetStream engine (libnats): connects to
 * a cluster, checks (or creates) the stream, publishes journal records
 * with a Nats-Msg-Id so the stream stores each message once across
 * failovers, and waits for each PubAck. docs/DESIGN.md, "Replicated
 * delivery". */
#ifndef BERTH_JETSTREAM_H
#define BERTH_JETSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "forwarder.h"

/* Strings are copied or used only during jetstream_engine_new. */
struct jetstream_config {
    const char *servers;         /* "nats://h1:4222,nats://h2:4222" */
    const char *stream;          /* stream name */
    const char *subject_prefix;  /* records go to <prefix>.<node id> */
    const char *node_id;
    const char *user, *password; /* NULL/"": none */
    const char *token;
    const char *creds_file;      /* a .creds file (JWT + seed) */
    const char *nkey, *nkey_seed_file; /* public nkey and the file of its seed */
    const char *ca_file;         /* TLS to NATS, verified against this CA */
    bool tls;                    /* require TLS (also implied by ca_file) */
    bool create;                 /* create the stream when it is missing */
    uint32_t replicas;           /* for a stream it creates */
    uint64_t duplicate_window_ms; /* for a stream it creates; a stream with a shorter one is
                                  * refused (the node's re-sends must fall inside it) */
    uint32_t min_replicas;       /* refuse a stream with fewer (0: any) */
    uint32_t connect_timeout_ms;
    uint32_t max_pending;        /* PubAcks outstanding at most */
};

/* Connects and checks the stream; fills *out (take it into a
 * forwarder_config). 0, or -1 with err naming the cause: unreachable
 * servers, authentication, TLS, a missing stream, too few replicas, a
 * duplicate window that is too short, subjects that do not cover ours. */
int jetstream_engine_new(const struct jetstream_config *cfg, struct forwarder_engine *out,
                         char *err, size_t errlen);

/* The Nats-Msg-Id of a record: "<producer>:<message id>" when the client
 * gave a producer id (the same across nodes, so a re-send after failover is
 * stored once), else "<node id>/<seq>" (unique per record). Returns the
 * length written (truncated to len - 1). */
size_t jetstream_msg_id(const struct journal_record *r, const char *node_id, char *out,
                        size_t len);

#endif
