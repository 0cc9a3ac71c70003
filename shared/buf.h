/* buf: a growable byte buffer with a cheap consume-from-front, used for
 * socket input/output and for encoding frames. */
#ifndef BERTH_BUF_H
#define BERTH_BUF_H

#include <stddef.h>
#include <stdint.h>

/* A value type, embedded in its owner. Bytes [off, len) are the content. */
struct buf {
    uint8_t *data; /* heap storage, NULL until the first append */
    size_t off;    /* first unconsumed byte */
    size_t len;    /* end of content */
    size_t cap;    /* allocated size of data */
};

void buf_init(struct buf *b);
/* Frees the storage; the buf may be reused after buf_init. */
void buf_release(struct buf *b);

/* NULL for a buf with no storage (never used, or released when empty):
 * NULL + 0 is undefined behaviour in C. */
static inline const uint8_t *buf_head(const struct buf *b)
{
    return b->data ? b->data + b->off : NULL;
}
static inline size_t buf_size(const struct buf *b) { return b->len - b->off; }

/* Makes room for n more bytes at buf_tail(); 0 or -1 (out of memory). */
int buf_reserve(struct buf *b, size_t n);
static inline uint8_t *buf_tail(struct buf *b) { return b->data + b->len; }
/* Marks n bytes written at buf_tail() as content. */
void buf_commit(struct buf *b, size_t n);
/* 0 or -1 (out of memory). */
int buf_append(struct buf *b, const void *p, size_t n);
/* Drops n bytes from the front (n <= buf_size). */
void buf_consume(struct buf *b, size_t n);
void buf_clear(struct buf *b);

#endif
