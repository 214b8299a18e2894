/*
 * holders.c: the holders of a core, one per thread of a rank, numbered densely as first seen.  Mirrors
 * server/holders.py (Holders) and LockCore._new_holder of server/core.py.
 */
#include "native.h"

/* -- holders (holders.py) ---------------------------------------------------------------------------- */
/* The id of thread `slot` of `rank`, -1 if never seen. */
static int holder_find(Core *c, int rank, int64_t slot)
{
    if (!slot)
        return rank;
    if (!c->hcap)
        return -1;
    int64_t key = (int64_t)rank | slot << SLOT_SHIFT;
    size_t mask = c->hcap - 1;
    for (size_t i = mix64((uint64_t)key) & mask;; i = (i + 1) & mask) {
        if (c->hvals[i] < 0)
            return -1;
        if (c->hkeys[i] == key)
            return c->hvals[i];
    }
}

static void holder_map_put(Core *c, int64_t key, int h)
{
    if (2 * (c->hcount + 1) > c->hcap) {
        size_t cap = c->hcap ? 2 * c->hcap : 16;
        int64_t *keys = xmalloc(cap * sizeof(int64_t));
        int *vals = xmalloc(cap * sizeof(int));
        for (size_t i = 0; i < cap; i++)
            vals[i] = -1;
        for (size_t j = 0; j < c->hcap; j++)
            if (c->hvals[j] >= 0) {
                size_t i = mix64((uint64_t)c->hkeys[j]) & (cap - 1);
                while (vals[i] >= 0)
                    i = (i + 1) & (cap - 1);
                keys[i] = c->hkeys[j];
                vals[i] = c->hvals[j];
            }
        free(c->hkeys);
        free(c->hvals);
        c->hkeys = keys;
        c->hvals = vals;
        c->hcap = cap;
    }
    size_t i = mix64((uint64_t)key) & (c->hcap - 1);
    while (c->hvals[i] >= 0)
        i = (i + 1) & (c->hcap - 1);
    c->hkeys[i] = key;
    c->hvals[i] = h;
    c->hcount++;
}

/* LockCore._new_holder: number thread `slot` (> 0) of `rank`, grow the per-holder state, join the graph. */
static int holder_add(Core *c, int rank, int64_t slot)
{
    int h = c->nh;
    if (h >= c->caph) {
        int cap = 2 * c->caph;
        c->hrank = realloc(c->hrank, (size_t)cap * sizeof(int));
        c->hslot = realloc(c->hslot, (size_t)cap * sizeof(int));
        c->waiting = realloc(c->waiting, (size_t)cap * sizeof(Request *));
        c->held = realloc(c->held, (size_t)cap * sizeof(int64_t));
        c->nodes = realloc(c->nodes, (size_t)cap * sizeof(Node *));
        if (!c->hrank || !c->hslot || !c->waiting || !c->held || !c->nodes)
            die("out of memory");
        c->caph = cap;
    }
    c->hrank[h] = rank;
    c->hslot[h] = (int)slot;
    c->waiting[h] = NULL;
    c->held[h] = 0;
    c->nh++;
    holder_map_put(c, (int64_t)rank | slot << SLOT_SHIFT, h);
    c->nodes[h] = graph_add(c->graph, -1 - (int64_t)h, (int64_t)c->uid, c, h);
    return h;
}

/* The holder that sent `seq`, numbered if new; -1 if seq names no thread. */
static int holder_of(Core *c, int rank, int64_t seq)
{
    if (seq < 0)
        return -1;
    int64_t slot = seq >> SLOT_SHIFT;
    int h = holder_find(c, rank, slot);
    return h >= 0 ? h : holder_add(c, rank, slot);
}
