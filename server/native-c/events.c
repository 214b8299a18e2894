/*
 * events.c: the replies a request causes and the event record, what server/trace.py's Recorder.observe
 * gets for every lock request (the Python thread drains it, server/native_loop.py).  Mirrors
 * server/events.py (Send) and the observer call of server/loop.py's Channel._serve.
 */
#include "native.h"

/* -- replies and events ------------------------------------------------------------------------------ */
static void out_add(Out *o, int rank, int code, int64_t seq)
{
    GROW(o->r, o->n, o->cap);
    o->r[o->n].rank = rank;
    o->r[o->n].code = code;
    o->r[o->n].seq = seq;
    o->n++;
}

static void ev_put(Events *e, const void *p, size_t n)
{
    if (e->n + n > e->cap) {
        size_t cap = e->cap ? e->cap : 4096;
        while (e->n + n > cap)
            cap *= 2;
        e->buf = realloc(e->buf, cap);
        if (!e->buf)
            die("out of memory");
        e->cap = cap;
    }
    memcpy(e->buf + e->n, p, n);
    e->n += n;
}

typedef struct EventHead {
    double now;
    int32_t rank, op;
    int64_t seq;
    uint32_t nkeys, nreplies;
} EventHead;

/* What Recorder.observe gets: one request on its keys and the replies it caused. */
static void record(Core *c, double now, int rank, int op, int64_t seq, const KeyRef *keys, int nkeys,
                   const Reply *replies, int nreplies)
{
    if (!c->record)
        return;
    EventHead h = {now, rank, op, seq, (uint32_t)nkeys, (uint32_t)nreplies};
    ev_put(&c->ev, &h, sizeof h);
    for (int i = 0; i < nkeys; i++) {
        uint32_t len = (uint32_t)keys[i].len;
        ev_put(&c->ev, &len, sizeof len);
        ev_put(&c->ev, keys[i].data, keys[i].len);
    }
    for (int i = 0; i < nreplies; i++) {
        int32_t rc[2] = {replies[i].rank, replies[i].code};
        ev_put(&c->ev, rc, sizeof rc);
        ev_put(&c->ev, &replies[i].seq, sizeof(int64_t));
    }
    c->ev.count++;
}
