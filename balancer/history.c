/* history: per-node rings of HISTORY_SAMPLES load samples, kept in an
 * array sorted by id and merged with the registry at every sample. */
#include "history.h"

#include <stdlib.h>
#include <string.h>

struct hnode {
    char id[HB_NODE_ID_MAX + 1];
    uint32_t capacity;                            /* at the latest sample */
    uint32_t head;                                /* slot of the next sample */
    uint32_t count;                               /* filled slots */
    struct history_sample ring[HISTORY_SAMPLES];  /* the fixed-size ring */
};

struct history {
    uint32_t period_ms;
    uint64_t taken;
    struct hnode **nodes; /* sorted by id */
    size_t n;
};

struct history *history_new(uint32_t period_ms)
{
    struct history *h = calloc(1, sizeof *h);
    if (h)
        h->period_ms = period_ms;
    return h;
}

void history_free(struct history *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->n; i++)
        free(h->nodes[i]);
    free(h->nodes);
    free(h);
}

uint32_t history_period_ms(const struct history *h)
{
    return h->period_ms;
}

uint64_t history_taken(const struct history *h)
{
    return h->taken;
}

static int node_cmp(const void *x, const void *y)
{
    const struct registry_node *const *a = x;
    const struct registry_node *const *b = y;
    return strcmp((*a)->id, (*b)->id);
}

static void push(struct hnode *hn, const struct registry_node *n)
{
    struct history_sample *s = &hn->ring[hn->head];
    s->sessions = n->sessions;
    s->msgs_per_sec = (float)n->msgs_per_sec;
    s->state = (uint8_t)n->state;
    hn->capacity = n->capacity;
    hn->head = (hn->head + 1) % HISTORY_SAMPLES;
    if (hn->count < HISTORY_SAMPLES)
        hn->count++;
}

int history_sample(struct history *h, const struct registry *reg)
{
    size_t nreg = registry_size(reg);
    const struct registry_node **cur = NULL;
    struct hnode **next = NULL;
    if (nreg > 0) {
        cur = calloc(nreg, sizeof *cur);
        next = calloc(nreg, sizeof *next);
        if (!cur || !next) {
            free(cur);
            free(next);
            return -1; /* this sample is skipped; the history stays as it was */
        }
        for (size_t i = 0; i < nreg; i++)
            cur[i] = registry_at(reg, i);
        qsort(cur, nreg, sizeof *cur, node_cmp);
    }

    /* Merge two id-sorted lists: kept rings move over, forgotten ones are
     * freed, new nodes get a fresh ring. */
    int rc = 0;
    size_t i = 0, j = 0, k = 0;
    while (j < nreg) {
        int c = i < h->n ? strcmp(h->nodes[i]->id, cur[j]->id) : 1;
        if (c < 0) {
            free(h->nodes[i++]);
            continue;
        }
        struct hnode *hn;
        if (c == 0) {
            hn = h->nodes[i++];
        } else {
            hn = calloc(1, sizeof *hn);
            if (!hn) {
                rc = -1;
                j++;
                continue;
            }
            memcpy(hn->id, cur[j]->id, sizeof hn->id);
        }
        push(hn, cur[j++]);
        next[k++] = hn;
    }
    while (i < h->n)
        free(h->nodes[i++]);
    free(h->nodes);
    free(cur);
    h->nodes = next;
    h->n = k;
    h->taken++;
    return rc;
}

size_t history_size(const struct history *h)
{
    return h->n;
}

const char *history_node_id(const struct history *h, size_t i)
{
    return i < h->n ? h->nodes[i]->id : NULL;
}

uint32_t history_node_capacity(const struct history *h, size_t i)
{
    return i < h->n ? h->nodes[i]->capacity : 0;
}

size_t history_node_samples(const struct history *h, size_t i, struct history_sample *out)
{
    if (i >= h->n)
        return 0;
    const struct hnode *hn = h->nodes[i];
    size_t start = (hn->head + HISTORY_SAMPLES - hn->count) % HISTORY_SAMPLES;
    for (size_t k = 0; k < hn->count; k++)
        out[k] = hn->ring[(start + k) % HISTORY_SAMPLES];
    return hn->count;
}
