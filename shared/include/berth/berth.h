/* berth.h: libberth's public client API. Finds a node through one or more
 * balancers, keeps a verified TLS session with it, and sends messages
 * at-least-once: every message is kept until its ACK (checked against the
 * SHA-256 of what was sent) and re-sent, with its message id, to another
 * node when the session fails. Handles are opaque; every call returns a
 * berth_err, described by berth_strerror and, in detail, berth_error(c).
 * The library never raises SIGPIPE (it sends with MSG_NOSIGNAL) and leaves
 * the program's signal dispositions alone: a node that dies mid-write is a
 * failover, not the death of the program.
 * Build with: cc app.c $(pkg-config --cflags --libs berth) */
#ifndef BERTH_BERTH_H
#define BERTH_BERTH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BERTH_API __attribute__((visibility("default")))

typedef enum berth_err {
    BERTH_OK = 0,
    BERTH_E_INVALID,    /* a bad argument or option */
    BERTH_E_NOMEM,      /* out of memory */
    BERTH_E_SETUP,      /* local TLS setup failed (e.g. the CA file cannot be read) */
    BERTH_E_LOOKUP,     /* no balancer answered */
    BERTH_E_NO_NODE,    /* the balancers know no reachable node */
    BERTH_E_CONNECT,    /* nodes were found but none could be reached */
    BERTH_E_NODE,       /* the node refused or answered wrongly; the retry budget is spent */
    BERTH_E_TOO_LARGE,  /* the message is above the node's limit */
    BERTH_E_IN_HANDLER, /* not allowed from inside a handler (see berth_set_ack_handler) */
    BERTH_E_COUNT
} berth_err;

/* A stable one-line English description; "unknown error" out of range. */
BERTH_API const char *berth_strerror(berth_err e);

struct berth_options {
    const char *const *balancers; /* "http://host:port" URLs, asked in order */
    size_t nbalancers;
    const char *node;             /* or a node's "host:port", without discovery */
    const char *ca_file;          /* trust anchors; NULL: the system store */
    int insecure;                 /* nonzero: no certificate verification */
    const char *name;             /* HELLO name, 1..64 bytes */
    long timeout_ms;              /* each lookup, connect and reply */
    unsigned max_retries;         /* reconnections per failure before giving up */
    long backoff_base_ms;         /* first retry delay (doubles, with jitter) */
    long backoff_max_ms;          /* largest retry delay */
    long cache_ttl_ms;            /* how long the /v1/nodes list may stand in for a balancer
                                   * that does not answer (/v1/pick decides otherwise) */
    long exclude_ms;              /* how long a node that failed is avoided */
    const char *key;              /* affinity key, or NULL; with a key the balancer's
                                   * rendezvous hashing keeps the same node while that
                                   * node is healthy (GET /v1/pick?key=K) */
    int no_reports;               /* nonzero: do not tell the balancer about nodes that
                                   * could not be reached (POST /v1/reports) */
    const char *cert_file;        /* client certificate (PEM) for nodes that require
                                   * mutual TLS, with key_file; NULL: none */
    const char *key_file;
    const char *producer_id;      /* [A-Za-z0-9._-]{1,64}, sent in HELLO (protocol
                                   * version 2): with the message id it names a message
                                   * across nodes, so a stream the nodes forward to
                                   * stores a re-sent message once. Keep it stable for
                                   * as long as message ids are unique under it (a
                                   * restart that reuses ids needs a new one). NULL: a
                                   * random one per client (berth_producer_id) */
};

/* Fills o with the defaults: balancer http://127.0.0.1:8080, timeout 5 s,
 * 5 retries, backoff 50 ms..2 s, cache 1 s, exclusion 5 s, name "libberth". */
BERTH_API void berth_options_init(struct berth_options *o);

typedef struct berth_client berth_client;

/* Copies what it needs from o. *out is the new client (not yet connected). */
BERTH_API berth_err berth_client_new(const struct berth_options *o, berth_client **out);
/* Closes politely (BYE) when a session is up. NULL is a no-op. From inside
 * a handler it is refused and frees nothing: the berth_* call that ran the
 * handler then returns BERTH_E_IN_HANDLER; free the client after it. */
BERTH_API void berth_client_free(berth_client *c);
/* The last failure in detail, naming the node or balancer; "" if none. */
BERTH_API const char *berth_error(const berth_client *c);

/* One acknowledged message, for berth_set_ack_handler; pointers are
 * borrowed for the duration of the call. */
struct berth_ack {
    uint64_t message_id;
    size_t bytes;          /* length of the message as sent */
    const uint8_t *sha256; /* 32 bytes, equal to the digest of what was sent */
    const char *node_id;   /* the node that acknowledged it */
    const char *node_addr; /* its "host:port" */
    uint64_t seq;          /* where the node journaled it; 0: not journaled */
};
typedef void (*berth_ack_handler)(void *arg, const struct berth_ack *ack);
/* Called once for each acknowledged message, in order, from inside the
 * berth_send/berth_flush/berth_ping/berth_info call that read the ACK. The
 * message has already left the queue (berth_unacked no longer counts it)
 * when the handler runs. The handler may call berth_send, berth_flush,
 * berth_ping, berth_info, berth_connect, the setters and every accessor.
 * It is never re-entered: ACKs those calls collect are handed to it, in
 * order, after it returns. berth_client_free is refused (see there). */
BERTH_API void berth_set_ack_handler(berth_client *c, berth_ack_handler fn, void *arg);
/* Things worth telling a person that are not failures, e.g. that no
 * balancer answers and the client runs on its cached node list; text is
 * one line, borrowed for the call. The notice comes from the middle of a
 * connection attempt: the handler may call the accessors and setters;
 * berth_connect, berth_send, berth_flush, berth_ping and berth_info return
 * BERTH_E_IN_HANDLER there, and berth_client_free is refused. */
typedef void (*berth_notice_handler)(void *arg, const char *text);
BERTH_API void berth_set_notice_handler(berth_client *c, berth_notice_handler fn, void *arg);
/* Connects now (the other calls connect on demand). */
BERTH_API berth_err berth_connect(berth_client *c);
/* The node of the current session, or "" (borrowed). */
BERTH_API const char *berth_node_id(const berth_client *c);
/* The producer id this client sends (the option's, or the random one). */
BERTH_API const char *berth_producer_id(const berth_client *c);
/* The current session's node address "host:port", or "" (borrowed). */
BERTH_API const char *berth_node_addr(const berth_client *c);
/* The current node's limits: the largest message berth_send takes, and
 * how long the node keeps a silent session (a caller that may stay quiet
 * longer keeps it with berth_ping). 0 when no session is up. */
BERTH_API size_t berth_max_message(const berth_client *c);
BERTH_API long berth_idle_timeout_ms(const berth_client *c);

/* Queues one message (copied); may wait for earlier ACKs when the window
 * is full. On a session failure, reconnects elsewhere and re-sends every
 * unacknowledged message with its id.
 * BERTH_OK exactly when the message was queued: it is kept and re-sent
 * until its ACK. Any other result means it was NOT queued (the caller
 * still holds it and may send it again, with the same id); messages
 * queued before stay queued either way (berth_unacked). */
BERTH_API berth_err berth_send(berth_client *c, uint64_t message_id, const void *data, size_t len);
/* Waits until every queued message is acknowledged. */
BERTH_API berth_err berth_flush(berth_client *c);
/* Messages queued and not yet acknowledged. */
BERTH_API size_t berth_unacked(const berth_client *c);
/* How many times the client moved to another node. */
BERTH_API unsigned long berth_failovers(const berth_client *c);

/* One PING round trip, in milliseconds (retried elsewhere on failure). */
BERTH_API berth_err berth_ping(berth_client *c, double *rtt_ms);
/* INFO: *json gets the node's answer, NUL-terminated JSON text (caller
 * frees with free). Waits for queued ACKs first; retried elsewhere on
 * failure, like berth_ping. */
BERTH_API berth_err berth_info(berth_client *c, char **json);

#ifdef __cplusplus
}
#endif

#endif
