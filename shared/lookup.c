/* lookup: the balancer's HTTP client. libcurl does HTTP, jansson reads the
 * JSON; this file builds the URLs and checks every field of the answers. */
#include "lookup.h"
#include "errbuf.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

#include "addr.h"

#ifndef BERTH_VERSION
#define BERTH_VERSION "dev"
#endif

struct lookup {
    CURL *curl;                      /* one easy handle, so connections are reused */
    char *base;                      /* balancer URL without trailing '/' */
    long timeout_ms;                 /* per request, connect included */
    char *ca_file;                   /* trust anchors for an https balancer; NULL: system */
    char curl_err[CURL_ERROR_SIZE];  /* libcurl's detail for the last failure */
};

/* An answer body being received. */
struct lookup_body {
    char *data;     /* NUL-terminated once complete */
    size_t len;
    size_t cap;
    bool too_large; /* the server sent more than LOOKUP_BODY_MAX */
};

static pthread_once_t lookup_once = PTHREAD_ONCE_INIT;
static CURLcode lookup_init_result = CURLE_OK;

static void lookup_global_init_once(void)
{
    lookup_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int lookup_global_init(char *err, size_t errlen)
{
    if (pthread_once(&lookup_once, lookup_global_init_once) != 0) {
        errbuf_setf(err, errlen, "pthread_once failed");
        return -1;
    }
    if (lookup_init_result != CURLE_OK) {
        errbuf_setf(err, errlen, "curl_global_init: %s", curl_easy_strerror(lookup_init_result));
        return -1;
    }
    return 0;
}

/* Copies s into dst (size n) with control characters replaced, so text from
 * the network cannot move a terminal's cursor or forge log lines. */
static void lookup_clean_text(const char *s, char *dst, size_t n)
{
    size_t i = 0;
    for (; s[i] && i + 1 < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        dst[i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    if (n)
        dst[i] = '\0';
}

static bool lookup_id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > LOOKUP_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = id[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

bool lookup_sha256_hex_ok(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (n >= 64 || !((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
            return false;
    return n == 64;
}

void lookup_format_http_error(const char *body, size_t len, long status, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = body ? json_loadb(body, len, 0, &jerr) : NULL;
    const char *code = NULL, *message = NULL;
    if (root && json_is_object(root)) {
        code = json_string_value(json_object_get(root, "error"));
        message = json_string_value(json_object_get(root, "message"));
    }
    char ccode[128], cmsg[512];
    if (code) {
        lookup_clean_text(code, ccode, sizeof(ccode));
        if (message) {
            lookup_clean_text(message, cmsg, sizeof(cmsg));
            errbuf_setf(err, errlen, "%ld %s: %s", status, ccode, cmsg);
        } else {
            errbuf_setf(err, errlen, "%ld %s", status, ccode);
        }
    } else {
        errbuf_setf(err, errlen, "HTTP %ld%s", status,
                    root ? "" : " (the body is not the documented JSON error)");
    }
    json_decref(root);
}

/* The class of a non-2xx answer: the documented machine-readable "error"
 * code decides, never the words of "message". */
static enum lookup_status lookup_http_error_class(const char *body, size_t len, long status)
{
    if (status != 503 || !body)
        return LOOKUP_E_STATUS;
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    const char *code = json_is_object(root) ? json_string_value(json_object_get(root, "error"))
                                            : NULL;
    enum lookup_status st =
        code && strcmp(code, "no_healthy_node") == 0 ? LOOKUP_E_NO_NODE : LOOKUP_E_STATUS;
    json_decref(root);
    return st;
}

enum lookup_status lookup_parse_pick(const char *body, size_t len, long status,
                                     struct lookup_node *out, char *err, size_t errlen)
{
    if (status < 200 || status > 299) {
        lookup_format_http_error(body, len, status, err, errlen);
        return lookup_http_error_class(body, len, status);
    }
    if (!body || len == 0) {
        errbuf_setf(err, errlen, "bad /v1/pick answer: empty body");
        return LOOKUP_E_ANSWER;
    }
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (!root) {
        errbuf_setf(err, errlen, "bad /v1/pick answer: not JSON: %s (line %d)", jerr.text,
                    jerr.line);
        return LOOKUP_E_ANSWER;
    }
    enum lookup_status rc = LOOKUP_E_ANSWER;
    if (!json_is_object(root)) {
        errbuf_setf(err, errlen, "bad /v1/pick answer: not a JSON object");
        goto done;
    }

    const char *id = json_string_value(json_object_get(root, "id"));
    if (!id) {
        errbuf_setf(err, errlen, "bad /v1/pick answer: \"id\": missing or not a string");
        goto done;
    }
    if (!lookup_id_ok(id)) {
        char clean[LOOKUP_ID_MAX + 1];
        lookup_clean_text(id, clean, sizeof(clean));
        errbuf_setf(err, errlen, "bad /v1/pick answer: \"id\" \"%s\" is not a node id", clean);
        goto done;
    }

    const char *addr_text = json_string_value(json_object_get(root, "addr"));
    if (!addr_text) {
        errbuf_setf(err, errlen, "bad /v1/pick answer: \"addr\": missing or not a string");
        goto done;
    }
    struct addr a;
    char aerr[256];
    if (strlen(addr_text) > LOOKUP_ADDR_MAX) {
        errbuf_setf(err, errlen, "bad /v1/pick answer: \"addr\" is longer than %d bytes",
                    LOOKUP_ADDR_MAX);
        goto done;
    }
    if (addr_parse(addr_text, false, &a, aerr, sizeof(aerr)) != 0) {
        char clean[LOOKUP_ADDR_MAX + 1];
        lookup_clean_text(addr_text, clean, sizeof(clean));
        errbuf_setf(err, errlen, "bad /v1/pick answer: \"addr\" \"%s\": %s", clean, aerr);
        goto done;
    }

    json_t *epoch = json_object_get(root, "epoch");
    if (!json_is_integer(epoch) || json_integer_value(epoch) < 0) {
        errbuf_setf(err, errlen,
                    "bad /v1/pick answer: \"epoch\": missing or not a non-negative integer");
        goto done;
    }

    /* Optional: a node that registered no digest is checked by CA alone. */
    json_t *cert = json_object_get(root, "cert_sha256");
    if (cert && (!json_is_string(cert) || !lookup_sha256_hex_ok(json_string_value(cert)))) {
        errbuf_setf(err, errlen,
                    "bad /v1/pick answer: \"cert_sha256\" is not 64 lower-case hex digits");
        goto done;
    }

    memset(out, 0, sizeof(*out));
    if (cert)
        snprintf(out->cert_sha256, sizeof(out->cert_sha256), "%s", json_string_value(cert));
    snprintf(out->id, sizeof(out->id), "%s", id);
    snprintf(out->addr, sizeof(out->addr), "%s", addr_text);
    out->epoch = (uint64_t)json_integer_value(epoch);
    rc = LOOKUP_OK;
done:
    json_decref(root);
    return rc;
}

struct lookup *lookup_new(const char *balancer_url, long timeout_ms, char *err, size_t errlen)
{
    if (lookup_global_init(err, errlen) != 0)
        return NULL;
    if (!balancer_url || (strncmp(balancer_url, "http://", 7) != 0 &&
                          strncmp(balancer_url, "https://", 8) != 0)) {
        errbuf_setf(err, errlen, "balancer URL \"%s\" must start with http:// or https://",
                    balancer_url ? balancer_url : "");
        return NULL;
    }
    if (timeout_ms <= 0) {
        errbuf_setf(err, errlen, "lookup timeout must be positive, not %ld ms", timeout_ms);
        return NULL;
    }

    /* Let libcurl judge the URL now, so a typo fails with its own message
     * rather than as a connection error later. */
    CURLU *u = curl_url();
    if (!u) {
        errbuf_setf(err, errlen, "out of memory");
        return NULL;
    }
    CURLUcode uc = curl_url_set(u, CURLUPART_URL, balancer_url, 0);
    curl_url_cleanup(u);
    if (uc != CURLUE_OK) {
        errbuf_setf(err, errlen, "balancer URL \"%s\": %s", balancer_url, curl_url_strerror(uc));
        return NULL;
    }

    struct lookup *l = calloc(1, sizeof(*l));
    if (!l) {
        errbuf_setf(err, errlen, "out of memory");
        return NULL;
    }
    l->timeout_ms = timeout_ms;
    l->base = strdup(balancer_url);
    if (!l->base) {
        errbuf_setf(err, errlen, "out of memory");
        goto fail;
    }
    size_t n = strlen(l->base);
    while (n > 0 && l->base[n - 1] == '/')
        l->base[--n] = '\0';

    l->curl = curl_easy_init();
    if (!l->curl) {
        errbuf_setf(err, errlen, "curl_easy_init failed");
        goto fail;
    }
    return l;

fail:
    lookup_free(l);
    return NULL;
}

int lookup_set_ca_file(struct lookup *l, const char *ca_file)
{
    char *copy = NULL;
    if (ca_file && *ca_file && !(copy = strdup(ca_file)))
        return -1;
    free(l->ca_file);
    l->ca_file = copy;
    return 0;
}

void lookup_free(struct lookup *l)
{
    if (!l)
        return;
    if (l->curl)
        curl_easy_cleanup(l->curl);
    free(l->ca_file);
    free(l->base);
    free(l);
}

static size_t lookup_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct lookup_body *b = userdata;
    size_t n = size * nmemb;
    if (n > LOOKUP_BODY_MAX - b->len) {
        b->too_large = true;
        return 0; /* anything but n makes libcurl abort the transfer */
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p)
            return 0;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* GET base + path_and_query, or POST post (a JSON text) there when post is
 * not NULL. 0 with *status and *body (caller frees body->data), or -1 with
 * err on a transport failure. */
static int lookup_http(struct lookup *l, const char *path_and_query, const char *post,
                       long *status, struct lookup_body *body, char *err, size_t errlen)
{
    struct curl_slist *headers = NULL;
    memset(body, 0, sizeof(*body));
    size_t ulen = strlen(l->base) + strlen(path_and_query) + 1;
    char *url = malloc(ulen);
    if (!url) {
        errbuf_setf(err, errlen, "out of memory");
        return -1;
    }
    snprintf(url, ulen, "%s%s", l->base, path_and_query);

    curl_easy_reset(l->curl);
    l->curl_err[0] = '\0';
    int rc = -1;
    CURLcode cc;
#define SETOPT(opt, val)                                                                        \
    do {                                                                                        \
        cc = curl_easy_setopt(l->curl, opt, val);                                               \
        if (cc != CURLE_OK) {                                                                   \
            errbuf_setf(err, errlen, "balancer %s: curl_easy_setopt(%s): %s", l->base, #opt,    \
                        curl_easy_strerror(cc));                                                \
            goto done;                                                                          \
        }                                                                                       \
    } while (0)
    SETOPT(CURLOPT_URL, url);
    SETOPT(CURLOPT_ERRORBUFFER, l->curl_err);
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_NOSIGNAL, 1L); /* no SIGALRM for DNS timeouts: we may have threads */
    SETOPT(CURLOPT_TIMEOUT_MS, l->timeout_ms);
    SETOPT(CURLOPT_CONNECTTIMEOUT_MS, l->timeout_ms);
    SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(CURLOPT_USERAGENT, "berth/" BERTH_VERSION);
    SETOPT(CURLOPT_WRITEFUNCTION, lookup_write_cb);
    SETOPT(CURLOPT_WRITEDATA, body);
    if (l->ca_file)
        SETOPT(CURLOPT_CAINFO, l->ca_file);
    if (post) {
        headers = curl_slist_append(NULL, "Content-Type: application/json");
        if (!headers) {
            errbuf_setf(err, errlen, "out of memory");
            goto done;
        }
        SETOPT(CURLOPT_HTTPHEADER, headers);
        SETOPT(CURLOPT_POSTFIELDS, post);
    }
#undef SETOPT

    cc = curl_easy_perform(l->curl);
    if (cc != CURLE_OK) {
        if (body->too_large)
            errbuf_setf(err, errlen, "balancer %s: answer larger than %u bytes", l->base,
                        LOOKUP_BODY_MAX);
        else
            errbuf_setf(err, errlen, "balancer %s: %s", l->base,
                        l->curl_err[0] ? l->curl_err : curl_easy_strerror(cc));
        goto done;
    }
    cc = curl_easy_getinfo(l->curl, CURLINFO_RESPONSE_CODE, status);
    if (cc != CURLE_OK) {
        errbuf_setf(err, errlen, "balancer %s: no HTTP status: %s", l->base,
                    curl_easy_strerror(cc));
        goto done;
    }
    rc = 0;
done:
    free(url);
    curl_slist_free_all(headers);
    if (rc != 0) {
        free(body->data);
        memset(body, 0, sizeof(*body));
    }
    return rc;
}

/* Appends s to the growing string *q (length *qlen); 0 or -1. */
static int lookup_append(char **q, size_t *qlen, const char *s)
{
    size_t n = strlen(s);
    char *p = realloc(*q, *qlen + n + 1);
    if (!p)
        return -1;
    memcpy(p + *qlen, s, n + 1);
    *q = p;
    *qlen += n;
    return 0;
}

/* Appends curl_easy_escape(s) to *q; 0 or -1. */
static int lookup_append_escaped(struct lookup *l, char **q, size_t *qlen, const char *s)
{
    char *e = curl_easy_escape(l->curl, s, (int)strlen(s));
    if (!e)
        return -1;
    int rc = lookup_append(q, qlen, e);
    curl_free(e);
    return rc;
}

enum lookup_status lookup_pick(struct lookup *l, const char *key, const char *const *exclude,
                               size_t nexclude, struct lookup_node *out, char *err, size_t errlen)
{
    char *q = NULL;
    size_t qlen = 0;
    enum lookup_status rc = LOOKUP_E_LOCAL;
    if (lookup_append(&q, &qlen, "/v1/pick") != 0)
        goto oom;
    char sep = '?';
    if (key && *key) {
        if (lookup_append(&q, &qlen, "?key=") != 0 || lookup_append_escaped(l, &q, &qlen, key) != 0)
            goto oom;
        sep = '&';
    }
    for (size_t i = 0; i < nexclude; i++) {
        if (i == 0) {
            const char *head = sep == '?' ? "?exclude=" : "&exclude=";
            if (lookup_append(&q, &qlen, head) != 0)
                goto oom;
        } else if (lookup_append(&q, &qlen, ",") != 0) {
            goto oom;
        }
        if (lookup_append_escaped(l, &q, &qlen, exclude[i]) != 0)
            goto oom;
    }

    long status = 0;
    struct lookup_body body;
    if (lookup_http(l, q, NULL, &status, &body, err, errlen) != 0) {
        rc = LOOKUP_E_TRANSPORT;
        goto done;
    }
    char perr[768];
    rc = lookup_parse_pick(body.data, body.len, status, out, perr, sizeof(perr));
    if (rc != LOOKUP_OK)
        errbuf_setf(err, errlen, "balancer %s: %s", l->base, perr);
    free(body.data);
    goto done;

oom:
    errbuf_setf(err, errlen, "out of memory");
done:
    free(q);
    return rc;
}

int lookup_get_json(struct lookup *l, const char *path, char **body_out, char *err, size_t errlen)
{
    *body_out = NULL;
    if (!path || path[0] != '/') {
        errbuf_setf(err, errlen, "balancer path \"%s\" must start with '/'", path ? path : "");
        return -1;
    }
    long status = 0;
    struct lookup_body body;
    if (lookup_http(l, path, NULL, &status, &body, err, errlen) != 0)
        return -1;
    char herr[768];
    if (status < 200 || status > 299) {
        lookup_format_http_error(body.data, body.len, status, herr, sizeof(herr));
        errbuf_setf(err, errlen, "balancer %s: %s", l->base, herr);
        free(body.data);
        return -1;
    }
    json_error_t jerr;
    json_t *root = body.data ? json_loadb(body.data, body.len, 0, &jerr) : NULL;
    bool ok = root && json_is_object(root);
    json_decref(root);
    if (!ok) {
        errbuf_setf(err, errlen, "balancer %s: %s answer is not a JSON object", l->base, path);
        free(body.data);
        return -1;
    }
    *body_out = body.data;
    return 0;
}

int lookup_report(struct lookup *l, const char *node_id, enum lookup_report_reason reason,
                  const char *detail, char *err, size_t errlen)
{
    static const char *const reasons[] = {
        [LOOKUP_REPORT_CONNECT] = "connect",
        [LOOKUP_REPORT_TLS] = "tls",
        [LOOKUP_REPORT_TIMEOUT] = "timeout",
    };
    if (!node_id || !lookup_id_ok(node_id) || (unsigned)reason > LOOKUP_REPORT_TIMEOUT) {
        errbuf_setf(err, errlen, "report: not a node id or reason");
        return -1;
    }
    char clean[201];
    lookup_clean_text(detail ? detail : "", clean, sizeof(clean));
    json_t *o = json_pack("{s:s, s:s, s:s}", "node", node_id, "reason", reasons[reason], "detail",
                          clean);
    /* json_pack refuses text that is not UTF-8: send the report without it. */
    if (!o)
        o = json_pack("{s:s, s:s}", "node", node_id, "reason", reasons[reason]);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) {
        errbuf_setf(err, errlen, "out of memory");
        return -1;
    }
    long status = 0;
    struct lookup_body body;
    int rc = lookup_http(l, "/v1/reports", text, &status, &body, err, errlen);
    free(text);
    if (rc != 0)
        return -1;
    if (status != 202) {
        char herr[768];
        lookup_format_http_error(body.data, body.len, status, herr, sizeof(herr));
        errbuf_setf(err, errlen, "balancer %s: %s", l->base, herr);
        rc = -1;
    }
    free(body.data);
    return rc;
}
