/* client: one session with a berth-node (docs/PROTOCOL.md) for the CLI and
 * tests: blocking calls, each wait bounded by a timeout. The reply checks
 * (client_check_*) are pure functions over decoded frames, kept apart from
 * the socket and TLS code so an asynchronous client can reuse them. */
#ifndef BERTH_CLIENT_H
#define BERTH_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "frame.h"

/* Most pipelined SENDs awaiting their ACK on one session. */
#define CLIENT_WINDOW_MAX 64

struct client_options {
    const char *ca_file;   /* trust anchors for the node's certificate; NULL or "": system store */
    bool verify;           /* false skips certificate verification (the CLI's --insecure) */
    const char *name;      /* HELLO name: 1..64 printable bytes */
    long timeout_ms;       /* bound on every wait (connect + TLS + HELLO, each reply); > 0 */
    const char *expect_id; /* optional: the node id the balancer gave, used in errors before WELCOME */
    /* optional: the SHA-256 (64 lower-case hex) of the certificate the node
     * registered with the balancer; a node presenting another one is
     * refused even when the CA vouches for it. NULL or "": not checked. */
    const char *expect_cert_sha256;
    /* optional: a client certificate and its key, for nodes that require
     * mutual TLS (--client-ca); both or neither. */
    const char *cert_file;
    const char *key_file;
    /* optional: the producer id for HELLO version 2 ([A-Za-z0-9._-]{1,64});
     * NULL or "": HELLO version 1, as before. */
    const char *producer;
};

/* Why client_connect failed, so a caller knows whether another node may do
 * better. */
enum client_fail {
    CLIENT_FAIL_NONE = 0,
    CLIENT_FAIL_SETUP,   /* local: bad options, CA file, out of memory; no node will do better */
    CLIENT_FAIL_RESOLVE, /* the node's name did not resolve here: try another node */
    CLIENT_FAIL_CONNECT, /* TCP connect: try another node */
    CLIENT_FAIL_TLS,     /* TLS handshake or certificate check: try another node */
    CLIENT_FAIL_TIMEOUT, /* no answer in time to the TCP connect or the TLS handshake:
                          * try another node */
    CLIENT_FAIL_SESSION, /* HELLO refused (e.g. the node is draining) or broken reply */
};

struct client;

/* Connects to addr_text ("host:port", IPv6 in brackets): resolves it, opens
 * a non-blocking TCP connection, runs the TLS handshake checking the node's
 * certificate against host, sends HELLO and waits for WELCOME, each within
 * o->timeout_ms of the start. Returns the session, or NULL with *fail (may
 * be NULL) and the cause in err, naming the node. A node that refuses our
 * certificate (or its absence) with a TLS alert is CLIENT_FAIL_SETUP: every
 * node of the cluster would. A peer that goes away never raises SIGPIPE
 * (tls_conn sends with MSG_NOSIGNAL); the caller's signal dispositions are
 * left alone. */
struct client *client_connect(const struct client_options *o, const char *addr_text,
                              enum client_fail *fail, char *err, size_t errlen);
/* Sends TLS close_notify if the session is still healthy, closes the socket
 * and frees. NULL is a no-op. */
void client_free(struct client *c);

/* Facts from the session; strings are borrowed from c. */
const char *client_node_id(const struct client *c);
const char *client_addr(const struct client *c);
uint64_t client_session_id(const struct client *c);
uint32_t client_max_payload(const struct client *c);
uint32_t client_idle_timeout_ms(const struct client *c);
/* Negotiated TLS protocol, e.g. "TLSv1.3". */
const char *client_tls_protocol(const struct client *c);
/* Last error; borrowed, "" when none. Every failing call below sets it. */
const char *client_error(const struct client *c);
/* True once the node said BYE on its own (it is draining) or refused with
 * shutting_down: unanswered requests were not handled; resend them through
 * another node. */
bool client_draining(const struct client *c);

/* Synchronous requests: 0, or -1 with client_error(c). A failure other than
 * a local argument check (e.g. data above max_payload) breaks the session:
 * later calls fail at once. They need no pipelined SEND in flight. */

/* PING with a timestamp payload; *rtt_ms gets the round trip. */
int client_ping(struct client *c, double *rtt_ms);
/* ECHO of data[0..len); checks the reply carries the same bytes. */
int client_echo(struct client *c, const void *data, size_t len);
/* INFO; *json gets the reply's JSON text, NUL-terminated (caller frees). */
int client_info(struct client *c, char **json);
/* SEND; checks the ACK's message id and that its SHA-256 equals the
 * digest of data computed here. *ack gets the ACK (may be NULL). */
int client_send(struct client *c, uint64_t message_id, const void *data, size_t len,
                struct frame_ack *ack);

/* Pipelined SENDs: client_send_start queues one SEND (written out when
 * enough has built up, or by client_send_finish) and may be called while
 * fewer than CLIENT_WINDOW_MAX are in flight; client_send_finish flushes
 * and waits for the oldest one's ACK, checking it as client_send does. */
int client_send_start(struct client *c, uint64_t message_id, const void *data, size_t len);
int client_send_finish(struct client *c, struct frame_ack *ack);
size_t client_in_flight(const struct client *c);

/* BYE: sends it, waits for the node's BYE with the same request id, sends
 * close_notify. Needs nothing in flight. 0 or -1. */
int client_bye(struct client *c);

/* --- Reply checks: no I/O. label names the node in messages ("node n1"). */

enum client_reply {
    CLIENT_REPLY_OK = 0,
    CLIENT_REPLY_ERROR,    /* an ERROR frame: "node n1: error 4 not_ready: <text>" */
    CLIENT_REPLY_DRAIN,    /* BYE with request id 0: the node is draining */
    CLIENT_REPLY_PROTOCOL, /* wrong type or request id, or a malformed body */
};

/* Checks that f answers the request (want_id, a request of the type whose
 * reply type is want_type). On anything but CLIENT_REPLY_OK, err says why.
 * An ERROR frame answers whatever request is pending, whatever its id. */
enum client_reply client_check_reply(const struct frame *f, uint8_t want_type, uint64_t want_id,
                                     const char *label, char *err, size_t errlen);

/* client_check_reply for an ACK, then its body: message_id must equal
 * want_message and sha256 must equal want_sha (the digest of what was
 * sent). *out (may be NULL) gets the parsed ACK. */
enum client_reply client_check_ack(const struct frame *f, uint64_t want_id, uint64_t want_message,
                                   const uint8_t want_sha[FRAME_SHA256_LEN], const char *label,
                                   struct frame_ack *out, char *err, size_t errlen);

/* client_check_reply for WELCOME, then its body (version 1, node id). */
enum client_reply client_check_welcome(const struct frame *f, uint64_t want_id, const char *label,
                                       struct frame_welcome *out, char *err, size_t errlen);

/* Lower-case hex of a SHA-256 digest into out (65 bytes). */
void client_sha256_hex(const uint8_t sha[FRAME_SHA256_LEN], char out[2 * FRAME_SHA256_LEN + 1]);

#endif
