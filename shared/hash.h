/* hash: the one non-cryptographic hash of berth's tables: FNV-1a over the
 * bytes, then the splitmix64 finaliser, so that similar keys ("n1", "n2")
 * spread over the low bits that pick a slot. Not for anything an attacker
 * must not steer: tables keyed by peer input add a random seed. */
#ifndef BERTH_HASH_H
#define BERTH_HASH_H

#include <stddef.h>
#include <stdint.h>

#define HASH_FNV_OFFSET 0xcbf29ce484222325ULL
#define HASH_FNV_PRIME 0x100000001b3ULL

/* splitmix64's finaliser: every input bit reaches every output bit. */
static inline uint64_t hash_mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* FNV-1a state h advanced over n bytes (no finaliser: to chain). */
static inline uint64_t hash_fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) {
        h ^= c[i];
        h *= HASH_FNV_PRIME;
    }
    return h;
}

/* ... over a NUL-terminated string (the NUL not included). */
static inline uint64_t hash_fnv1a_str(uint64_t h, const char *s)
{
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        h ^= *c;
        h *= HASH_FNV_PRIME;
    }
    return h;
}

static inline uint64_t hash_bytes(const void *p, size_t n)
{
    return hash_mix64(hash_fnv1a(HASH_FNV_OFFSET, p, n));
}

static inline uint64_t hash_str(const char *s)
{
    return hash_mix64(hash_fnv1a_str(HASH_FNV_OFFSET, s));
}

#endif
