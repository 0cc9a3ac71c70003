/* worker: one thread running an epoll loop with its own SO_REUSEPORT
 * listener and its own sessions; the main thread talks to it only through
 * atomics and an eventfd. */
#ifndef BERTH_WORKER_H
#define BERTH_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

#include "node_stats.h"
#include "peer_limit.h"
#include "session.h"

#define WORKER_TICK_MS 100  /* longest epoll_wait: ticks advance when idle */
#define WORKER_SWEEP_MS 250 /* timer sweep period */
#define WORKER_REFUSED_LOG_MS 10000 /* at most one summary of refused connections this often */

struct worker_config {
    unsigned index;                   /* 0-based; also the high bits of session ids */
    const struct sockaddr *listen;    /* address to bind (port as resolved) */
    socklen_t listen_len;
    SSL_CTX *ssl_ctx;                 /* borrowed, shared by all workers */
    const struct session_env *env;    /* borrowed */
    struct node_worker_stats *stats;  /* this worker's counters, borrowed */
    int notify_fd;                    /* eventfd written when the thread ends; borrowed */
    struct peer_limit *peers;         /* per-address limits shared by all workers, borrowed;
                                       * NULL: none */
};

struct worker;

/* Creates the loop and binds the listener (SO_REUSEPORT), so a bad address
 * is reported before any thread starts. NULL with the reason in err. */
struct worker *worker_new(const struct worker_config *cfg, char *err, size_t errlen);
/* Joins the thread if it was started (ask it to stop first), then frees
 * every session. NULL is a no-op. */
void worker_free(struct worker *w);
/* Waits for a stopped thread to end (worker_free then only frees), so the
 * journal can go before the eventfd it writes to is closed. */
void worker_join(struct worker *w);

/* The port the listener got (useful with port 0). */
uint16_t worker_port(const struct worker *w);

/* Starts the thread (and subscribes to env->journal, which must be set by
 * now); 0 or -1 with err. */
int worker_start(struct worker *w, char *err, size_t errlen);

/* Thread-safe requests from the main thread. */
void worker_drain(struct worker *w);                /* stop accepting, finish, BYE, close */
void worker_stop(struct worker *w);                 /* end the loop now, whatever is open */
void worker_debug_stall(struct worker *w, uint64_t ms); /* test hook: wedge the loop */
/* True once the thread left its loop (after worker_drain: every session closed). */
bool worker_finished(const struct worker *w);

#endif
