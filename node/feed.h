/* feed: the downstream side of the journal: a ZeroMQ ROUTER on the node
 * where consumers (berth tail) subscribe from a sequence number and get the
 * stored records, replayed from the segments on disk and then live, paced
 * by the credit each consumer grants; CURVE with a consumer allowlist when
 * the node has keys. Its own thread; docs/DESIGN.md, "Downstream". */
#ifndef BERTH_FEED_H
#define BERTH_FEED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "feed_msg.h"
#include "journal.h"
#include "keys.h"

/* The messages: shared/feed_msg.h. */

#define FEED_CONSUMERS_MAX 64
#define FEED_CREDIT_MAX 4096     /* records in flight per consumer at most */
#define FEED_CONSUMER_TIMEOUT_MS 30000 /* a consumer silent this long is dropped */

struct feed_config {
    const char *endpoint;     /* ZeroMQ endpoint to bind */
    const char *node_id;      /* copied */
    struct journal *journal;  /* borrowed; outlives the feed */
    /* The node's CURVE identity (--curve-secret), borrowed and used by
     * feed_new only; NULL: the node has none. With it the feed is a CURVE server
     * with this key unless plaintext. */
    const struct keys_pair *curve_keys;
    const char *curve_allow;  /* --feed-curve-allow: the consumers' public keys, DIR or FILE */
    bool plaintext;           /* --feed-plaintext: no CURVE even with curve_keys */
    bool insecure;            /* plaintext: allow an endpoint other hosts can reach */
};

struct feed;

/* Binds the endpoint and starts the thread. With curve_keys and not
 * plaintext, the feed is CURVE and curve_allow is required; the ZAP
 * handler is bound on the feed's own context before the ROUTER. Plaintext,
 * an endpoint other hosts can reach needs cfg->insecure. NULL with err
 * naming the setting. */
struct feed *feed_new(const struct feed_config *cfg, char *err, size_t errlen);
/* Stops the thread and closes the socket. NULL is a no-op. */
void feed_free(struct feed *f);

#endif
