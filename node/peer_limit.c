/* peer_limit: per-address connection and handshake counts for the whole
 * node, in one open-addressing hash table behind a mutex (taken once per
 * accept, handshake end and close: not per request). */
#include "peer_limit.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "hash.h"

#define PEER_LIMIT_MIN_SLOTS 256 /* a power of two */

struct peer_entry {
    struct peer_key key;
    uint32_t connections; /* 0: the slot is free */
    uint32_t handshakes;
};

struct peer_limit {
    pthread_mutex_t mu;
    uint32_t max_connections; /* per address; 0: no limit */
    uint32_t max_handshakes;  /* per address; 0: no limit */
    uint64_t seed;            /* hash key: addresses an attacker picks do not collide at will */
    struct peer_entry *slots; /* nslots entries, linear probing */
    size_t nslots;            /* a power of two */
    size_t used;              /* slots with connections > 0 */
};


static size_t peer_hash(const struct peer_limit *pl, const struct peer_key *k)
{
    uint64_t lo = 0;
    memcpy(&lo, k->b + 1, 8);
    return (size_t)hash_mix64(hash_mix64(pl->seed ^ lo) ^ k->b[0]);
}

struct peer_limit *peer_limit_new(uint32_t max_connections, uint32_t max_handshakes)
{
    struct peer_limit *pl = calloc(1, sizeof(*pl));
    if (!pl)
        return NULL;
    pl->max_connections = max_connections;
    pl->max_handshakes = max_handshakes;
    pl->nslots = PEER_LIMIT_MIN_SLOTS;
    pl->slots = calloc(pl->nslots, sizeof(*pl->slots));
    if (!pl->slots || pthread_mutex_init(&pl->mu, NULL) != 0) {
        free(pl->slots);
        free(pl);
        return NULL;
    }
    /* A weak seed only makes collisions guessable, not the limits wrong. */
    ssize_t got;
    do
        got = getrandom(&pl->seed, sizeof(pl->seed), GRND_NONBLOCK);
    while (got < 0 && errno == EINTR);
    if (got != (ssize_t)sizeof(pl->seed))
        pl->seed = (uint64_t)(uintptr_t)pl ^ 0x9e3779b97f4a7c15ULL;
    return pl;
}

void peer_limit_free(struct peer_limit *pl)
{
    if (!pl)
        return;
    pthread_mutex_destroy(&pl->mu);
    free(pl->slots);
    free(pl);
}

void peer_key_from_sockaddr(const struct sockaddr_storage *ss, struct peer_key *out)
{
    static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memset(out, 0, sizeof(*out));
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        out->b[0] = 4;
        memcpy(out->b + 1, &a->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        if (memcmp(a->sin6_addr.s6_addr, v4_mapped, sizeof(v4_mapped)) == 0) {
            out->b[0] = 4;
            memcpy(out->b + 1, a->sin6_addr.s6_addr + 12, 4);
        } else {
            out->b[0] = 6;
            memcpy(out->b + 1, a->sin6_addr.s6_addr, 8); /* the /64 */
        }
    }
}

/* The slot holding key, or the free slot where it would go. Caller holds mu. */
static struct peer_entry *peer_find(struct peer_limit *pl, const struct peer_key *key)
{
    size_t mask = pl->nslots - 1;
    for (size_t i = peer_hash(pl, key) & mask;; i = (i + 1) & mask) {
        struct peer_entry *e = &pl->slots[i];
        if (e->connections == 0 || memcmp(&e->key, key, sizeof(*key)) == 0)
            return e;
    }
}

/* Doubles the table. 0, or -1 out of memory (the table is unchanged). */
static int peer_grow(struct peer_limit *pl)
{
    struct peer_entry *old = pl->slots;
    size_t oldn = pl->nslots;
    struct peer_entry *n = calloc(oldn * 2, sizeof(*n));
    if (!n)
        return -1;
    pl->slots = n;
    pl->nslots = oldn * 2;
    for (size_t i = 0; i < oldn; i++)
        if (old[i].connections > 0)
            *peer_find(pl, &old[i].key) = old[i];
    free(old);
    return 0;
}

/* Empties slot e and moves later entries of its probe run back, so every
 * lookup still finds them without tombstones. Caller holds mu. */
static void peer_remove(struct peer_limit *pl, struct peer_entry *e)
{
    size_t mask = pl->nslots - 1;
    size_t hole = (size_t)(e - pl->slots);
    memset(e, 0, sizeof(*e));
    pl->used--;
    for (size_t i = (hole + 1) & mask; pl->slots[i].connections > 0; i = (i + 1) & mask) {
        size_t home = peer_hash(pl, &pl->slots[i].key) & mask;
        /* The entry at i may fill the hole unless its home lies cyclically
         * in (hole, i]. */
        bool stays = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
        if (stays)
            continue;
        pl->slots[hole] = pl->slots[i];
        memset(&pl->slots[i], 0, sizeof(pl->slots[i]));
        hole = i;
    }
}

enum peer_limit_verdict peer_limit_admit(struct peer_limit *pl, const struct peer_key *key)
{
    enum peer_limit_verdict v = PEER_LIMIT_OK;
    pthread_mutex_lock(&pl->mu);
    struct peer_entry *e = peer_find(pl, key);
    if (e->connections == 0) {
        /* A new address: keep the load at or under one half. */
        if ((pl->used + 1) * 2 > pl->nslots) {
            if (peer_grow(pl) != 0) {
                v = PEER_LIMIT_CONNECTIONS;
                goto out;
            }
            e = peer_find(pl, key);
        }
        e->key = *key;
        pl->used++;
    } else if (pl->max_connections && e->connections >= pl->max_connections) {
        v = PEER_LIMIT_CONNECTIONS;
        goto out;
    } else if (pl->max_handshakes && e->handshakes >= pl->max_handshakes) {
        v = PEER_LIMIT_HANDSHAKES;
        goto out;
    }
    e->connections++;
    e->handshakes++;
out:
    pthread_mutex_unlock(&pl->mu);
    return v;
}

void peer_limit_handshake_done(struct peer_limit *pl, const struct peer_key *key)
{
    pthread_mutex_lock(&pl->mu);
    struct peer_entry *e = peer_find(pl, key);
    if (e->connections > 0 && e->handshakes > 0)
        e->handshakes--;
    pthread_mutex_unlock(&pl->mu);
}

void peer_limit_release(struct peer_limit *pl, const struct peer_key *key, bool in_handshake)
{
    pthread_mutex_lock(&pl->mu);
    struct peer_entry *e = peer_find(pl, key);
    if (e->connections > 0) {
        if (in_handshake && e->handshakes > 0)
            e->handshakes--;
        if (--e->connections == 0)
            peer_remove(pl, e);
    }
    pthread_mutex_unlock(&pl->mu);
}

uint32_t peer_limit_addresses(struct peer_limit *pl)
{
    pthread_mutex_lock(&pl->mu);
    uint32_t n = (uint32_t)pl->used;
    pthread_mutex_unlock(&pl->mu);
    return n;
}

void peer_limit_counts(struct peer_limit *pl, const struct peer_key *key, uint32_t *connections,
                       uint32_t *handshakes)
{
    pthread_mutex_lock(&pl->mu);
    struct peer_entry *e = peer_find(pl, key);
    *connections = e->connections;
    *handshakes = e->connections ? e->handshakes : 0;
    pthread_mutex_unlock(&pl->mu);
}
