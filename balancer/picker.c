/* picker: choosing a node from the registry's rotation: power of two choices
 * on load, round-robin, or rendezvous hashing on a client key. */
#include "picker.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "hash.h"

/* Random draws of a non-excluded member before least-loaded gives up on
 * sampling and scans; only many exclusions in a small rotation get there. */
#define PICK_DRAW_TRIES 8

struct picker {
    enum picker_policy policy;
    uint64_t rng;     /* xorshift64* state, never 0 */
    size_t rr_cursor; /* round-robin: the rotation index to try next */
};

static const char *const policy_names[PICKER_POLICY_COUNT] = {
    [PICKER_LEAST_LOADED] = "least-loaded",
    [PICKER_ROUND_ROBIN] = "round-robin",
};

const char *picker_policy_name(enum picker_policy p)
{
    if ((unsigned)p >= PICKER_POLICY_COUNT)
        return "unknown";
    return policy_names[p];
}

int picker_policy_parse(const char *text, enum picker_policy *out)
{
    if (text == NULL)
        return -1;
    for (int p = 0; p < PICKER_POLICY_COUNT; p++) {
        if (strcmp(text, policy_names[p]) == 0) {
            *out = (enum picker_policy)p;
            return 0;
        }
    }
    return -1;
}


/* Picking is load spreading, not security: if getrandom is unavailable, the
 * clock and the process id are random enough. */
static uint64_t seed_from_system(void)
{
    uint64_t s = 0;
    for (;;) {
        ssize_t n = getrandom(&s, sizeof s, GRND_NONBLOCK);
        if (n == (ssize_t)sizeof s)
            return s;
        if (n < 0 && errno == EINTR)
            continue;
        break;
    }
    struct timespec ts = {0};
    (void)clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail for CLOCK_MONOTONIC */
    return (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 48);
}

struct picker *picker_new(enum picker_policy policy, uint64_t seed)
{
    struct picker *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->policy = policy;
    /* splitmix64 spreads small seeds (1, 2, 3) over the state; xorshift
     * must not start at 0. */
    p->rng = hash_mix64((seed != 0 ? seed : seed_from_system()) + 0x9e3779b97f4a7c15ULL);
    if (p->rng == 0)
        p->rng = 0x9e3779b97f4a7c15ULL;
    return p;
}

void picker_free(struct picker *p)
{
    free(p);
}

/* xorshift64* */
static uint64_t rng_next(struct picker *p)
{
    uint64_t x = p->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    p->rng = x;
    return x * 0x2545f4914f6cdd1dULL;
}

/* Uniform in [0, n) for n < 2^32 (a rotation never gets near that), by
 * multiply-shift instead of modulo, which would favour low indices. */
static size_t rng_below(struct picker *p, size_t n)
{
    return (size_t)(((rng_next(p) >> 32) * (uint64_t)n) >> 32);
}

static bool is_excluded(const struct registry_node *n, const char *const *exclude,
                        size_t nexclude)
{
    for (size_t i = 0; i < nexclude; i++)
        if (exclude[i] != NULL && strcmp(exclude[i], n->id) == 0)
            return true;
    return false;
}

/* True if a carries less load per unit of capacity than b. */
static bool lighter(const struct registry_node *a, const struct registry_node *b)
{
    uint64_t ca = a->capacity ? a->capacity : 1;
    uint64_t cb = b->capacity ? b->capacity : 1;
    return (uint64_t)a->sessions * cb < (uint64_t)b->sessions * ca;
}

/* Draws a random non-excluded member other than `not_idx`; SIZE_MAX when
 * the tries run out. */
static size_t draw_member(struct picker *p, const struct registry *r, size_t n, size_t not_idx,
                          const char *const *exclude, size_t nexclude)
{
    for (int t = 0; t < PICK_DRAW_TRIES; t++) {
        size_t i = rng_below(p, n);
        if (i != not_idx && !is_excluded(registry_rotation_at(r, i), exclude, nexclude))
            return i;
    }
    return SIZE_MAX;
}

static const struct registry_node *pick_least_loaded(struct picker *p, const struct registry *r,
                                                     size_t n, const char *const *exclude,
                                                     size_t nexclude)
{
    if (n >= 2) {
        size_t a = draw_member(p, r, n, SIZE_MAX, exclude, nexclude);
        size_t b = a == SIZE_MAX ? SIZE_MAX : draw_member(p, r, n, a, exclude, nexclude);
        if (b != SIZE_MAX) {
            const struct registry_node *na = registry_rotation_at(r, a);
            const struct registry_node *nb = registry_rotation_at(r, b);
            return lighter(nb, na) ? nb : na;
        }
    }
    /* Exclusions cover much of a small rotation (or it has one member):
     * scan the rest for the least loaded. */
    const struct registry_node *best = NULL;
    for (size_t i = 0; i < n; i++) {
        const struct registry_node *c = registry_rotation_at(r, i);
        if (!is_excluded(c, exclude, nexclude) && (best == NULL || lighter(c, best)))
            best = c;
    }
    return best;
}

static const struct registry_node *pick_round_robin(struct picker *p, const struct registry *r,
                                                    size_t n, const char *const *exclude,
                                                    size_t nexclude)
{
    /* The rotation may have shrunk since the last pick. */
    size_t start = p->rr_cursor < n ? p->rr_cursor : 0;
    for (size_t k = 0; k < n; k++) {
        size_t i = (start + k) % n;
        const struct registry_node *c = registry_rotation_at(r, i);
        if (!is_excluded(c, exclude, nexclude)) {
            p->rr_cursor = (i + 1) % n;
            return c;
        }
    }
    return NULL;
}


/* Highest random weight: every node scores hash(key, id) and the best wins,
 * so removing one node moves only the keys it held. The FNV state after the
 * key and a separator is shared by all nodes; the finaliser gives FNV's
 * weak high bits a full avalanche before scores are compared. */
static const struct registry_node *pick_rendezvous(const struct registry *r, size_t n,
                                                   const char *key, const char *const *exclude,
                                                   size_t nexclude)
{
    uint64_t key_state = hash_fnv1a_str(HASH_FNV_OFFSET, key);
    /* The key's terminating NUL goes in too: no key holds one, so (key, id)
     * pairs like ("ab", "c") and ("a", "bc") hash different streams. */
    key_state *= HASH_FNV_PRIME;

    const struct registry_node *best = NULL;
    uint64_t best_score = 0;
    for (size_t i = 0; i < n; i++) {
        const struct registry_node *c = registry_rotation_at(r, i);
        if (is_excluded(c, exclude, nexclude))
            continue;
        uint64_t score = hash_mix64(hash_fnv1a_str(key_state, c->id));
        /* ties (vanishingly rare) go to the smaller id, so the rotation's
         * order never decides */
        if (best == NULL || score > best_score ||
            (score == best_score && strcmp(c->id, best->id) < 0)) {
            best = c;
            best_score = score;
        }
    }
    return best;
}

const struct registry_node *picker_pick(struct picker *p, const struct registry *r, const char *key,
                                        const char *const *exclude, size_t nexclude)
{
    size_t n = registry_rotation_size(r);
    if (n == 0)
        return NULL;
    if (exclude == NULL)
        nexclude = 0;
    if (key != NULL)
        return pick_rendezvous(r, n, key, exclude, nexclude);
    if (p->policy == PICKER_ROUND_ROBIN)
        return pick_round_robin(p, r, n, exclude, nexclude);
    return pick_least_loaded(p, r, n, exclude, nexclude);
}
