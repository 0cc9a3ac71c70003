/* hb_msg: heartbeat channel messages as JSON (docs/DESIGN.md): encoding,
 * and decoding that validates every field before the caller sees it. */
#include "hb_msg.h"

#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const hb_type_names[HB_TYPE_COUNT] = {
    [HB_REGISTER] = "register",
    [HB_HEARTBEAT] = "heartbeat",
    [HB_LEAVE] = "leave",
    [HB_ACK] = "ack",
    [HB_REREGISTER] = "reregister",
};

const char *hb_type_name(enum hb_type t)
{
    if ((unsigned)t >= HB_TYPE_COUNT)
        return "unknown";
    return hb_type_names[t];
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

bool hb_node_id_valid(const char *id)
{
    if (id == NULL)
        return false;
    size_t n = 0;
    for (; id[n] != '\0'; n++) {
        char c = id[n];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok || n >= HB_NODE_ID_MAX)
            return false;
    }
    return n >= 1;
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Shape of "host:port" as a client dials it: a host name or IPv4 address,
 * or an IPv6 address in brackets; port 1..65535. Shape only, no lookups. */
static bool addr_valid(const char *addr)
{
    size_t n = strnlen(addr, HB_ADDR_MAX + 1);
    if (n == 0 || n > HB_ADDR_MAX)
        return false;

    const char *colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr)
        return false;
    size_t hostlen = (size_t)(colon - addr);

    if (addr[0] == '[') {
        /* [v6]:port: the bracket must close right before the port colon. */
        if (hostlen < 3 || addr[hostlen - 1] != ']')
            return false;
        bool has_colon = false;
        for (size_t i = 1; i < hostlen - 1; i++) {
            char c = addr[i];
            if (c == ':')
                has_colon = true;
            else if (!is_hex(c) && c != '.')
                return false;
        }
        if (!has_colon)
            return false;
    } else {
        if (hostlen > 253)
            return false;
        for (size_t i = 0; i < hostlen; i++) {
            char c = addr[i];
            bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                      (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
            if (!ok) /* includes ':' : an unbracketed IPv6 address is ambiguous */
                return false;
        }
    }

    const char *port = colon + 1;
    size_t plen = strlen(port);
    if (plen < 1 || plen > 5)
        return false;
    unsigned long v = 0;
    for (size_t i = 0; i < plen; i++) {
        if (port[i] < '0' || port[i] > '9')
            return false;
        v = v * 10 + (unsigned long)(port[i] - '0');
    }
    return v >= 1 && v <= 65535;
}

static bool sha256_hex_valid(const char *s)
{
    size_t n = 0;
    for (; s[n] != '\0'; n++)
        if (n >= HB_CERT_SHA256_HEX || !((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
            return false;
    return n == HB_CERT_SHA256_HEX;
}

/* Checks the values of the fields m's type carries; shared by encode and
 * decode so that what one side writes the other side accepts. */
static int hb_check(const struct hb_msg *m, char *err, size_t errlen)
{
    if ((unsigned)m->type >= HB_TYPE_COUNT)
        return fail(err, errlen, "unknown type %d", (int)m->type);
    if (!hb_node_id_valid(m->node_id))
        return fail(err, errlen, "field \"node\" must match [A-Za-z0-9._-]{1,64}");

    switch (m->type) {
    case HB_REGISTER:
        if (!addr_valid(m->addr))
            return fail(err, errlen, "field \"addr\" must be host:port");
        if (m->capacity < 1)
            return fail(err, errlen, "field \"capacity\" must be at least 1");
        if (m->version[0] == '\0' || strnlen(m->version, sizeof m->version) > HB_VERSION_MAX)
            return fail(err, errlen, "field \"version\" must be 1 to %d bytes", HB_VERSION_MAX);
        if (m->cert_sha256[0] != '\0' && !sha256_hex_valid(m->cert_sha256))
            return fail(err, errlen, "field \"cert_sha256\" must be %d lower-case hex digits",
                        HB_CERT_SHA256_HEX);
        break;
    case HB_HEARTBEAT:
        if (!isfinite(m->msgs_per_sec) || m->msgs_per_sec < 0 || m->msgs_per_sec > HB_RATE_MAX)
            return fail(err, errlen, "field \"msgs_per_sec\" must be a number from 0 to %g",
                        HB_RATE_MAX);
        if (strnlen(m->reason, sizeof m->reason) > HB_REASON_MAX)
            return fail(err, errlen, "field \"reason\" is longer than %d bytes", HB_REASON_MAX);
        if (m->nworkers > HB_MAX_WORKERS)
            return fail(err, errlen, "field \"workers\" has more than %d entries",
                        HB_MAX_WORKERS);
        if (m->nbalancers > HB_MAX_BALANCERS)
            return fail(err, errlen, "field \"balancers\" has more than %d entries",
                        HB_MAX_BALANCERS);
        for (uint32_t i = 0; i < m->nbalancers; i++) {
            /* Printable ASCII only: endpoints end up in logs and pages. */
            const char *e = m->balancers[i].endpoint;
            size_t n = strnlen(e, sizeof m->balancers[i].endpoint);
            bool printable = n >= 1 && n <= HB_ENDPOINT_MAX;
            for (size_t k = 0; printable && k < n; k++)
                printable = e[k] > 0x20 && e[k] < 0x7F;
            if (!printable)
                return fail(err, errlen,
                            "field \"balancers[%u].endpoint\" must be 1 to %d printable bytes", i,
                            HB_ENDPOINT_MAX);
        }
        break;
    case HB_LEAVE:
        break;
    case HB_ACK:
    case HB_REREGISTER:
        if (m->interval_ms < 1)
            return fail(err, errlen, "field \"interval_ms\" must be at least 1");
        break;
    case HB_TYPE_COUNT:
        break;
    }
    return 0;
}

/* ---- encoding ---------------------------------------------------------- */

/* JSON integers are int64 in jansson; a u64 above that cannot be carried. */
static int set_u64(json_t *o, const char *key, uint64_t v, char *err, size_t errlen)
{
    if (v > (uint64_t)INT64_MAX)
        return fail(err, errlen, "field \"%s\" is out of range", key);
    if (json_object_set_new(o, key, json_integer((json_int_t)v)) != 0)
        return fail(err, errlen, "out of memory");
    return 0;
}

static int set_new(json_t *o, const char *key, json_t *v, char *err, size_t errlen)
{
    /* json_string() returns NULL for text that is not UTF-8. */
    if (v == NULL)
        return fail(err, errlen, "field \"%s\" cannot be encoded (not UTF-8?)", key);
    /* json_object_set_new takes v even when it fails. */
    if (json_object_set_new(o, key, v) != 0)
        return fail(err, errlen, "out of memory");
    return 0;
}

static int encode_workers(json_t *o, const struct hb_msg *m, char *err, size_t errlen)
{
    json_t *arr = json_array();
    if (set_new(o, "workers", arr, err, errlen) != 0)
        return -1;
    for (uint32_t i = 0; i < m->nworkers; i++) {
        json_t *w = json_object();
        if (w == NULL || json_array_append_new(arr, w) != 0)
            return fail(err, errlen, "out of memory");
        if (set_u64(w, "ticks", m->workers[i].ticks, err, errlen) != 0 ||
            set_u64(w, "hs_ok", m->workers[i].handshakes_ok, err, errlen) != 0 ||
            set_u64(w, "hs_failed", m->workers[i].handshakes_failed, err, errlen) != 0)
            return -1;
    }
    return 0;
}

static int encode_forward(json_t *o, const struct hb_forward *f, char *err, size_t errlen)
{
    json_t *fo = json_object();
    if (set_new(o, "forward", fo, err, errlen) != 0)
        return -1;
    if (set_u64(fo, "seq", f->forwarded_seq, err, errlen) != 0 ||
        set_u64(fo, "lag_records", f->lag_records, err, errlen) != 0 ||
        set_u64(fo, "lag_ms", f->lag_ms, err, errlen) != 0 ||
        set_u64(fo, "errors", f->errors, err, errlen) != 0 ||
        set_u64(fo, "duplicates", f->duplicates, err, errlen) != 0 ||
        set_new(fo, "healthy", json_boolean(f->healthy), err, errlen) != 0)
        return -1;
    return 0;
}

static int encode_balancers(json_t *o, const struct hb_msg *m, char *err, size_t errlen)
{
    json_t *arr = json_array();
    if (set_new(o, "balancers", arr, err, errlen) != 0)
        return -1;
    for (uint32_t i = 0; i < m->nbalancers; i++) {
        json_t *b = json_object();
        if (b == NULL || json_array_append_new(arr, b) != 0)
            return fail(err, errlen, "out of memory");
        if (set_new(b, "endpoint", json_string(m->balancers[i].endpoint), err, errlen) != 0 ||
            set_new(b, "reached", json_boolean(m->balancers[i].reached), err, errlen) != 0)
            return -1;
    }
    return 0;
}

static int encode_fields(json_t *o, const struct hb_msg *m, char *err, size_t errlen)
{
    char boot[17];
    snprintf(boot, sizeof boot, "%016" PRIx64, m->boot_id);

    if (set_new(o, "type", json_string(hb_type_name(m->type)), err, errlen) != 0 ||
        set_new(o, "node", json_string(m->node_id), err, errlen) != 0)
        return -1;

    switch (m->type) {
    case HB_REGISTER:
        if (set_new(o, "boot", json_string(boot), err, errlen) != 0 ||
            set_u64(o, "seq", m->seq, err, errlen) != 0 ||
            set_new(o, "addr", json_string(m->addr), err, errlen) != 0 ||
            set_u64(o, "capacity", m->capacity, err, errlen) != 0 ||
            set_new(o, "version", json_string(m->version), err, errlen) != 0)
            return -1;
        if (m->cert_sha256[0] != '\0' &&
            set_new(o, "cert_sha256", json_string(m->cert_sha256), err, errlen) != 0)
            return -1;
        return 0;
    case HB_HEARTBEAT:
        if (set_new(o, "boot", json_string(boot), err, errlen) != 0 ||
            set_u64(o, "seq", m->seq, err, errlen) != 0 ||
            set_u64(o, "sessions", m->sessions, err, errlen) != 0 ||
            set_u64(o, "accepted", m->accepted, err, errlen) != 0 ||
            set_new(o, "msgs_per_sec", json_real(m->msgs_per_sec), err, errlen) != 0 ||
            set_new(o, "healthy", json_boolean(m->healthy), err, errlen) != 0 ||
            set_new(o, "draining", json_boolean(m->draining), err, errlen) != 0 ||
            set_new(o, "reason", json_string(m->reason), err, errlen) != 0)
            return -1;
        if (encode_workers(o, m, err, errlen) != 0)
            return -1;
        if (m->forward.present && encode_forward(o, &m->forward, err, errlen) != 0)
            return -1;
        return m->nbalancers > 0 ? encode_balancers(o, m, err, errlen) : 0;
    case HB_LEAVE:
        if (set_new(o, "boot", json_string(boot), err, errlen) != 0 ||
            set_u64(o, "seq", m->seq, err, errlen) != 0)
            return -1;
        return 0;
    case HB_ACK:
    case HB_REREGISTER:
        if (set_u64(o, "interval_ms", m->interval_ms, err, errlen) != 0 ||
            set_u64(o, "epoch", m->epoch, err, errlen) != 0)
            return -1;
        return 0;
    case HB_TYPE_COUNT:
        break;
    }
    return fail(err, errlen, "unknown type");
}

char *hb_msg_encode(const struct hb_msg *m, size_t *len, char *err, size_t errlen)
{
    if (hb_check(m, err, errlen) != 0)
        return NULL;

    json_t *o = json_object();
    if (o == NULL) {
        fail(err, errlen, "out of memory");
        return NULL;
    }
    char *out = NULL;
    if (encode_fields(o, m, err, errlen) != 0)
        goto done;

    /* json_dumps returns a NUL-terminated string from malloc (jansson's
     * default allocator), so the caller's free() matches. */
    out = json_dumps(o, JSON_COMPACT);
    if (out == NULL) {
        fail(err, errlen, "out of memory");
        goto done;
    }
    *len = strlen(out);
    if (*len > HB_MAX_MESSAGE) {
        fail(err, errlen, "message longer than %d bytes", HB_MAX_MESSAGE);
        free(out);
        out = NULL;
    }
done:
    json_decref(o);
    return out;
}

/* ---- decoding ---------------------------------------------------------- */

/* Each getter fetches a required member of o, checks its JSON type and
 * range, and names the field in err when it does not fit. `label` is the
 * name shown (it differs from key inside the workers array). */
static json_t *get_member(json_t *o, const char *key, const char *label, char *err,
                          size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (v == NULL)
        fail(err, errlen, "missing field \"%s\"", label);
    return v;
}

static int get_uint(json_t *o, const char *key, const char *label, uint64_t max, uint64_t *out,
                    char *err, size_t errlen)
{
    json_t *v = get_member(o, key, label, err, errlen);
    if (v == NULL)
        return -1;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return fail(err, errlen, "field \"%s\" must be a non-negative integer", label);
    uint64_t x = (uint64_t)json_integer_value(v);
    if (x > max)
        return fail(err, errlen, "field \"%s\" must be at most %" PRIu64, label, max);
    *out = x;
    return 0;
}

static int get_u32(json_t *o, const char *key, uint32_t *out, char *err, size_t errlen)
{
    uint64_t x = 0; /* gcc -O3 cannot see get_uint sets it on success */
    if (get_uint(o, key, key, UINT32_MAX, &x, err, errlen) != 0)
        return -1;
    *out = (uint32_t)x;
    return 0;
}

static int get_u64(json_t *o, const char *key, uint64_t *out, char *err, size_t errlen)
{
    return get_uint(o, key, key, (uint64_t)INT64_MAX, out, err, errlen);
}

static int get_bool(json_t *o, const char *key, bool *out, char *err, size_t errlen)
{
    json_t *v = get_member(o, key, key, err, errlen);
    if (v == NULL)
        return -1;
    if (!json_is_boolean(v))
        return fail(err, errlen, "field \"%s\" must be a boolean", key);
    *out = json_is_true(v);
    return 0;
}

/* Copies a string member into dst (size max + 1); min is the shortest allowed. */
static int get_str(json_t *o, const char *key, size_t min, size_t max, char *dst, char *err,
                   size_t errlen)
{
    json_t *v = get_member(o, key, key, err, errlen);
    if (v == NULL)
        return -1;
    if (!json_is_string(v))
        return fail(err, errlen, "field \"%s\" must be a string", key);
    size_t n = json_string_length(v);
    if (n < min || n > max)
        return fail(err, errlen, "field \"%s\" must be %zu to %zu bytes long", key, min, max);
    memcpy(dst, json_string_value(v), n);
    dst[n] = '\0';
    return 0;
}

static int get_boot(json_t *o, uint64_t *out, char *err, size_t errlen)
{
    json_t *v = get_member(o, "boot", "boot", err, errlen);
    if (v == NULL)
        return -1;
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    bool ok = s != NULL && json_string_length(v) == 16;
    for (size_t i = 0; ok && i < 16; i++)
        ok = (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f');
    if (!ok)
        return fail(err, errlen, "field \"boot\" must be 16 lower-case hex digits");
    *out = strtoull(s, NULL, 16);
    return 0;
}

static int get_number(json_t *o, const char *key, double *out, char *err, size_t errlen)
{
    json_t *v = get_member(o, key, key, err, errlen);
    if (v == NULL)
        return -1;
    if (!json_is_number(v))
        return fail(err, errlen, "field \"%s\" must be a number", key);
    double d = json_number_value(v);
    if (!isfinite(d) || d < 0 || d > HB_RATE_MAX)
        return fail(err, errlen, "field \"%s\" must be a number from 0 to %g", key, HB_RATE_MAX);
    *out = d;
    return 0;
}

static int decode_workers(json_t *o, struct hb_msg *m, char *err, size_t errlen)
{
    json_t *arr = get_member(o, "workers", "workers", err, errlen);
    if (arr == NULL)
        return -1;
    if (!json_is_array(arr))
        return fail(err, errlen, "field \"workers\" must be an array");
    size_t n = json_array_size(arr);
    if (n > HB_MAX_WORKERS)
        return fail(err, errlen, "field \"workers\" has more than %d entries", HB_MAX_WORKERS);
    for (size_t i = 0; i < n; i++) {
        json_t *w = json_array_get(arr, i);
        char label[48];
        if (!json_is_object(w))
            return fail(err, errlen, "field \"workers[%zu]\" must be an object", i);
        struct hb_worker *hw = &m->workers[i];
        snprintf(label, sizeof label, "workers[%zu].ticks", i);
        if (get_uint(w, "ticks", label, INT64_MAX, &hw->ticks, err, errlen) != 0)
            return -1;
        snprintf(label, sizeof label, "workers[%zu].hs_ok", i);
        if (get_uint(w, "hs_ok", label, INT64_MAX, &hw->handshakes_ok, err, errlen) != 0)
            return -1;
        snprintf(label, sizeof label, "workers[%zu].hs_failed", i);
        if (get_uint(w, "hs_failed", label, INT64_MAX, &hw->handshakes_failed, err, errlen) != 0)
            return -1;
    }
    m->nworkers = (uint32_t)n;
    return 0;
}

static int decode_forward(json_t *o, struct hb_forward *f, char *err, size_t errlen)
{
    json_t *fo = json_object_get(o, "forward");
    if (!json_is_object(fo))
        return fail(err, errlen, "field \"forward\" must be an object");
    if (get_uint(fo, "seq", "forward.seq", INT64_MAX, &f->forwarded_seq, err, errlen) != 0 ||
        get_uint(fo, "lag_records", "forward.lag_records", INT64_MAX, &f->lag_records, err,
                 errlen) != 0 ||
        get_uint(fo, "lag_ms", "forward.lag_ms", INT64_MAX, &f->lag_ms, err, errlen) != 0 ||
        get_uint(fo, "errors", "forward.errors", INT64_MAX, &f->errors, err, errlen) != 0 ||
        get_uint(fo, "duplicates", "forward.duplicates", INT64_MAX, &f->duplicates, err,
                 errlen) != 0 ||
        get_bool(fo, "healthy", &f->healthy, err, errlen) != 0)
        return -1;
    f->present = true;
    return 0;
}

static int decode_balancers(json_t *o, struct hb_msg *m, char *err, size_t errlen)
{
    json_t *arr = json_object_get(o, "balancers");
    if (!json_is_array(arr))
        return fail(err, errlen, "field \"balancers\" must be an array");
    size_t n = json_array_size(arr);
    if (n > HB_MAX_BALANCERS)
        return fail(err, errlen, "field \"balancers\" has more than %d entries",
                    HB_MAX_BALANCERS);
    for (size_t i = 0; i < n; i++) {
        json_t *b = json_array_get(arr, i);
        if (!json_is_object(b))
            return fail(err, errlen, "field \"balancers[%zu]\" must be an object", i);
        json_t *e = json_object_get(b, "endpoint");
        json_t *r = json_object_get(b, "reached");
        if (!json_is_string(e) || json_string_length(e) < 1 ||
            json_string_length(e) > HB_ENDPOINT_MAX)
            return fail(err, errlen, "field \"balancers[%zu].endpoint\" must be a string of 1 to %d bytes",
                        i, HB_ENDPOINT_MAX);
        if (!json_is_boolean(r))
            return fail(err, errlen, "field \"balancers[%zu].reached\" must be a boolean", i);
        memcpy(m->balancers[i].endpoint, json_string_value(e), json_string_length(e));
        m->balancers[i].endpoint[json_string_length(e)] = '\0';
        m->balancers[i].reached = json_is_true(r);
    }
    m->nbalancers = (uint32_t)n;
    return 0;
}

static int decode_fields(json_t *o, struct hb_msg *m, char *err, size_t errlen)
{
    json_t *t = json_object_get(o, "type");
    if (t == NULL)
        return fail(err, errlen, "missing field \"type\"");
    if (!json_is_string(t))
        return fail(err, errlen, "field \"type\" must be a string");
    const char *ts = json_string_value(t);
    int type = -1;
    for (int i = 0; i < HB_TYPE_COUNT; i++)
        if (strcmp(ts, hb_type_names[i]) == 0)
            type = i;
    if (type < 0) {
        /* The reason ends up in logs: echo at most 32 bytes, printable only. */
        char shown[33];
        size_t i = 0;
        for (; ts[i] != '\0' && i < sizeof shown - 1; i++)
            shown[i] = ts[i] >= 0x20 && ts[i] < 0x7F ? ts[i] : '?';
        shown[i] = '\0';
        return fail(err, errlen, "unknown type \"%s\"", shown);
    }
    m->type = (enum hb_type)type;

    if (get_str(o, "node", 1, HB_NODE_ID_MAX, m->node_id, err, errlen) != 0)
        return -1;

    switch (m->type) {
    case HB_REGISTER:
        if (get_boot(o, &m->boot_id, err, errlen) != 0 ||
            get_u64(o, "seq", &m->seq, err, errlen) != 0 ||
            get_str(o, "addr", 1, HB_ADDR_MAX, m->addr, err, errlen) != 0 ||
            get_u32(o, "capacity", &m->capacity, err, errlen) != 0 ||
            get_str(o, "version", 1, HB_VERSION_MAX, m->version, err, errlen) != 0)
            return -1;
        /* cert_sha256 is optional: absent means the node does not say. */
        if (json_object_get(o, "cert_sha256") != NULL &&
            get_str(o, "cert_sha256", HB_CERT_SHA256_HEX, HB_CERT_SHA256_HEX, m->cert_sha256,
                    err, errlen) != 0)
            return -1;
        return 0;
    case HB_HEARTBEAT:
        if (get_boot(o, &m->boot_id, err, errlen) != 0 ||
            get_u64(o, "seq", &m->seq, err, errlen) != 0 ||
            get_u32(o, "sessions", &m->sessions, err, errlen) != 0 ||
            get_u64(o, "accepted", &m->accepted, err, errlen) != 0 ||
            get_number(o, "msgs_per_sec", &m->msgs_per_sec, err, errlen) != 0 ||
            get_bool(o, "healthy", &m->healthy, err, errlen) != 0 ||
            get_bool(o, "draining", &m->draining, err, errlen) != 0)
            return -1;
        /* reason is optional: absent means "". */
        if (json_object_get(o, "reason") != NULL &&
            get_str(o, "reason", 0, HB_REASON_MAX, m->reason, err, errlen) != 0)
            return -1;
        if (decode_workers(o, m, err, errlen) != 0)
            return -1;
        /* balancers is optional: nodes before it, or with one balancer. */
        if (json_object_get(o, "forward") != NULL && decode_forward(o, &m->forward, err, errlen) != 0)
            return -1;
        return json_object_get(o, "balancers") != NULL ? decode_balancers(o, m, err, errlen) : 0;
    case HB_LEAVE:
        if (get_boot(o, &m->boot_id, err, errlen) != 0 ||
            get_u64(o, "seq", &m->seq, err, errlen) != 0)
            return -1;
        return 0;
    case HB_ACK:
    case HB_REREGISTER:
        if (get_u32(o, "interval_ms", &m->interval_ms, err, errlen) != 0 ||
            get_u64(o, "epoch", &m->epoch, err, errlen) != 0)
            return -1;
        return 0;
    case HB_TYPE_COUNT:
        break;
    }
    return fail(err, errlen, "unknown type");
}

int hb_msg_decode(const void *data, size_t len, struct hb_msg *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (data == NULL || len == 0)
        return fail(err, errlen, "empty message");
    if (len > HB_MAX_MESSAGE)
        return fail(err, errlen, "message longer than %d bytes", HB_MAX_MESSAGE);

    json_error_t jerr;
    /* Duplicate keys are refused: two "node" fields would let two readers of
     * the same message disagree about who sent it. JSON_DECODE_ANY lets a
     * bare scalar parse, so that it is refused below with a clearer reason. */
    json_t *o = json_loadb(data, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (o == NULL)
        return fail(err, errlen, "not valid JSON: %s at byte %d", jerr.text, jerr.position);

    int rc;
    if (!json_is_object(o))
        rc = fail(err, errlen, "message must be a JSON object");
    else if (decode_fields(o, out, err, errlen) != 0)
        rc = -1;
    else
        rc = hb_check(out, err, errlen);
    json_decref(o);
    if (rc != 0)
        memset(out, 0, sizeof *out);
    return rc;
}
