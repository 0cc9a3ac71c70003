/* bench: the load generator behind `berth bench`. Worker threads, each one
 * epoll loop driving many non-blocking TLS connections (tls_conn), measure
 * full handshakes, pipelined ECHO round trips or acknowledged SENDs against
 * one node for a bounded duration. Prints nothing: progress goes to a
 * callback, results into a struct the caller formats. */
#ifndef BERTH_BENCH_H
#define BERTH_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bench_hist.h"

enum bench_mode {
    BENCH_HANDSHAKE, /* per request: TCP connect, full TLS handshake, one exchange, close */
    BENCH_ECHO,      /* persistent sessions, ECHO of --size bytes, --pipeline deep */
    BENCH_SEND,      /* persistent sessions, SEND of --size bytes, every ACK checked */
};

/* What a handshake-mode request exchanges after the TLS handshake. */
enum bench_exchange {
    BENCH_EXCHANGE_HELLO, /* berth HELLO → WELCOME (a berth-node) */
    BENCH_EXCHANGE_HTTP,  /* "GET / HTTP/1.1", Connection: close, read to EOF (any HTTPS server) */
    BENCH_EXCHANGE_NONE,  /* the handshake alone, then close_notify (any TLS server) */
};

/* "handshake", "echo", "send"; NULL for an unknown value. */
const char *bench_mode_name(enum bench_mode m);
int bench_mode_parse(const char *text, enum bench_mode *out);
const char *bench_exchange_name(enum bench_exchange x);
int bench_exchange_parse(const char *text, enum bench_exchange *out);

struct bench_progress {
    double elapsed_s;     /* since the start */
    uint64_t requests;    /* completed so far */
    uint64_t errors;      /* so far */
    double rate;          /* requests per second over the last interval */
    unsigned connections; /* sessions open now */
};

struct bench_options {
    enum bench_mode mode;
    enum bench_exchange exchange; /* handshake mode only */
    const char *addr;             /* "host:port" of the node (or any TLS server for handshakes) */
    const char *ca_file;          /* trust anchors; NULL or "": system store */
    bool verify;                  /* false: no certificate verification */
    const char *name;             /* HELLO name, 1..64 bytes */
    unsigned connections;         /* concurrent connections, 1..100000 */
    unsigned pipeline;            /* requests in flight per connection (echo, send), 1..1024 */
    size_t size;                  /* payload bytes per ECHO / SEND data */
    long duration_ms;             /* how long to measure; > 0 */
    long timeout_ms;              /* bound on connect + handshake and on each reply; > 0 */
    unsigned threads;             /* worker threads, 1..64 */
    /* Called about once a second from the calling thread; may be NULL. */
    void (*progress)(void *arg, const struct bench_progress *p);
    void *progress_arg;
};

/* Error classes counted separately. */
enum bench_err {
    BENCH_ERR_CONNECT,  /* TCP connect refused or timed out */
    BENCH_ERR_TLS,      /* handshake or TLS failure */
    BENCH_ERR_CLOSED,   /* the server closed a session that should have stayed up */
    BENCH_ERR_PROTOCOL, /* a wrong, malformed or ERROR reply, or a bad ACK digest */
    BENCH_ERR_TIMEOUT,  /* no answer within timeout_ms */
    BENCH_ERR_COUNT
};
const char *bench_err_name(enum bench_err e);

struct bench_result {
    enum bench_mode mode;
    enum bench_exchange exchange;
    char addr[262];
    unsigned connections, pipeline, threads;
    size_t size;
    double elapsed_s;           /* measured wall time */
    uint64_t requests;          /* completed requests (handshakes in handshake mode) */
    uint64_t bytes;             /* payload bytes sent and answered (echo, send) */
    uint64_t errors[BENCH_ERR_COUNT];
    uint64_t errors_total;
    double rate;                /* requests / elapsed_s */
    struct bench_hist *latency; /* per request, nanoseconds; owned */
    char tls_protocol[32];      /* negotiated by the first connection, "" if none */
    char tls_cipher[64];
    char first_error[512];      /* the first failure's text, "" if none */
};

/* Runs the benchmark to its end (duration_ms, then up to timeout_ms for the
 * requests in flight to finish, which are then counted), filling *out. 0 on
 * a completed run (errors are counted, not fatal), or -1 with err when the
 * options are bad, setup fails, or not one request succeeded (the run is
 * cut short once timeout_ms passes that way: the server is not there). Release *out with
 * bench_result_release. Ignore SIGPIPE before calling. */
int bench_run(const struct bench_options *o, struct bench_result *out, char *err, size_t errlen);
void bench_result_release(struct bench_result *r);

/* The result as one JSON object (caller frees), or NULL on out of memory. */
char *bench_result_json(const struct bench_result *r);
/* The result as human-readable lines (caller frees), or NULL. */
char *bench_result_text(const struct bench_result *r);

#endif
