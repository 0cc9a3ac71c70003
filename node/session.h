/* session: one client connection on a node: its TLS connection, input and
 * output buffers, counters and timers, and the node protocol
 * (docs/PROTOCOL.md) spoken over it. Owned by one worker thread. */
#ifndef BERTH_SESSION_H
#define BERTH_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "journal.h"
#include "node_stats.h"
#include "tls_conn.h"

#define SESSION_PEER_MAX 63        /* "[v6 address]:port" needs at most 53 */
#define SESSION_CLOSE_LINGER_MS 5000 /* how long a closing session may take to flush */
#define SESSION_CERT_ID_MAX 255      /* bytes of a client certificate's identity kept */

/* What sessions share, read-only once workers run. */
struct session_env {
    const char *node_id;
    const char *advertise;          /* host:port clients dial */
    uint64_t start_ms;              /* node start, mono clock */
    uint32_t max_frame;             /* --max-frame: payload limit */
    uint32_t idle_timeout_ms;
    uint32_t handshake_timeout_ms;
    uint32_t first_byte_timeout_ms; /* --first-byte-timeout: a connection that sent no byte
                                     * this long after the accept is closed (0: only the
                                     * handshake timeout applies) */
    uint32_t max_connections;
    uint32_t max_connections_per_addr; /* for INFO; enforced by the worker (peer_limit) */
    uint32_t max_handshakes_per_addr;
    size_t max_session_memory;      /* --max-session-memory: node-wide budget for session
                                     * buffers (the workers enforce it); 0: no budget */
    size_t max_output;              /* --max-output: stop reading above this */
    uint32_t max_inflight;          /* --max-inflight: requests read but not yet answered
                                     * (reply written) at which reading stops */
    struct node_stats *stats;       /* node-wide counters for INFO */
    struct journal *journal;        /* SENDs are stored here before their ACK; NULL: not
                                     * journaled (ACK seq 0) */
    struct forwarder *forwarder;    /* --ack-after replicated: an ACK also waits until the
                                     * forwarder delivered its record; NULL: local */
};

enum session_state {
    SESSION_HANDSHAKE, /* TLS handshake in progress */
    SESSION_OPEN,      /* established; the protocol runs (HELLO not necessarily seen) */
    SESSION_CLOSING,   /* a final frame (ERROR, BYE) is queued: flush, then close */
    SESSION_CLOSED,    /* done: the owner removes and frees it */
};

struct session;

/* Creates a session. Takes ownership of tls (freed by session_free). With
 * tls NULL the session has no transport and starts OPEN: bytes go in through
 * session_feed and replies accumulate in session_output (protocol tests).
 * env and ws are borrowed and must outlive the session. peer is copied.
 * Returns NULL on out of memory (tls is then freed). */
struct session *session_new(const struct session_env *env, struct node_worker_stats *ws,
                            uint64_t id, const char *peer, struct tls_conn *tls, uint64_t now_ms);
/* Frees everything, closing the socket. NULL is a no-op. */
void session_free(struct session *s);

uint64_t session_id(const struct session *s);
enum session_state session_state(const struct session *s);
/* The socket, or -1 without a transport. */
int session_fd(const struct session *s);
/* Why the session closed or is closing ("bye", "peer_closed", ...); static string. */
const char *session_close_reason(const struct session *s);

/* Protocol without I/O: appends len bytes of client plaintext to the input
 * and answers every complete frame into the output, in order, until the
 * output exceeds --max-output or --max-inflight requests are unanswered
 * (their replies not consumed). session_feed(s, NULL, 0, now) resumes after
 * output was consumed. Returns 0, or -1 on out of memory (session closed). */
int session_feed(struct session *s, const void *data, size_t len, uint64_t now_ms);
/* The replies not yet written (tests read them here and consume them
 * through session_output_consume, which keeps the in-flight count). */
struct buf *session_output(struct session *s);
/* Bytes at the front of the output that may go out now: replies behind an
 * ACK whose record is not yet durable are held back (request order). */
size_t session_output_ready(struct session *s);
/* Consumes n <= session_output_ready bytes as if written (tests). */
void session_output_consume(struct session *s, size_t n);
/* True while replies wait for the journal: the owner runs session_handle
 * again when the journal's durable seq advances. */
bool session_journal_wait(const struct session *s);
/* Requests read whose reply is not yet written (or consumed). */
uint64_t session_inflight(const struct session *s);

/* Does the I/O the events allow (handshake, read, process, write); events
 * are epoll bits, 0 to just make progress (session_needs_rerun). May change
 * the state to SESSION_CLOSED, after which the owner frees the session. */
void session_handle(struct session *s, uint32_t events, uint64_t now_ms);
/* The epoll events the session waits for now (EPOLLIN/EPOLLOUT). */
uint32_t session_events(const struct session *s);
/* True when session_handle stopped with work left that no epoll event will
 * announce (a per-call budget was reached): call it again soon. */
bool session_needs_rerun(const struct session *s);

/* Bytes of buffers the session holds now: its input and output storage,
 * the queue of held ACKs, and an estimate for OpenSSL's record buffers
 * while they are kept or hold unsent bytes. Each session_* call that can
 * change it (feed, handle, sweep, drain) also moves env->stats's
 * session_memory by the difference; session_free takes it all off. */
size_t session_memory(const struct session *s);
/* True while replies wait for a client that does not read them: output is
 * queued and may go (not held for the journal). */
bool session_slow_reader(const struct session *s);
/* The node's memory budget is exceeded and this session is the one to go:
 * logged, counted, closed at once without a final frame (a client that
 * reads nothing would not see it). The owner then frees it. */
void session_evict(struct session *s, uint64_t node_memory, uint64_t now_ms);
/* True once the client has sent a byte (TLS or not); tests. */
bool session_got_bytes(const struct session *s);

/* Handles the timers: no byte from the client within the first-byte
 * timeout, or handshake timeout (close), HELLO not in within the
 * handshake timeout or no complete request for the idle timeout (ERROR
 * timeout, then close), a closing session that cannot flush (close). Also
 * sizes the session to its traffic: one that answered several requests
 * since the last sweep keeps OpenSSL's record buffers, one that went quiet
 * frees them. Call it every WORKER_SWEEP_MS or so. */
void session_sweep(struct session *s, uint64_t now_ms);

/* Node shutdown: a session mid-handshake closes at once; an established one
 * stops reading, answers the requests it already received, then sends BYE
 * with request id 0 (ERROR shutting_down if it never said HELLO) and closes
 * after flushing. */
void session_drain(struct session *s, uint64_t now_ms);

#endif
