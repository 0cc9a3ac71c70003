/* feed: the downstream side of the journal: a ZeroMQ ROUTER on the node
 * where consumers (berth tail) subscribe from a sequence number and get the
 * stored records, replayed from the segments on disk and then live, paced
 * by the credit each consumer grants. Its own thread; docs/DESIGN.md,
 * "Downstream". */
#ifndef BERTH_FEED_H
#define BERTH_FEED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "journal.h"

/* Consumer -> node messages (one frame after the DEALER's identity). */
#define FEED_MSG_SUBSCRIBE 'S' /* u64 from_seq (0: from the next record, or for a durable
                                * consumer from after its confirmed seq), u32 credit,
                                * optionally u8 name_len + a --journal-consumers name */
#define FEED_MSG_CREDIT 'C'    /* u32 more records the consumer can take (0: keepalive) */
#define FEED_MSG_CONFIRM 'K'   /* durable consumers: u64 seq, everything up to it is
                                * processed; retention may delete it (no reply) */
#define FEED_MSG_BYE 'X'       /* the consumer leaves */
/* Node -> consumer. */
#define FEED_MSG_WELCOME 'W'   /* u8 id_len, node id, u64 first_seq kept, u64 next_seq */
#define FEED_MSG_RECORD 'R'    /* one journal record exactly as on disk (CRC32C inside) */
#define FEED_MSG_ERROR 'E'     /* text; the subscription is over */

#define FEED_CONSUMERS_MAX 64
#define FEED_CREDIT_MAX 4096     /* records in flight per consumer at most */
#define FEED_CONSUMER_TIMEOUT_MS 30000 /* a consumer silent this long is dropped */

struct feed_config {
    const char *endpoint;     /* ZeroMQ endpoint to bind */
    const char *node_id;      /* copied */
    struct journal *journal;  /* borrowed; outlives the feed */
    bool insecure;            /* allow an endpoint other hosts can reach (no auth, no TLS) */
};

struct feed;

/* Binds the endpoint and starts the thread. NULL with err, also for an
 * endpoint other hosts can reach unless cfg->insecure. */
struct feed *feed_new(const struct feed_config *cfg, char *err, size_t errlen);
/* Stops the thread and closes the socket. NULL is a no-op. */
void feed_free(struct feed *f);

#endif
