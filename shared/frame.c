/* frame: the node protocol's wire codec (docs/PROTOCOL.md): header and body
 * encoding and decoding, and the enum-to-text tables for types and errors. */
#include "frame.h"

#include <limits.h>
#include <string.h>

/* frame_decode returns a whole frame's size as a long. */
_Static_assert(LONG_MAX >= (long long)UINT32_MAX + FRAME_HEADER_SIZE,
               "long must hold a frame size");

/* Enum to text: one designated-initialiser table per enum, indexed by value. */
static const struct {
    const char *name; /* stable identifier for logs and JSON */
    const char *text; /* one-line English description, the default ERROR text */
} frame_errors[FRAME_ERR_COUNT] = {
    [FRAME_ERR_NONE] = {"none", "no error"},
    [FRAME_ERR_MALFORMED] = {"malformed", "frame does not parse"},
    [FRAME_ERR_UNKNOWN_TYPE] = {"unknown_type", "unknown message type"},
    [FRAME_ERR_BAD_VERSION] = {"bad_version", "unsupported protocol version"},
    [FRAME_ERR_NOT_READY] = {"not_ready", "HELLO required before any other request"},
    [FRAME_ERR_TOO_LARGE] = {"too_large", "payload larger than the session's maximum"},
    [FRAME_ERR_UNEXPECTED] = {"unexpected", "message not valid at this point of the session"},
    [FRAME_ERR_SHUTTING_DOWN] = {"shutting_down", "node is shutting down"},
    [FRAME_ERR_TOO_MANY_IN_FLIGHT] = {"too_many_in_flight", "too many unread replies"},
    [FRAME_ERR_TIMEOUT] = {"timeout", "session timed out"},
    [FRAME_ERR_INTERNAL] = {"internal", "internal node error"},
    [FRAME_ERR_UNAVAILABLE] = {"unavailable", "node cannot store durably now: send elsewhere"},
};

/* Per type: its name, and the payload lengths it can have at all, so that an
 * impossible length is refused from the header alone. The exact body rules
 * live in the parsers. A NULL name marks a type that does not exist. */
static const struct {
    const char *name;
    uint32_t min_len;
    uint32_t max_len;
} frame_types[256] = {
    [FRAME_HELLO] = {"HELLO", 2 + 1 + 1, 2 + 1 + FRAME_NAME_MAX + 1 + FRAME_PRODUCER_MAX},
    [FRAME_PING] = {"PING", 0, UINT32_MAX},
    [FRAME_ECHO] = {"ECHO", 0, UINT32_MAX},
    [FRAME_SEND] = {"SEND", 8, UINT32_MAX},
    [FRAME_INFO] = {"INFO", 0, 0},
    [FRAME_BYE] = {"BYE", 0, 0},
    [FRAME_WELCOME] = {"WELCOME", 2 + 8 + 4 + 4 + 1 + 1, UINT32_MAX}, /* replies may grow */
    [FRAME_PONG] = {"PONG", 0, UINT32_MAX},
    [FRAME_ECHO_REPLY] = {"ECHO_REPLY", 0, UINT32_MAX},
    [FRAME_ACK] = {"ACK", 8 + FRAME_SHA256_LEN, UINT32_MAX}, /* replies may grow */
    [FRAME_INFO_REPLY] = {"INFO_REPLY", 0, UINT32_MAX},
    [FRAME_ERROR] = {"ERROR", 2, 2 + 255},
};

const char *frame_error_name(enum frame_error e)
{
    if ((unsigned)e >= FRAME_ERR_COUNT)
        return "unknown";
    return frame_errors[e].name;
}

const char *frame_error_text(enum frame_error e)
{
    if ((unsigned)e >= FRAME_ERR_COUNT)
        return "unknown error";
    return frame_errors[e].text;
}

const char *frame_type_name(uint8_t type)
{
    return frame_types[type].name;
}

bool frame_type_is_reply(uint8_t type)
{
    return frame_types[type].name != NULL && (type & 0x80) != 0;
}

/* Big-endian load/store, byte by byte: no alignment or host-order games. */
static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get_u64(const uint8_t *p)
{
    return (uint64_t)get_u32(p) << 32 | get_u32(p + 4);
}

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    put_u32(p, (uint32_t)(v >> 32));
    put_u32(p + 4, (uint32_t)v);
}

/* HELLO names end up in logs and JSON: printable ASCII but the quote and
 * backslash, or any byte of a UTF-8 multi-byte sequence; no control
 * characters. */
static bool name_byte_ok(uint8_t c)
{
    return (c >= 0x20 && c <= 0x7E && c != '"' && c != '\\') || c >= 0x80;
}

/* Well-formed UTF-8: no overlong forms, no surrogates, nothing above
 * U+10FFFF (RFC 3629), so the name is a valid JSON string; and no C1
 * control character (U+0080..U+009F, e.g. U+0085 NEXT LINE): they are
 * control characters as much as the C0 ones, and some terminals and log
 * viewers act on them. */
static bool utf8_name_valid(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        size_t more;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            more = 1, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            more = 2, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            more = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i <= more)
            return false;
        for (size_t k = 1; k <= more; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (p[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        if (cp >= 0x80 && cp <= 0x9F)
            return false;
        i += more + 1;
    }
    return true;
}

/* WELCOME node ids follow the node id rule of the heartbeat channel. */
static bool node_id_byte_ok(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-';
}

static bool bytes_ok(const uint8_t *p, size_t n, bool (*ok)(uint8_t))
{
    for (size_t i = 0; i < n; i++)
        if (!ok(p[i]))
            return false;
    return true;
}

long frame_decode(const uint8_t *buf, size_t len, uint32_t max_payload, struct frame *out,
                  enum frame_error *err)
{
    enum frame_error e = FRAME_ERR_NONE;

    if (len < FRAME_HEADER_SIZE)
        return 0;

    out->h.length = get_u32(buf);
    out->h.version = buf[4];
    out->h.type = buf[5];
    out->h.flags = get_u16(buf + 6);
    out->h.request_id = get_u64(buf + 8);
    out->payload = NULL;

    /* The order is part of the protocol: a peer speaking another version
     * gets BAD_VERSION even if the rest of its header means nothing to us. */
    if (out->h.version != FRAME_VERSION)
        e = FRAME_ERR_BAD_VERSION;
    else if (frame_type_name(out->h.type) == NULL)
        e = FRAME_ERR_UNKNOWN_TYPE;
    else if (out->h.flags != 0)
        e = FRAME_ERR_MALFORMED;
    else if (out->h.length > max_payload)
        e = FRAME_ERR_TOO_LARGE;
    else if (out->h.length < frame_types[out->h.type].min_len ||
             out->h.length > frame_types[out->h.type].max_len)
        e = FRAME_ERR_MALFORMED;
    if (e != FRAME_ERR_NONE) {
        if (err != NULL)
            *err = e;
        return -1;
    }

    if (len - FRAME_HEADER_SIZE < out->h.length)
        return 0;
    out->payload = buf + FRAME_HEADER_SIZE;
    if (err != NULL)
        *err = FRAME_ERR_NONE;
    return (long)(FRAME_HEADER_SIZE + out->h.length);
}

/* Reserves room for a whole frame and writes its header; the caller writes
 * exactly `len` body bytes at the returned pointer and commits
 * FRAME_HEADER_SIZE + len. NULL when out of memory, for an unknown type, or
 * for a length our own decoder would refuse for that type. */
static uint8_t *frame_start(struct buf *out, uint8_t type, uint64_t request_id, size_t len)
{
    if (frame_type_name(type) == NULL || len < frame_types[type].min_len ||
        len > frame_types[type].max_len)
        return NULL;
    if (buf_reserve(out, FRAME_HEADER_SIZE + len) != 0)
        return NULL;
    uint8_t *p = buf_tail(out);
    put_u32(p, (uint32_t)len);
    p[4] = FRAME_VERSION;
    p[5] = type;
    put_u16(p + 6, 0);
    put_u64(p + 8, request_id);
    return p + FRAME_HEADER_SIZE;
}

int frame_append(struct buf *out, uint8_t type, uint64_t request_id, const void *payload,
                 size_t len)
{
    uint8_t *p = frame_start(out, type, request_id, len);
    if (p == NULL)
        return -1;
    if (len > 0)
        memcpy(p, payload, len);
    buf_commit(out, FRAME_HEADER_SIZE + len);
    return 0;
}

int frame_append_hello(struct buf *out, uint64_t request_id, uint16_t version, const char *name)
{
    return frame_append_hello_producer(out, request_id, version, name, NULL);
}

int frame_append_hello_producer(struct buf *out, uint64_t request_id, uint16_t version,
                                const char *name, const char *producer)
{
    size_t n = name != NULL ? strlen(name) : 0;
    size_t pn = producer != NULL ? strlen(producer) : 0;
    if (n < 1 || n > FRAME_NAME_MAX || !bytes_ok((const uint8_t *)name, n, name_byte_ok) ||
        !utf8_name_valid((const uint8_t *)name, n))
        return -1;
    if (pn && (version < 2 || pn > FRAME_PRODUCER_MAX ||
               !bytes_ok((const uint8_t *)producer, pn, node_id_byte_ok)))
        return -1;
    size_t len = 3 + n + (pn ? 1 + pn : 0);
    uint8_t *p = frame_start(out, FRAME_HELLO, request_id, len);
    if (p == NULL)
        return -1;
    put_u16(p, version);
    p[2] = (uint8_t)n;
    memcpy(p + 3, name, n);
    if (pn) {
        p[3 + n] = (uint8_t)pn;
        memcpy(p + 4 + n, producer, pn);
    }
    buf_commit(out, FRAME_HEADER_SIZE + len);
    return 0;
}

int frame_append_welcome(struct buf *out, uint64_t request_id, const struct frame_welcome *w)
{
    size_t n = strnlen(w->node_id, sizeof w->node_id);
    if (n < 1 || n > FRAME_NODE_ID_MAX ||
        !bytes_ok((const uint8_t *)w->node_id, n, node_id_byte_ok))
        return -1;
    size_t len = 2 + 8 + 4 + 4 + 1 + n;
    uint8_t *p = frame_start(out, FRAME_WELCOME, request_id, len);
    if (p == NULL)
        return -1;
    put_u16(p, w->version);
    put_u64(p + 2, w->session_id);
    put_u32(p + 10, w->max_payload);
    put_u32(p + 14, w->idle_timeout_ms);
    p[18] = (uint8_t)n;
    memcpy(p + 19, w->node_id, n);
    buf_commit(out, FRAME_HEADER_SIZE + len);
    return 0;
}

int frame_append_send(struct buf *out, uint64_t request_id, uint64_t message_id, const void *data,
                      size_t len)
{
    if (len > UINT32_MAX - 8)
        return -1;
    uint8_t *p = frame_start(out, FRAME_SEND, request_id, 8 + len);
    if (p == NULL)
        return -1;
    put_u64(p, message_id);
    if (len > 0)
        memcpy(p + 8, data, len);
    buf_commit(out, FRAME_HEADER_SIZE + 8 + len);
    return 0;
}

int frame_append_ack(struct buf *out, uint64_t request_id, uint64_t message_id,
                     const uint8_t sha256[FRAME_SHA256_LEN], uint64_t seq)
{
    uint8_t *p = frame_start(out, FRAME_ACK, request_id, FRAME_ACK_LEN);
    if (p == NULL)
        return -1;
    put_u64(p, message_id);
    memcpy(p + 8, sha256, FRAME_SHA256_LEN);
    put_u64(p + 8 + FRAME_SHA256_LEN, seq);
    buf_commit(out, FRAME_HEADER_SIZE + FRAME_ACK_LEN);
    return 0;
}

/* Longest prefix of s (at most max bytes) that does not split a UTF-8
 * sequence, so a truncated text stays valid UTF-8. */
static size_t utf8_prefix(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n <= max)
        return n;
    n = max;
    /* Back off over continuation bytes to the start of the cut sequence. */
    while (n > 0 && ((uint8_t)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

int frame_append_error(struct buf *out, uint64_t request_id, enum frame_error code,
                       const char *text)
{
    if (code <= FRAME_ERR_NONE || code >= FRAME_ERR_COUNT)
        return -1;
    if (text == NULL)
        text = frame_error_text(code);
    size_t n = utf8_prefix(text, 255);
    uint8_t *p = frame_start(out, FRAME_ERROR, request_id, 2 + n);
    if (p == NULL)
        return -1;
    put_u16(p, (uint16_t)code);
    memcpy(p + 2, text, n);
    buf_commit(out, FRAME_HEADER_SIZE + 2 + n);
    return 0;
}

int frame_parse_hello(const struct frame *f, struct frame_hello *out)
{
    const uint8_t *p = f->payload;
    uint32_t len = f->h.length;

    if (f->h.type != FRAME_HELLO || len < 3)
        return -1;
    size_t n = p[2];
    /* Requests are exact: a trailing byte means the sender and we disagree.
     * Version 2 may add u8 producer_len + producer after the name. */
    if (n < 1 || n > FRAME_NAME_MAX || len < 3 + n || !bytes_ok(p + 3, n, name_byte_ok) ||
        !utf8_name_valid(p + 3, n))
        return -1;
    out->version = get_u16(p);
    out->producer[0] = '\0';
    if (len > 3 + n) {
        size_t pn = p[3 + n];
        if (out->version < 2 || pn < 1 || pn > FRAME_PRODUCER_MAX || len != 4 + n + pn ||
            !bytes_ok(p + 4 + n, pn, node_id_byte_ok))
            return -1;
        memcpy(out->producer, p + 4 + n, pn);
        out->producer[pn] = '\0';
    }
    memcpy(out->name, p + 3, n);
    out->name[n] = '\0';
    return 0;
}

int frame_parse_welcome(const struct frame *f, struct frame_welcome *out)
{
    const uint8_t *p = f->payload;
    uint32_t len = f->h.length;

    if (f->h.type != FRAME_WELCOME || len < 19)
        return -1;
    size_t n = p[18];
    /* Bytes after the node id are ignored: later versions may extend WELCOME. */
    if (n < 1 || n > FRAME_NODE_ID_MAX || len < 19 + n || !bytes_ok(p + 19, n, node_id_byte_ok))
        return -1;
    out->version = get_u16(p);
    out->session_id = get_u64(p + 2);
    out->max_payload = get_u32(p + 10);
    out->idle_timeout_ms = get_u32(p + 14);
    memcpy(out->node_id, p + 19, n);
    out->node_id[n] = '\0';
    return 0;
}

int frame_parse_send(const struct frame *f, struct frame_send *out)
{
    if (f->h.type != FRAME_SEND || f->h.length < 8)
        return -1;
    out->message_id = get_u64(f->payload);
    out->data = f->payload + 8;
    out->len = f->h.length - 8;
    return 0;
}

int frame_parse_ack(const struct frame *f, struct frame_ack *out)
{
    /* Trailing bytes ignored: later versions may extend ACK. */
    if (f->h.type != FRAME_ACK || f->h.length < 8 + FRAME_SHA256_LEN)
        return -1;
    out->message_id = get_u64(f->payload);
    memcpy(out->sha256, f->payload + 8, FRAME_SHA256_LEN);
    /* A 40-byte ACK comes from a node that predates journaling. */
    out->seq = f->h.length >= FRAME_ACK_LEN ? get_u64(f->payload + 8 + FRAME_SHA256_LEN) : 0;
    return 0;
}

int frame_parse_error(const struct frame *f, struct frame_error_body *out)
{
    uint32_t len = f->h.length;

    if (f->h.type != FRAME_ERROR || len < 2 || len > 2 + 255)
        return -1;
    out->code = get_u16(f->payload);
    size_t n = len - 2;
    memcpy(out->text, f->payload + 2, n);
    out->text[n] = '\0';
    /* The text is for people; control bytes (or a NUL) from a peer must not
     * reach a terminal or a log line as such. */
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)out->text[i];
        if (c < 0x20 || c == 0x7F)
            out->text[i] = '?';
    }
    return 0;
}
