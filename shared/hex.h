/* hex: the one lower-case hex encoder (digests in logs, JSON, headers and
 * the ACK line; random ids). */
#ifndef BERTH_HEX_H
#define BERTH_HEX_H

#include <stddef.h>
#include <stdint.h>

/* Writes 2 * n hex digits and a NUL to out (room for 2 * n + 1). */
static inline void hex_encode(char *out, const uint8_t *p, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

#endif
