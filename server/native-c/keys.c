/*
 * keys.c: the key table of a core (a hash table in insertion order, as a Python dict iterates) and the
 * state of one key.  Mirrors server/keys.py (encoded keys, b"" the default lock) and server/locks.py
 * (KeyState: holders, queues, the writer-priority bookkeeping).
 */
#include "native.h"

/* -- keys ---------------------------------------------------------------------------------------- */
static uint64_t hash_key(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

static KeyState *table_get(Core *c, const uint8_t *p, size_t n, uint64_t h)
{
    for (KeyState *s = c->buckets[h & (c->nbuckets - 1)]; s; s = s->hnext)
        if (s->hash == h && s->len == n && (n == 0 || memcmp(s->key, p, n) == 0))
            return s;
    return NULL;
}

static void table_rehash(Core *c)
{
    size_t nb = c->nbuckets * 2;
    KeyState **b = calloc(nb, sizeof(*b));
    if (!b)
        die("out of memory");
    for (KeyState *s = c->first; s; s = s->next) {
        s->hnext = b[s->hash & (nb - 1)];
        b[s->hash & (nb - 1)] = s;
    }
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = nb;
}

static KeyState *state_new(Core *c, const uint8_t *p, size_t n, int64_t limit)
{
    KeyState *s = calloc(1, sizeof(*s));
    if (!s)
        die("out of memory");
    s->key = xmalloc(n);
    if (n)
        memcpy(s->key, p, n);
    s->len = n;
    s->hash = hash_key(p, n);
    s->limit = limit;
    s->writer = -1;
    /* table[key] = state: appended to the insertion order */
    if (c->count + 1 > c->nbuckets)
        table_rehash(c);
    s->hnext = c->buckets[s->hash & (c->nbuckets - 1)];
    c->buckets[s->hash & (c->nbuckets - 1)] = s;
    s->prev = c->last;
    if (c->last)
        c->last->next = s;
    else
        c->first = s;
    c->last = s;
    c->count++;
    return s;
}

static void state_free(KeyState *s)
{
    free(s->key);
    free(s->rranks);
    free(s->rholds);
    free(s->writers);
    free(s->wreaders);
    free(s);
}

static void table_del(Core *c, KeyState *s)
{
    KeyState **at = &c->buckets[s->hash & (c->nbuckets - 1)];
    while (*at != s)
        at = &(*at)->hnext;
    *at = s->hnext;
    if (s->prev)
        s->prev->next = s->next;
    else
        c->first = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        c->last = s->prev;
    c->count--;
    state_free(s);
}

/* -- KeyState (locks.py) --------------------------------------------------------------------------- */
static int state_idle(KeyState *s)
{
    return s->writer < 0 && !s->nreaders && !s->nwriters && !s->nwreaders;
}

static int reader_index(KeyState *s, int rank)
{
    for (int i = 0; i < s->nreaders; i++)
        if (s->rranks[i] == rank)
            return i;
    return -1;
}

static int state_holds(KeyState *s, int rank)
{
    return s->writer == rank || reader_index(s, rank) >= 0;
}

static int free_for(KeyState *s, int mode)
{
    if (mode == M_READ)
        return s->writer < 0;
    if (mode == M_WRITE)
        return s->writer < 0 && !s->nreaders;
    return s->nreaders < s->limit;
}

static void readers_add(KeyState *s, int rank, Hold h)
{
    if (s->nreaders >= s->capr) {
        int cap = s->capr ? 2 * s->capr : 4;
        s->rranks = realloc(s->rranks, (size_t)cap * sizeof(int));
        s->rholds = realloc(s->rholds, (size_t)cap * sizeof(Hold));
        if (!s->rranks || !s->rholds)
            die("out of memory");
        s->capr = cap;
    }
    s->rranks[s->nreaders] = rank;
    s->rholds[s->nreaders] = h;
    s->nreaders++;
}

/* readers.pop(rank): 1 and the hold if it was there */
static int readers_pop(KeyState *s, int rank, Hold *out)
{
    int i = reader_index(s, rank);
    if (i < 0)
        return 0;
    if (out)
        *out = s->rholds[i];
    memmove(s->rranks + i, s->rranks + i + 1, (size_t)(s->nreaders - i - 1) * sizeof(int));
    memmove(s->rholds + i, s->rholds + i + 1, (size_t)(s->nreaders - i - 1) * sizeof(Hold));
    s->nreaders--;
    return 1;
}

static int ahead_of_writers(KeyState *s, Request *r)
{
    return !s->nwriters || r->priority < s->writers[0]->priority;
}

static void state_queue(KeyState *s, Request *r)
{
    if (r->mode == M_READ) {
        GROW(s->wreaders, s->nwreaders, s->capwr);
        s->wreaders[s->nwreaders++] = r;
        if (r->priority < INFINITY)
            s->early++;
        return;
    }
    GROW(s->writers, s->nwriters, s->capw);
    if (!s->nwriters || s->writers[s->nwriters - 1]->priority < r->priority) {
        s->writers[s->nwriters++] = r;
        return;
    }
    int at = 0;
    while (at < s->nwriters && !(s->writers[at]->priority > r->priority))
        at++;
    memmove(s->writers + at + 1, s->writers + at, (size_t)(s->nwriters - at) * sizeof(Request *));
    s->writers[at] = r;
    s->nwriters++;
}

static void remove_ptr(Request **list, int *n, Request *r)
{
    for (int i = 0; i < *n; i++)
        if (list[i] == r) {
            memmove(list + i, list + i + 1, (size_t)(*n - i - 1) * sizeof(Request *));
            (*n)--;
            return;
        }
    die("internal error: a request missing from a queue");
}

static void state_unqueue(KeyState *s, Request *r, int readers_too)
{
    if (r->mode != M_READ) {
        remove_ptr(s->writers, &s->nwriters, r);
        return;
    }
    if (readers_too)
        remove_ptr(s->wreaders, &s->nwreaders, r);
    if (r->priority < INFINITY)
        s->early--;
}

static Request *state_ahead(KeyState *s, Request *r)
{
    if (r->mode == M_READ) {
        Request *last = NULL;
        for (int i = 0; i < s->nwriters; i++) {
            if (s->writers[i]->priority > r->priority)
                break;
            last = s->writers[i];
        }
        return last;
    }
    for (int i = 0; i < s->nwriters; i++)
        if (s->writers[i] == r)
            return i ? s->writers[i - 1] : NULL;
    die("internal error: a request missing from its queue");
    return NULL;
}
