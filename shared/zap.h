/* zap: who may open a CURVE connection (the balancer's heartbeat port, a
 * node's journal feed): the allowlist of client public keys, the ZAP
 * (ZeroMQ RFC 27) decision on one request, and the handler socket libzmq
 * asks during every CURVE handshake. One thread per handler. */
#ifndef BERTH_ZAP_H
#define BERTH_ZAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keys.h"

/* The ZAP domain berth's CURVE servers announce (the heartbeat ROUTER and
 * the feed's, each with a handler on its own context); requests for
 * another are denied. */
#define ZAP_DOMAIN "berth"

/* ---- the allowlist ---- */

struct zap_allowlist;

/* Loads the client keys allowed to connect: path is a directory (every
 * "*.pub" file in it holds one key; other files are ignored) or a file of
 * one Z85 key per line ('#' comments and blank lines ignored). No key at
 * all is an error. In a directory, a file named after a node id
 * ("<id>.pub", id as in hb_node_id_valid) also pins that id to its key:
 * only that key may use the id (zap_allowlist_pinned). Returns NULL with
 * err naming the file and line. */
struct zap_allowlist *zap_allowlist_load(const char *path, char *err, size_t errlen);
/* An allowlist of n keys (tests, and the loader). NULL on out of memory. */
struct zap_allowlist *zap_allowlist_new(const uint8_t (*keys)[KEYS_LEN], size_t n);
void zap_allowlist_free(struct zap_allowlist *a);
size_t zap_allowlist_size(const struct zap_allowlist *a);
bool zap_allowlist_contains(const struct zap_allowlist *a, const uint8_t key[KEYS_LEN]);
/* Pins node id to key (the key must be allowed too; the loader adds both).
 * 0, or -1 on out of memory or an invalid id. A later pin of the same id
 * replaces the earlier. */
int zap_allowlist_pin(struct zap_allowlist *a, const char *id, const uint8_t key[KEYS_LEN]);
/* The key pinned to node id, borrowed (valid while a lives), or NULL when
 * the id is not pinned (any allowed key may bind it first). */
const uint8_t *zap_allowlist_pinned(const struct zap_allowlist *a, const char *id);

/* ---- one decision ---- */

/* A ZAP request frame, borrowed. */
struct zap_frame {
    const void *data;
    size_t size;
};

enum zap_verdict {
    ZAP_ALLOW,     /* reply 200, the key in Z85 as the user id */
    ZAP_DENY,      /* reply 400: a well-formed request we refuse */
    ZAP_MALFORMED, /* reply 500 when there is a request id to answer, else nothing */
    ZAP_DROP,      /* not even a version and request id: no reply possible */
};

struct zap_decision {
    enum zap_verdict verdict;
    const char *status_code;          /* "200", "400", "500"; borrowed */
    char reason[96];                  /* why, for the reply's status text and the logs */
    char key_z85[KEYS_Z85_LEN + 1];   /* the client's key, "" if it sent none */
    char address[64];                 /* the peer's address from the request, printable */
};

/* Decides on one request, given its frames after the envelope:
 * version "1.0", request id, domain, address, routing id, mechanism,
 * credentials. Only mechanism CURVE with a 32-byte key in the allowlist
 * and domain ZAP_DOMAIN is allowed. frames holds nframes valid frames;
 * truncated says the request had more that were not kept (never
 * allowed). Never fails; pure. */
void zap_decide(const struct zap_allowlist *a, const struct zap_frame *frames, size_t nframes,
                bool truncated, struct zap_decision *out);

/* ---- the handler socket ---- */

struct zap_handler;

/* Binds the handler (inproc://zeromq.zap.01) on zctx: it must exist before
 * any CURVE server socket of that context accepts a connection, or libzmq
 * lets every client in. Takes ownership of a (also on failure). Returns
 * NULL with err (e.g. another handler is bound already). */
struct zap_handler *zap_handler_new(void *zctx, struct zap_allowlist *a, char *err,
                                    size_t errlen);
void zap_handler_free(struct zap_handler *z);
/* The socket to poll for ZMQ_POLLIN; borrowed. */
void *zap_handler_socket(const struct zap_handler *z);
/* Replaces the allowlist (takes ownership; the old one is freed). Applies
 * to handshakes from now on. */
void zap_handler_set_allowlist(struct zap_handler *z, struct zap_allowlist *a);
const struct zap_allowlist *zap_handler_allowlist(const struct zap_handler *z);

/* Called for every request not allowed, with the decision (borrowed). */
typedef void (*zap_refused_fn)(void *arg, const struct zap_decision *d);

/* Answers every waiting request (at most max) without blocking. Returns
 * the number of requests allowed. */
size_t zap_handler_drain(struct zap_handler *z, size_t max, zap_refused_fn refused, void *arg);

#endif
