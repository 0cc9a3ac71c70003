/* hb_server: the balancer's end of the heartbeat channel: the ZeroMQ ROUTER
 * socket nodes send REGISTER/HEARTBEAT/LEAVE to, the replies, and the
 * counters of what arrived and what was refused. Single-threaded. */
#ifndef BERTH_HB_SERVER_H
#define BERTH_HB_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keys.h"
#include "registry.h"
#include "zap.h"

/* Why a message (or a peer's connection) was refused, one table for the
 * counters, the logs and the JSON. */
enum hb_reject {
    HB_REJECT_FRAMES,     /* not exactly [routing id][body] */
    HB_REJECT_EMPTY,      /* empty body */
    HB_REJECT_OVERSIZE,   /* body larger than HB_MAX_MESSAGE */
    HB_REJECT_PARSE,      /* not a JSON object */
    HB_REJECT_TYPE,       /* "type" missing, not a string or unknown */
    HB_REJECT_FIELD,      /* a field missing, of the wrong JSON type or out of limits */
    HB_REJECT_UNEXPECTED, /* a valid message a node must not send (ack, reregister) */
    HB_REJECT_HANDSHAKE,  /* a peer failed the ZeroMQ handshake (garbage on the port) */
    HB_REJECT_FULL,       /* REGISTER of a new id with the registry at --max-nodes */
    /* secure mode: a connection without an allowed CURVE key (refused by the
     * ZAP handler, or a plaintext or wrongly keyed peer), or a message whose
     * key was taken off the allowlist since its connection was admitted */
    HB_REJECT_UNAUTHENTICATED,
    HB_REJECT_KEY_MISMATCH, /* a message for a node id bound to another key */
    HB_REJECT_CONN_LIMIT,   /* a connection beyond hb_server_limits.max_conns, ended at once */
    HB_REJECT_COUNT
};

/* "frames", "empty", "oversize", ... */
const char *hb_reject_name(enum hb_reject r);

struct hb_server_stats {
    uint64_t received;       /* messages taken off the socket */
    uint64_t dropped;        /* messages refused: the sum of rejected[] minus the refused
                              * connections (handshake, unauthenticated ones) */
    uint64_t rejected[HB_REJECT_COUNT];
    uint64_t replies_sent;   /* ACK and REREGISTER sent */
    uint64_t replies_failed; /* replies the socket would not take (dropped) */
    uint64_t disconnects;    /* nodes taken out of rotation because their connection closed */
    uint64_t stale;          /* messages from a connection already closed, ignored */
    uint64_t refused_closed; /* connections the balancer ended: their key was revoked */
    size_t conns_open;       /* TCP connections on the heartbeat port now */
    size_t conns_max;        /* hb_server_limits.max_conns; 0: no cap */
};

/* Bounds on what peers of the heartbeat port may hold. */
struct hb_server_limits {
    /* ZMQ_HANDSHAKE_IVL: a connection that has not finished the ZMTP (and
     * CURVE) handshake this long after it was accepted is closed by
     * libzmq; 0: HB_HANDSHAKE_DEFAULT_MS. */
    uint32_t handshake_ms;
    /* TCP connections held at most; one more is ended as soon as the
     * monitor reports it (counted as conn_limit). The heartbeat port and
     * HTTP share the process's descriptors: this keeps HTTP's share. 0: no
     * cap. */
    size_t max_conns;
};
#define HB_HANDSHAKE_DEFAULT_MS 2000

struct hb_server;

/* Secure mode: CurveZMQ with the balancer's key pair, nodes admitted by a
 * ZAP handler checking their public key against an allowlist; a node id the
 * allowlist pins (allow/<id>.pub) belongs to that key alone, any other id
 * is bound to the key that registered it first. */
struct hb_server_curve {
    struct keys_pair keys;       /* the balancer's own */
    struct zap_allowlist *allow; /* node keys; taken by hb_server_new_curve, also on failure */
};

/* Creates the ROUTER on ctx, binds it to endpoint and applies every message
 * to reg (borrowed; must outlive the server). curve NULL is plaintext (no
 * authentication); otherwise the ZAP handler is installed on zmq_ctx before
 * the bind, and its failure fails the call: a CURVE server without one
 * would admit any key. Returns NULL with the reason in err. */
struct hb_server *hb_server_new_curve(void *zmq_ctx, const char *endpoint, struct registry *reg,
                                      struct hb_server_curve *curve, char *err, size_t errlen);
/* hb_server_new_curve with limits (NULL: the defaults, no connection cap). */
struct hb_server *hb_server_new_limited(void *zmq_ctx, const char *endpoint, struct registry *reg,
                                        struct hb_server_curve *curve,
                                        const struct hb_server_limits *limits, char *err,
                                        size_t errlen);
/* Plaintext: hb_server_new_curve without curve. */
struct hb_server *hb_server_new(void *zmq_ctx, const char *endpoint, struct registry *reg,
                                char *err, size_t errlen);
/* Closes the sockets; NULL is a no-op. */
void hb_server_free(struct hb_server *s);

/* The endpoint actually bound (a "*" port resolved); borrowed. */
const char *hb_server_endpoint(const struct hb_server *s);

/* The sockets to poll for ZMQ_POLLIN: the ROUTER, the socket monitor that
 * reports failed handshakes and closed connections, and the ZAP handler
 * (NULL in plaintext mode: leave it out of the poll). Borrowed. */
void *hb_server_socket(const struct hb_server *s);
void *hb_server_monitor_socket(const struct hb_server *s);
void *hb_server_zap_socket(const struct hb_server *s);

/* True in secure (CURVE) mode. */
bool hb_server_secure(const struct hb_server *s);
/* Secure mode: replaces the allowlist (takes ownership). New handshakes
 * and every message from now on are checked against it, so a key taken off
 * is refused at once, also on connections already open. The nodes bound to
 * a key it refuses (taken off, or their id pinned to another key) leave the
 * rotation now (registry_refuse: never held by panic), and the connections
 * of a key taken off are ended. */
void hb_server_set_allowlist(struct hb_server *s, struct zap_allowlist *a);

/* Reads and handles every message waiting on the ROUTER (bounded per call so
 * a flood cannot starve the HTTP side; zmq_poll reports the rest at once),
 * then every waiting monitor event (a closed connection takes the nodes
 * whose messages came on it out of rotation at once: registry_disconnected)
 * and ZAP request. The first message of a connection first handles the
 * monitor events queued before it, so a close is matched to the
 * connection (by routing id) it belongs to. Never blocks. Returns the
 * number of messages read. */
size_t hb_server_drain(struct hb_server *s);

void hb_server_stats(const struct hb_server *s, struct hb_server_stats *out);

#endif
