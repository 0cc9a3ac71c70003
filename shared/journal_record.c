/* journal_record: build and parse a journal record. Every field read is
 * bounds-checked; every failure leaves through one malformed exit. */
#include "journal_record.h"

#include "be.h"
#include "crc32c.h"

/* Header layout (big-endian), 40 bytes:
 *   0 magic u32 | 4 length u32 (whole record) | 8 seq u64 | 16 message_id u64
 *  24 timestamp_ms u64 | 32 name_len u8 | 33 peer_len u8 | 34 cert_len u16
 *  36 ident_kind u16 | 38 producer_len u16 (0 in records from before it)
 * then name, peer, cert, producer, data, and the CRC32C of everything
 * before it. */

size_t journal_record_size(const struct journal_entry *e)
{
    if (e->name_len > 255 || e->peer_len > 255 || e->cert_len > 65535 ||
        e->producer_len > JOURNAL_PRODUCER_MAX || e->len > JOURNAL_RECORD_MAX)
        return 0;
    size_t n = JOURNAL_HEADER_SIZE + e->name_len + e->peer_len + e->cert_len +
               e->producer_len + e->len + JOURNAL_TRAILER_SIZE;
    return n > JOURNAL_RECORD_MAX ? 0 : n;
}

uint32_t journal_record_header(uint8_t h[JOURNAL_HEADER_SIZE], uint64_t seq, uint64_t ts,
                               const struct journal_entry *e)
{
    be_put32(h, JOURNAL_MAGIC);
    be_put32(h + 4, (uint32_t)journal_record_size(e));
    be_put64(h + 8, seq);
    be_put64(h + 16, e->message_id);
    be_put64(h + 24, ts);
    h[32] = (uint8_t)e->name_len;
    h[33] = (uint8_t)e->peer_len;
    be_put16(h + 34, (uint16_t)e->cert_len);
    be_put16(h + 36, e->cert_len ? JOURNAL_IDENT_CERT : JOURNAL_IDENT_HELLO_PEER);
    be_put16(h + 38, (uint16_t)e->producer_len);
    uint32_t crc = crc32c(0, h, JOURNAL_HEADER_SIZE);
    crc = crc32c(crc, e->name, e->name_len);
    crc = crc32c(crc, e->peer, e->peer_len);
    crc = crc32c(crc, e->cert, e->cert_len);
    crc = crc32c(crc, e->producer, e->producer_len);
    return crc32c(crc, e->data, e->len);
}

int journal_record_length(const uint8_t *p, size_t n, uint32_t *len)
{
    if (n < 8)
        return 0;
    uint32_t rl = be_get32(p + 4);
    if (be_get32(p) != JOURNAL_MAGIC || rl < JOURNAL_HEADER_SIZE + JOURNAL_TRAILER_SIZE ||
        rl > JOURNAL_RECORD_MAX)
        return -1;
    *len = rl;
    return 1;
}

long journal_record_parse(const uint8_t *p, size_t len, struct journal_record *out)
{
    uint32_t rl;
    int h = journal_record_length(p, len, &rl);
    if (h <= 0)
        return h;
    if (len < rl)
        return 0;
    size_t nl = p[32], pl = p[33], cl = be_get16(p + 34), prl = be_get16(p + 38);
    uint16_t kind = be_get16(p + 36);
    if (prl > JOURNAL_PRODUCER_MAX)
        goto malformed;
    if (nl + pl + cl + prl + JOURNAL_HEADER_SIZE + JOURNAL_TRAILER_SIZE > rl)
        goto malformed;
    /* The kind says what cert holds: nothing, or a digest and an identity. */
    if (kind == JOURNAL_IDENT_HELLO_PEER ? cl != 0
                                          : kind != JOURNAL_IDENT_CERT || cl < JOURNAL_CERT_SHA256_LEN)
        goto malformed;
    if (crc32c(0, p, rl - JOURNAL_TRAILER_SIZE) != be_get32(p + rl - JOURNAL_TRAILER_SIZE))
        goto malformed;
    out->seq = be_get64(p + 8);
    out->message_id = be_get64(p + 16);
    out->timestamp_ms = be_get64(p + 24);
    out->name_len = (uint8_t)nl;
    out->peer_len = (uint8_t)pl;
    out->cert_len = (uint16_t)cl;
    out->ident_kind = kind;
    out->name = (const char *)p + JOURNAL_HEADER_SIZE;
    out->peer = out->name + nl;
    out->cert = (const uint8_t *)out->peer + pl;
    out->producer = (const char *)out->cert + cl;
    out->producer_len = (uint8_t)prl;
    out->data = (const uint8_t *)out->producer + prl;
    out->len = (uint32_t)(rl - JOURNAL_HEADER_SIZE - JOURNAL_TRAILER_SIZE - nl - pl - cl - prl);
    return (long)rl;
malformed:
    return -1;
}
