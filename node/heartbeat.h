/* heartbeat: the node's end of the heartbeat channel: a ZeroMQ DEALER that
 * sends REGISTER, HEARTBEAT every interval (with jitter) and LEAVE, handles
 * the balancer's ack/reregister, and reconnects when the balancer goes quiet
 * (Paranoid Pirate). Single-threaded (the node's main thread); all timing
 * comes from the caller's clock. */
#ifndef BERTH_HEARTBEAT_H
#define BERTH_HEARTBEAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hb_msg.h"
#include "keys.h"

#define HEARTBEAT_FALL 3       /* silent intervals before the balancer counts as lost */
#define HEARTBEAT_SNDHWM 16    /* queued messages; more are dropped, never block */

struct heartbeat_config {
    const char *endpoint; /* ZeroMQ endpoint of the balancer's ROUTER */
    const char *node_id;
    const char *addr;     /* advertised host:port */
    uint32_t capacity;
    uint32_t interval_ms; /* until the balancer says otherwise */
    uint64_t boot_id;
    /* SHA-256 of the node's TLS certificate (DER), lower-case hex, sent in
     * REGISTER; NULL or "" when not told. */
    const char *cert_sha256;
    /* CurveZMQ: the node's own key pair and the balancer's public key; both
     * NULL for plaintext. Copied. */
    const struct keys_pair *curve_keys;
    const uint8_t *curve_server_key;
};

/* Fills the load fields of a HEARTBEAT about to be sent (sessions, accepted,
 * msgs_per_sec, healthy, draining, reason, workers); the rest is set. */
typedef void (*heartbeat_fill_fn)(void *arg, struct hb_msg *m, uint64_t now_ms);

struct heartbeat;

/* Creates the DEALER on zctx (borrowed), connects and sends REGISTER. The
 * config strings are copied. Returns NULL with the reason in err. */
struct heartbeat *heartbeat_new(void *zctx, const struct heartbeat_config *cfg,
                                heartbeat_fill_fn fill, void *fill_arg, uint64_t now_ms,
                                char *err, size_t errlen);
/* Closes the socket, giving queued messages (a LEAVE) linger_ms to go out.
 * NULL is a no-op. */
void heartbeat_free(struct heartbeat *hb, int linger_ms);

/* The socket to poll for ZMQ_POLLIN; borrowed, and it changes after a
 * reconnect, so ask again before every poll. */
void *heartbeat_socket(const struct heartbeat *hb);
/* Milliseconds until heartbeat_tick has something to do (>= 0). */
long heartbeat_timeout_ms(const struct heartbeat *hb, uint64_t now_ms);
/* Reads every waiting reply without blocking and acts on it. */
void heartbeat_on_readable(struct heartbeat *hb, uint64_t now_ms);
/* Sends what is due and detects a silent balancer. */
void heartbeat_tick(struct heartbeat *hb, uint64_t now_ms);
/* Sends LEAVE now; later heartbeats carry whatever fill says (draining). */
void heartbeat_leave(struct heartbeat *hb, uint64_t now_ms);

/* The interval in force (adopted from the balancer's replies). */
uint32_t heartbeat_interval_ms(const struct heartbeat *hb);
/* True while the balancer answers. */
bool heartbeat_connected(const struct heartbeat *hb);
/* True when the balancer answered within the node's own liveness window,
 * HEARTBEAT_FALL intervals (the node does not know the balancer's --fall;
 * HEARTBEAT_FALL is the same default, 3). */
bool heartbeat_reached(const struct heartbeat *hb, uint64_t now_ms);
/* Fills m->balancers with every channel's endpoint and whether it is
 * reached (at most HB_MAX_BALANCERS). */
void heartbeat_fill_peers(struct heartbeat *const *hbs, unsigned n, struct hb_msg *m,
                          uint64_t now_ms);
/* Messages sent and dropped (socket full or peer not connected). */
uint64_t heartbeat_sent(const struct heartbeat *hb);
uint64_t heartbeat_dropped(const struct heartbeat *hb);

#endif
