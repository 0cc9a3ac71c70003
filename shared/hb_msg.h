/* hb_msg: the heartbeat channel's messages (node <-> balancer over ZeroMQ),
 * one JSON object per ZeroMQ message, encoded and validated with jansson. */
#ifndef BERTH_HB_MSG_H
#define BERTH_HB_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HB_NODE_ID_MAX 64   /* [A-Za-z0-9._-]{1,64} */
#define HB_ADDR_MAX 261     /* "host:port", host up to 253 bytes, IPv6 in [] */
#define HB_VERSION_MAX 32
#define HB_REASON_MAX 127
#define HB_MAX_WORKERS 64
#define HB_MAX_MESSAGE 16384 /* a larger ZeroMQ message is rejected unread */
#define HB_CERT_SHA256_HEX 64 /* lower-case hex of a SHA-256 */
#define HB_MAX_BALANCERS 8    /* balancers a node heartbeats to */
#define HB_ENDPOINT_MAX 255   /* a balancer's ZeroMQ endpoint, "tcp://host:port" */
#define HB_RATE_MAX 1e12      /* msgs_per_sec above this is refused: consumers
                               * turn it into integers (history, metrics) */

enum hb_type {
    HB_REGISTER,   /* node -> balancer: id, boot, addr, capacity, version */
    HB_HEARTBEAT,  /* node -> balancer: id, boot, seq, load, workers */
    HB_LEAVE,      /* node -> balancer: id, boot: take me out of rotation now */
    HB_ACK,        /* balancer -> node: heard you; carries interval_ms, epoch */
    HB_REREGISTER, /* balancer -> node: I do not know you, send REGISTER */
    HB_TYPE_COUNT
};

/* "register", "heartbeat", "leave", "ack", "reregister". */
const char *hb_type_name(enum hb_type t);

/* One balancer a node heartbeats to, as the node sees it. */
struct hb_peer {
    char endpoint[HB_ENDPOINT_MAX + 1];
    bool reached; /* it answered within the node's liveness window (fall x interval) */
};

/* A node's forwarder into a replicated engine (JetStream), when it has one. */
struct hb_forward {
    bool present;             /* false: the node forwards nowhere (field absent) */
    bool healthy;             /* the engine takes records now */
    uint64_t forwarded_seq;   /* journal seq up to which the engine has every record */
    uint64_t lag_records;     /* durable in the journal, not yet in the engine */
    uint64_t lag_ms;          /* age of the oldest of those (0: none) */
    uint64_t errors;          /* publish rounds that failed since start */
    uint64_t duplicates;      /* records the engine already had (re-sends) since start */
};

/* Progress of one node worker loop since the node started. */
struct hb_worker {
    uint64_t ticks;             /* loop iterations */
    uint64_t handshakes_ok;
    uint64_t handshakes_failed;
};

struct hb_msg {
    enum hb_type type;
    char node_id[HB_NODE_ID_MAX + 1];
    uint64_t boot_id; /* random per node process; a new one means a restart */
    uint64_t seq;     /* per-process message counter */

    /* HB_REGISTER */
    char addr[HB_ADDR_MAX + 1]; /* advertised TLS address, host:port */
    uint32_t capacity;          /* sessions the node is sized for, >= 1 */
    char version[HB_VERSION_MAX + 1];
    /* SHA-256 of the node's TLS certificate (DER), lower-case hex; "" when
     * the node does not say. Clients refuse a node whose certificate has
     * another digest than the registry hands out. */
    char cert_sha256[HB_CERT_SHA256_HEX + 1];

    /* HB_HEARTBEAT */
    uint32_t sessions;        /* active sessions now */
    uint64_t accepted;        /* connections accepted since start */
    double msgs_per_sec;      /* requests served per second, recent */
    bool healthy;             /* false when a worker loop stopped progressing */
    bool draining;            /* true after LEAVE, until the process exits */
    char reason[HB_REASON_MAX + 1]; /* why not healthy; "" when healthy */
    uint32_t nworkers;
    struct hb_worker workers[HB_MAX_WORKERS];
    uint32_t nbalancers; /* optional: which balancers the node reaches */
    struct hb_peer balancers[HB_MAX_BALANCERS];
    struct hb_forward forward; /* optional: "forward" {seq, lag_records, lag_ms, errors,
                                * duplicates, healthy} */

    /* HB_ACK and HB_REREGISTER */
    uint32_t interval_ms; /* the balancer's heartbeat interval, nodes adopt it */
    uint64_t epoch;       /* registry membership epoch */
};

/* Encodes m as JSON. Returns a malloc'd buffer (caller frees) and its length
 * in *len, or NULL with a reason in err when a field is out of its limits. */
char *hb_msg_encode(const struct hb_msg *m, size_t *len, char *err, size_t errlen);

/* Parses and validates one message: JSON object, known "type", every field
 * that type requires present with the right JSON type and within limits.
 * Returns 0, or -1 with a reason in err ("missing field \"node\"").
 * Unknown extra fields are ignored so newer nodes can add load fields. */
int hb_msg_decode(const void *data, size_t len, struct hb_msg *out, char *err, size_t errlen);

/* True if id matches [A-Za-z0-9._-]{1,64}. */
bool hb_node_id_valid(const char *id);

#endif
