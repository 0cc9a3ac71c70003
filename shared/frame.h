/* frame: the node protocol's wire codec (docs/PROTOCOL.md): the 16-byte
 * header, every message body, and the error-code table. No I/O here. */
#ifndef BERTH_FRAME_H
#define BERTH_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define FRAME_HEADER_SIZE 16
#define FRAME_VERSION 1        /* the header version of every frame */
#define FRAME_PROTOCOL_MAX 2   /* the highest HELLO/WELCOME version: 2 adds the producer id */
#define FRAME_PRODUCER_MAX 64  /* producer ids follow the node-id rule, [A-Za-z0-9._-]{1,64} */
#define FRAME_DEFAULT_MAX_PAYLOAD (1u << 20)
#define FRAME_NAME_MAX 64    /* HELLO client name, bytes */
#define FRAME_NODE_ID_MAX 64 /* WELCOME node id, bytes */
#define FRAME_SHA256_LEN 32
#define FRAME_ACK_LEN (8 + FRAME_SHA256_LEN + 8) /* message_id, sha256, seq */

/* Requests have the high bit clear; a reply is its request's type | 0x80. */
enum frame_type {
    FRAME_HELLO = 0x01,
    FRAME_PING = 0x02,
    FRAME_ECHO = 0x03,
    FRAME_SEND = 0x04,
    FRAME_INFO = 0x05,
    FRAME_BYE = 0x06, /* either direction */
    FRAME_WELCOME = 0x81,
    FRAME_PONG = 0x82,
    FRAME_ECHO_REPLY = 0x83,
    FRAME_ACK = 0x84,
    FRAME_INFO_REPLY = 0x85,
    FRAME_ERROR = 0xFF,
};

/* Codes carried in ERROR frames; also the decoder's failure reasons. */
enum frame_error {
    FRAME_ERR_NONE = 0,
    FRAME_ERR_MALFORMED = 1,        /* body or header field does not parse */
    FRAME_ERR_UNKNOWN_TYPE = 2,     /* type byte not in enum frame_type */
    FRAME_ERR_BAD_VERSION = 3,      /* header version is not FRAME_VERSION */
    FRAME_ERR_NOT_READY = 4,        /* request before HELLO */
    FRAME_ERR_TOO_LARGE = 5,        /* length above the session's limit */
    FRAME_ERR_UNEXPECTED = 6,       /* valid type, wrong place (2nd HELLO, a reply sent to the node) */
    FRAME_ERR_SHUTTING_DOWN = 7,    /* node is draining */
    FRAME_ERR_TOO_MANY_IN_FLIGHT = 8, /* client does not read its replies */
    FRAME_ERR_TIMEOUT = 9,          /* idle or handshake timeout */
    FRAME_ERR_INTERNAL = 10,        /* node-side failure (out of memory) */
    FRAME_ERR_UNAVAILABLE = 11,     /* the node cannot store durably now (--ack-after
                                     * replicated and JetStream cannot take it): send elsewhere */
    FRAME_ERR_COUNT
};

/* Stable lower-case identifier ("malformed"); "unknown" out of range. */
const char *frame_error_name(enum frame_error e);
/* One-line English description for ERROR texts and logs. */
const char *frame_error_text(enum frame_error e);
/* "HELLO", "ACK", ...; NULL for a type that is not in enum frame_type. */
const char *frame_type_name(uint8_t type);
/* True for the reply types (WELCOME..INFO_REPLY, ERROR): a known type with
 * the high bit set. BYE goes both ways and counts as a request. */
bool frame_type_is_reply(uint8_t type);

struct frame_header {
    uint32_t length; /* payload bytes after the header */
    uint8_t version;
    uint8_t type;
    uint16_t flags; /* must be 0 in version 1 */
    uint64_t request_id;
};

/* A decoded frame; payload borrows from the buffer given to frame_decode. */
struct frame {
    struct frame_header h;
    const uint8_t *payload;
};

/* Decodes one frame from the front of buf[0..len).
 * Returns the bytes the frame occupies (> 0), 0 if more input is needed, or
 * -1 with *err set. The header is checked as soon as its 16 bytes are there:
 * version, flags, type and length > max_payload fail before the payload
 * arrives, so a caller never buffers an oversized frame. On -1, out->h holds
 * whatever header fields were decoded (request_id for the ERROR reply). */
long frame_decode(const uint8_t *buf, size_t len, uint32_t max_payload, struct frame *out,
                  enum frame_error *err);

/* Appenders: each writes one complete frame (header + body) at the end of
 * out. Return 0, or -1 on out of memory or a field beyond its limit. */
int frame_append(struct buf *out, uint8_t type, uint64_t request_id, const void *payload,
                 size_t len);
int frame_append_hello(struct buf *out, uint64_t request_id, uint16_t version, const char *name);
/* HELLO with a producer id (version >= 2 only; NULL or "": none, as above). */
int frame_append_hello_producer(struct buf *out, uint64_t request_id, uint16_t version,
                                const char *name, const char *producer);
int frame_append_send(struct buf *out, uint64_t request_id, uint64_t message_id, const void *data,
                      size_t len);
int frame_append_ack(struct buf *out, uint64_t request_id, uint64_t message_id,
                     const uint8_t sha256[FRAME_SHA256_LEN], uint64_t seq);
/* text may be NULL (then frame_error_text(code) is used). */
int frame_append_error(struct buf *out, uint64_t request_id, enum frame_error code,
                       const char *text);

struct frame_hello {
    uint16_t version;
    char name[FRAME_NAME_MAX + 1]; /* NUL-terminated, printable ASCII/UTF-8 */
    char producer[FRAME_PRODUCER_MAX + 1]; /* version >= 2: the client's producer id; "" none */
};
struct frame_welcome {
    uint16_t version;
    uint64_t session_id;
    uint32_t max_payload;
    uint32_t idle_timeout_ms;
    char node_id[FRAME_NODE_ID_MAX + 1];
};
struct frame_send {
    uint64_t message_id;
    const uint8_t *data; /* borrowed from the frame */
    size_t len;
};
struct frame_ack {
    uint64_t message_id;
    uint8_t sha256[FRAME_SHA256_LEN];
    uint64_t seq; /* the node's journal sequence number; 0: not journaled
                   * (journaling off, or a node that predates it) */
};
struct frame_error_body {
    uint16_t code;
    char text[256]; /* truncated, NUL-terminated */
};

int frame_append_welcome(struct buf *out, uint64_t request_id, const struct frame_welcome *w);

/* Body parsers: 0, or -1 when the payload is malformed for that type. */
int frame_parse_hello(const struct frame *f, struct frame_hello *out);
int frame_parse_welcome(const struct frame *f, struct frame_welcome *out);
int frame_parse_send(const struct frame *f, struct frame_send *out);
int frame_parse_ack(const struct frame *f, struct frame_ack *out);
int frame_parse_error(const struct frame *f, struct frame_error_body *out);

#endif
