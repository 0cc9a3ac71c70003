/* http_api: the balancer's HTTP interface (GET /v1/pick, /v1/nodes,
 * /v1/health, /v1/history, /healthz, /metrics, the dashboard at /, client
 * reports at POST /v1/reports, and the admin POST
 * /v1/nodes/{id}/drain|undrain) on libmicrohttpd, run from the balancer's
 * own loop through MHD's epoll descriptor. Single-threaded. */
#ifndef BERTH_HTTP_API_H
#define BERTH_HTTP_API_H

#include <stdint.h>
#include <sys/socket.h>

#include "hb_server.h"
#include "history.h"
#include "metrics.h"
#include "picker.h"
#include "registry.h"

struct http_api_config {
    const struct sockaddr *addr; /* where to listen: a sockaddr_in or sockaddr_in6; port 0 = any */
    enum picker_policy policy;   /* reported by /v1/pick and /v1/health */
    const char *version;         /* reported by /v1/health; borrowed, static */
    const char *admin_token;     /* bearer token of the admin endpoints; NULL or "" = they answer 403 */
    struct metrics *metrics;     /* borrowed: counts answers and lookups, served at /metrics */
    const struct history *history; /* borrowed: served at /v1/history */
    /* HTTPS: the certificate chain and its private key as PEM text (both,
     * or neither for plain HTTP); copied. Served with GnuTLS through
     * libmicrohttpd, TLS 1.2 or 1.3 and AEAD suites only, like the nodes. */
    const char *tls_cert_pem;
    const char *tls_key_pem;
    /* Connections one client may hold at once (an IPv6 client counted by
     * its /64), so one host cannot take them all; 0: no per-client limit. */
    unsigned per_ip_limit;
    /* Connections in all; 0: HTTP_API_CONN_LIMIT. The last eighth only go
     * to clients holding none. */
    unsigned conn_limit;
    /* From a connection's accept (or the end of its previous request) to
     * its request's last byte, headers and body; a connection past it is
     * closed. 0: HTTP_API_REQUEST_TIMEOUT_MS. */
    uint32_t request_timeout_ms;
    /* Host header values (host or host:port, compared without case)
     * requests must carry, against DNS rebinding; NULL-terminated, copied.
     * NULL or empty: any Host. */
    const char *const *allowed_hosts;
};

#define HTTP_API_CONN_LIMIT 1024
#define HTTP_API_REQUEST_TIMEOUT_MS 10000

struct http_api_stats {
    size_t conns_open;            /* connections held now */
    unsigned conns_max;           /* the connection limit */
    uint64_t refused_per_address; /* connections refused: the client held its share */
    uint64_t refused_reserve;     /* refused: only the reserve for new clients was left */
    uint64_t refused_full;        /* refused: the limit was reached */
    uint64_t request_timeouts;    /* connections closed: the request was not in by its deadline */
    uint64_t refused_host;        /* requests answered 421: Host not in the allowlist */
};

struct http_api;

/* Starts the daemon (listening at once). reg, picker, hb and the config's
 * metrics and history are borrowed and must outlive the api; the token is
 * not kept (only its digest). Returns NULL with the reason in err. */
struct http_api *http_api_new(const struct http_api_config *cfg, struct registry *reg,
                              struct picker *picker, const struct hb_server *hb, char *err,
                              size_t errlen);
/* Stops the daemon, closing every connection; NULL is a no-op. */
void http_api_free(struct http_api *a);

/* The descriptor to poll for reading (MHD's epoll fd). */
int http_api_fd(const struct http_api *a);
/* The port actually bound (useful with port 0). */
uint16_t http_api_port(const struct http_api *a);
/* Milliseconds until http_api_run must be called even without I/O, or -1
 * when only I/O matters. */
long http_api_timeout_ms(const struct http_api *a);
/* Does all pending HTTP work without blocking. 0, or -1 on an MHD failure. */
int http_api_run(struct http_api *a);
void http_api_stats(const struct http_api *a, struct http_api_stats *out);

#endif
