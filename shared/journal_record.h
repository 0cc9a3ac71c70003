/* journal_record: the one codec of a journal record (docs/DESIGN.md,
 * "Journal"): the node writes and recovers it, the feed sends it as it is
 * on disk, berth tail checks and prints it. */
#ifndef BERTH_JOURNAL_RECORD_H
#define BERTH_JOURNAL_RECORD_H

#include <stddef.h>
#include <stdint.h>

#define JOURNAL_MAGIC 0x424A5231u    /* "BJR1" */
#define JOURNAL_HEADER_SIZE 40
#define JOURNAL_TRAILER_SIZE 4       /* CRC32C */
#define JOURNAL_RECORD_MAX (JOURNAL_HEADER_SIZE + 255 + 255 + 65535 + (256u << 20) + 4)
#define JOURNAL_IDENT_HELLO_PEER 0   /* identity: HELLO name + peer address */
#define JOURNAL_IDENT_CERT 1         /* ... and a client certificate (mTLS): cert holds
                                      * its SHA-256 (32 bytes), then its identity text */
#define JOURNAL_CERT_SHA256_LEN 32
#define JOURNAL_PRODUCER_MAX 64      /* the client's producer id, node-id charset */

/* What a SEND gives the journal. Strings need not be NUL-terminated. */
struct journal_entry {
    uint64_t message_id;
    const char *name;   /* HELLO name */
    size_t name_len;    /* <= 255 */
    const char *peer;   /* "ip:port" */
    size_t peer_len;    /* <= 255 */
    const uint8_t *cert; /* JOURNAL_IDENT_CERT identity; NULL/0: no client certificate */
    size_t cert_len;    /* <= 65535 */
    const char *producer; /* the client's producer id from HELLO; NULL/0: none */
    size_t producer_len;  /* <= JOURNAL_PRODUCER_MAX */
    const void *data;
    size_t len;
};

/* A decoded record; pointers borrow from the bytes parsed. */
struct journal_record {
    uint64_t seq;
    uint64_t message_id;
    uint64_t timestamp_ms;   /* Unix ms when the node stored it */
    uint16_t ident_kind;     /* JOURNAL_IDENT_* */
    const char *name;
    uint8_t name_len;
    const char *peer;
    uint8_t peer_len;
    const uint8_t *cert;     /* JOURNAL_IDENT_CERT: SHA-256 then identity text; else empty */
    uint16_t cert_len;
    const char *producer;    /* "" when the client gave none */
    uint8_t producer_len;
    const uint8_t *data;
    uint32_t len;
};

/* The encoded size of an entry, or 0 when a field is over its limit. */
size_t journal_record_size(const struct journal_entry *e);

/* Writes the header of e as record seq, stored at ts (Unix ms), into h;
 * returns the CRC32C that ends the record: the header, then name, peer,
 * cert and data in that order, are what it covers. e must fit
 * (journal_record_size != 0). */
uint32_t journal_record_header(uint8_t h[JOURNAL_HEADER_SIZE], uint64_t seq, uint64_t ts,
                               const struct journal_entry *e);

/* From the first 8 bytes of a record: 1 with the whole record's length in
 * *len, 0 when fewer than 8 bytes are given, -1 when they cannot start a
 * record (magic, a length out of bounds). */
int journal_record_length(const uint8_t *p, size_t n, uint32_t *len);

/* Checks magic, lengths, identity kind and the CRC of the record at the
 * front of p; returns its size, 0 when more bytes are needed, -1 when it
 * is not a valid record. */
long journal_record_parse(const uint8_t *p, size_t len, struct journal_record *out);

#endif
