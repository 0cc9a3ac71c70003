/* hb_server: the balancer's end of the heartbeat channel: the ZeroMQ ROUTER
 * socket nodes send REGISTER/HEARTBEAT/LEAVE to, the replies, and the
 * counters of what arrived and what was refused. Single-threaded. */
#ifndef BERTH_HB_SERVER_H
#define BERTH_HB_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "registry.h"

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
    HB_REJECT_COUNT
};

/* "frames", "empty", "oversize", ... */
const char *hb_reject_name(enum hb_reject r);

struct hb_server_stats {
    uint64_t received;       /* messages taken off the socket */
    uint64_t dropped;        /* messages refused: the sum of rejected[] minus handshakes */
    uint64_t rejected[HB_REJECT_COUNT];
    uint64_t replies_sent;   /* ACK and REREGISTER sent */
    uint64_t replies_failed; /* replies the socket would not take (dropped) */
};

struct hb_server;

/* Creates the ROUTER on ctx, binds it to endpoint and applies every message
 * to reg (borrowed; must outlive the server). Returns NULL with the reason in
 * err. */
struct hb_server *hb_server_new(void *zmq_ctx, const char *endpoint, struct registry *reg,
                                char *err, size_t errlen);
/* Closes the sockets; NULL is a no-op. */
void hb_server_free(struct hb_server *s);

/* The endpoint actually bound (a "*" port resolved); borrowed. */
const char *hb_server_endpoint(const struct hb_server *s);

/* The sockets to poll for ZMQ_POLLIN: the ROUTER and the socket monitor that
 * reports failed handshakes. Borrowed. */
void *hb_server_socket(const struct hb_server *s);
void *hb_server_monitor_socket(const struct hb_server *s);

/* Reads and handles every message waiting on the ROUTER (bounded per call so
 * a flood cannot starve the HTTP side; zmq_poll reports the rest at once),
 * then every waiting monitor event. Never blocks. Returns the number of
 * messages read. */
size_t hb_server_drain(struct hb_server *s);

void hb_server_stats(const struct hb_server *s, struct hb_server_stats *out);

#endif
