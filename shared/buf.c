/* buf: growable byte buffer with consume-from-front. Consumed bytes are
 * reclaimed lazily: by moving the content down when that makes room, or by
 * resetting both offsets when everything has been consumed. */
#include "buf.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BUF_MIN_CAP 256

void buf_init(struct buf *b)
{
    b->data = NULL;
    b->off = 0;
    b->len = 0;
    b->cap = 0;
}

void buf_release(struct buf *b)
{
    free(b->data);
    buf_init(b);
}

int buf_reserve(struct buf *b, size_t n)
{
    if (b->cap - b->len >= n)
        return 0;

    size_t size = buf_size(b);
    if (n > SIZE_MAX - size)
        return -1;
    size_t need = size + n;

    /* Moving the content to the front is enough when the consumed prefix
     * covers the shortfall; it keeps a long-lived socket buffer from growing
     * just because it is read and written in turns. */
    if (need <= b->cap) {
        memmove(b->data, b->data + b->off, size);
        b->off = 0;
        b->len = size;
        return 0;
    }

    size_t cap = b->cap < BUF_MIN_CAP ? BUF_MIN_CAP : b->cap;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    /* A fresh block rather than realloc: only the live bytes are copied,
     * and the consumed prefix is dropped in the same move. */
    uint8_t *data = malloc(cap);
    if (data == NULL)
        return -1;
    if (size > 0)
        memcpy(data, b->data + b->off, size);
    free(b->data);
    b->data = data;
    b->off = 0;
    b->len = size;
    b->cap = cap;
    return 0;
}

void buf_commit(struct buf *b, size_t n)
{
    assert(n <= b->cap - b->len);
    b->len += n;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (buf_reserve(b, n) != 0)
        return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void buf_consume(struct buf *b, size_t n)
{
    assert(n <= buf_size(b));
    b->off += n;
    /* Empty again: start over at the front so the next append needs no move. */
    if (b->off == b->len) {
        b->off = 0;
        b->len = 0;
    }
}

void buf_clear(struct buf *b)
{
    b->off = 0;
    b->len = 0;
}
