/* lookup: asks a berth-balancer over HTTP (libcurl) which node to use
 * (GET /v1/pick, docs/DESIGN.md) and parses its JSON answers (jansson). */
#ifndef BERTH_LOOKUP_H
#define BERTH_LOOKUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LOOKUP_ID_MAX 64    /* node ids are [A-Za-z0-9._-]{1,64} */
#define LOOKUP_ADDR_MAX 261 /* "[" + 253-byte host + "]:" + 5-digit port */
/* Largest answer body read from the balancer; /v1/health of a big cluster
 * stays far below it, and a runaway server cannot exhaust our memory. */
#define LOOKUP_BODY_MAX (8u << 20)

/* One node as /v1/pick names it. */
struct lookup_node {
    char id[LOOKUP_ID_MAX + 1];     /* NUL-terminated, validated */
    char addr[LOOKUP_ADDR_MAX + 1]; /* "host:port", validated with addr_parse */
    uint64_t epoch;                 /* the balancer's membership epoch */
    char cert_sha256[65];           /* the node's registered certificate digest, or "" */
};

struct lookup;

/* What a lookup came to, so callers decide by code and keep err for people. */
enum lookup_status {
    LOOKUP_OK = 0,
    LOOKUP_E_LOCAL,     /* on our side: out of memory, a bad argument */
    LOOKUP_E_TRANSPORT, /* no answer: connect, TLS, timeout, an answer above LOOKUP_BODY_MAX */
    LOOKUP_E_NO_NODE,   /* 503 with error code "no_healthy_node": the balancer answered
                         * that no node is in rotation (after the exclusions) */
    LOOKUP_E_STATUS,    /* any other HTTP error status */
    LOOKUP_E_ANSWER,    /* a 2xx answer that is not the documented JSON */
};

/* libcurl's process-wide setup. Call it once at program start, before any
 * thread exists (the CLI does, first thing in main). lookup_new also calls
 * it, guarded by pthread_once, for programs that forget; that is only safe
 * while no other thread uses libcurl or OpenSSL. 0, or -1 with err. */
int lookup_global_init(char *err, size_t errlen);

/* balancer_url: "http://host:port" (https also works), with or without a
 * trailing slash; copied. timeout_ms bounds each whole request (connect
 * included); > 0. Returns a new lookup, or NULL with the reason in err. */
struct lookup *lookup_new(const char *balancer_url, long timeout_ms, char *err, size_t errlen);
/* NULL is a no-op. */
void lookup_free(struct lookup *l);
/* Trust anchors (PEM file) for an https:// balancer instead of the system
 * store; NULL or "" goes back to the system store. 0, or -1 on out of memory. */
int lookup_set_ca_file(struct lookup *l, const char *ca_file);

/* GET /v1/pick[?key=K][&exclude=a,b]: key may be NULL (no affinity);
 * exclude holds nexclude node ids to skip (may be NULL when 0). Both are
 * URL-escaped here. Returns LOOKUP_OK with *out filled, or the failure's
 * class with err naming the balancer and the cause: transport failure,
 * HTTP error status (with the body's "error" and "message"), a body that
 * is not JSON, or a missing or invalid field. Example: LOOKUP_E_NO_NODE,
 * "balancer http://127.0.0.1:8080: 503 no_healthy_node: no healthy node in
 * rotation". */
enum lookup_status lookup_pick(struct lookup *l, const char *key, const char *const *exclude, size_t nexclude,
                struct lookup_node *out, char *err, size_t errlen);

/* Why a client reports a node (POST /v1/reports, docs/DESIGN.md). */
enum lookup_report_reason { LOOKUP_REPORT_CONNECT, LOOKUP_REPORT_TLS, LOOKUP_REPORT_TIMEOUT };

/* POST /v1/reports: tells the balancer this client could not reach node_id
 * (detail: optional text, control characters replaced, cut at 200 bytes).
 * 0 when the balancer took it (202), or -1 with err as for lookup_pick. */
int lookup_report(struct lookup *l, const char *node_id, enum lookup_report_reason reason,
                  const char *detail, char *err, size_t errlen);

/* True if s is 64 lower-case hex digits (a SHA-256 as the registry gives it). */
bool lookup_sha256_hex_ok(const char *s);

/* GET <path> (e.g. "/v1/health"; must start with '/'). On a 2xx answer
 * whose body is a JSON object returns 0 and *body (NUL-terminated, caller
 * frees with free). Otherwise -1 with err as for lookup_pick, *body NULL. */
int lookup_get_json(struct lookup *l, const char *path, char **body, char *err, size_t errlen);

/* The parser behind lookup_pick, with no I/O: body[0..len) is what the
 * balancer answered with HTTP status `status`. LOOKUP_OK with *out filled,
 * or LOOKUP_E_NO_NODE, LOOKUP_E_STATUS or LOOKUP_E_ANSWER with the cause in
 * err (without the "balancer <url>: " prefix), e.g. "503 no_healthy_node:
 * no healthy node in rotation" or "bad /v1/pick answer: \"addr\": missing
 * or not a string". */
enum lookup_status lookup_parse_pick(const char *body, size_t len, long status, struct lookup_node *out,
                      char *err, size_t errlen);

/* Turns a non-2xx answer into "<status> <error>: <message>" (or
 * "HTTP <status>" when the body is not the documented error object);
 * control characters in the server's text are replaced. Always fills err. */
void lookup_format_http_error(const char *body, size_t len, long status, char *err,
                              size_t errlen);

#endif
