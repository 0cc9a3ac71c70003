/* retry: backoff arithmetic and the just-failed node list. */
#include "retry.h"

#include <stdio.h>
#include <string.h>

long retry_delay_ms(unsigned attempt, long base_ms, long max_ms, uint32_t rnd)
{
    if (base_ms <= 0)
        return 0;
    if (max_ms < base_ms)
        max_ms = base_ms;
    long cap = base_ms;
    for (unsigned i = 0; i < attempt && cap < max_ms; i++)
        cap = cap > max_ms / 2 ? max_ms : cap * 2;
    if (cap > max_ms)
        cap = max_ms;
    long half = cap / 2;
    return half + (long)(rnd % (uint32_t)(cap - half + 1));
}

void retry_exclude_init(struct retry_exclude *x)
{
    memset(x, 0, sizeof(*x));
}

void retry_exclude_add(struct retry_exclude *x, const char *id, uint64_t now_ms, long for_ms)
{
    if (!id || !*id || strlen(id) > RETRY_ID_MAX)
        return;
    uint64_t until = now_ms + (uint64_t)(for_ms > 0 ? for_ms : 0);
    for (size_t i = 0; i < x->n; i++)
        if (strcmp(x->e[i].id, id) == 0) {
            if (until > x->e[i].until_ms)
                x->e[i].until_ms = until;
            return;
        }
    size_t slot = x->n;
    if (x->n == RETRY_EXCLUDE_MAX) {
        slot = 0;
        for (size_t i = 1; i < x->n; i++)
            if (x->e[i].until_ms < x->e[slot].until_ms)
                slot = i;
    } else {
        x->n++;
    }
    snprintf(x->e[slot].id, sizeof(x->e[slot].id), "%s", id);
    x->e[slot].until_ms = until;
}

bool retry_excluded(const struct retry_exclude *x, const char *id, uint64_t now_ms)
{
    for (size_t i = 0; i < x->n; i++)
        if (now_ms < x->e[i].until_ms && strcmp(x->e[i].id, id) == 0)
            return true;
    return false;
}

size_t retry_exclude_list(struct retry_exclude *x, uint64_t now_ms, const char **out, size_t max)
{
    size_t keep = 0;
    for (size_t i = 0; i < x->n; i++)
        if (now_ms < x->e[i].until_ms)
            x->e[keep++] = x->e[i];
    x->n = keep;
    size_t k = 0;
    for (size_t i = 0; i < x->n && k < max; i++)
        out[k++] = x->e[i].id;
    return k;
}
