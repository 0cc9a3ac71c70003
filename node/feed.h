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

#include "feed_msg.h"
#include "journal.h"

/* The messages: shared/feed_msg.h. */

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
