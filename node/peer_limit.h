/* peer_limit: node-wide counts of open connections and TLS handshakes in
 * progress per client address, shared by every worker thread, so one
 * address cannot take all of a node's connection slots. */
#ifndef BERTH_PEER_LIMIT_H
#define BERTH_PEER_LIMIT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

/* What a client is counted under: an IPv4 address (also when it arrives
 * IPv4-mapped on an IPv6 socket), or the /64 prefix of an IPv6 address
 * (one end site gets a /64, so every address in it is one client). */
struct peer_key {
    uint8_t b[9]; /* b[0]: 4 or 6; then 4 or 8 address bytes, the rest 0 */
};

/* Why peer_limit_admit refused. */
enum peer_limit_verdict {
    PEER_LIMIT_OK = 0,
    PEER_LIMIT_CONNECTIONS, /* the address holds max_connections already */
    PEER_LIMIT_HANDSHAKES,  /* the address has max_handshakes in progress */
};

struct peer_limit;

/* Limits per address; 0 means no limit for that count. NULL on out of
 * memory. Thread-safe once built. */
struct peer_limit *peer_limit_new(uint32_t max_connections, uint32_t max_handshakes);
/* NULL is a no-op. Every admitted connection must be released first. */
void peer_limit_free(struct peer_limit *pl);

/* The key of a peer address (AF_INET or AF_INET6; others get one shared
 * key). */
void peer_key_from_sockaddr(const struct sockaddr_storage *ss, struct peer_key *out);

/* Counts a new connection, in its handshake, for key; refuses (and counts
 * nothing) when either limit is reached, or on out of memory
 * (PEER_LIMIT_CONNECTIONS then: refusing is the safe side). */
enum peer_limit_verdict peer_limit_admit(struct peer_limit *pl, const struct peer_key *key);
/* The connection's handshake ended (done or failed; it stays counted as a
 * connection). */
void peer_limit_handshake_done(struct peer_limit *pl, const struct peer_key *key);
/* The connection closed; in_handshake: its handshake had not ended. */
void peer_limit_release(struct peer_limit *pl, const struct peer_key *key, bool in_handshake);

/* Addresses counted now (tests). */
uint32_t peer_limit_addresses(struct peer_limit *pl);
/* Connections and handshakes counted for key now (tests); 0, 0 if none. */
void peer_limit_counts(struct peer_limit *pl, const struct peer_key *key, uint32_t *connections,
                       uint32_t *handshakes);

#endif
