/*
 * mpilock.server._native: the lock rules of server/core.py and server/deadlock.py in C, and a
 * service loop thread that answers lock requests without the GIL.
 *
 * The Python LockCore is the reference: every function below mirrors one of core.py, locks.py
 * or deadlock.py, in the same order of checks, mutations, iterations and replies, so that
 * tests/test_native_core.py can require identical replies and state after every request.
 * Where Python iterates a dict, C keeps the same insertion order (keys of a core, readers of
 * a key, nodes of the wait graph).
 *
 * Threads.  One mutex (g_lock) guards every core, the wait graph, every channel and the event
 * buffers.  The service thread (native_thread) polls the channels under it; a master's
 * application thread may poll its own channel (help) with a trylock; Python calls take it with
 * the GIL released.  Nobody waits for the GIL while holding g_lock, and the service thread never
 * takes the GIL.  What needs Python (payloads, fences, stats, lock tables, texts of refusals,
 * deadlocks and errors, a closed channel) goes through a queue (g_items) that a Python thread
 * waits on (next_item, GIL released).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <math.h>
#include <mpi.h>
#include <pthread.h>
#include <signal.h>
#include <sched.h>
#include <sys/prctl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* -- protocol (checked against server/protocol.py by server/native.py) ----------------------- */
enum { OP_READ = 1, OP_WRITE, OP_RELEASE, OP_CANCEL, OP_FENCE_BEGIN, OP_FENCE_END, OP_FENCE_WAIT, OP_COLLECT,
       OP_CLOSE, OP_STATS, OP_BOUNDED, OP_DOWNGRADE, OP_SITE, OP_HELLO, OP_LOCKS };
enum { R_GRANTED = 1, R_DENIED, R_CANCELLED, R_FENCE_DONE, R_PAYLOAD, R_CLOSED, R_ERROR, R_REFUSED, R_DEADLOCK };
enum { F_TRY = 1, F_UPGRADE = 2, F_MULTI = 4, F_KEYS_IN_PAYLOAD = 8 };
enum { TAG_REQUEST = 11, TAG_REPLY = 12 };
#define HEADER_WORDS 7
#define HEADER_BYTES (8 * HEADER_WORDS)
#define MAX_MESSAGE 256
enum { M_READ = 0, M_WRITE = 1, M_SLOT = 2 };
#define SLOT_SHIFT 40 /* a request's seq is (slot << SLOT_SHIFT) | n: the thread of the rank that sent it */

/* Protocol errors (texts made by server/native_core.py from the kind and its data). */
enum { E_NONE = 0, E_MEMBER, E_CLOSED, E_UNKNOWN_OP, E_BOUNDED_ARGS, E_DOWNGRADE, E_AWAITING, E_HOLDS, E_TWO_MODES,
       E_DUPLICATE, E_UPGRADE, E_RELEASE, E_CLOSED_TWICE, E_SEQ };
enum { S_NONE = 0, S_ERROR, S_REFUSED, S_DEADLOCK };

static void die(const char *what)
{
    fprintf(stderr, "mpilock native server: %s; aborting the MPI job\n", what);
    fflush(stderr);
    int up = 0;
    MPI_Initialized(&up);
    if (up)
        MPI_Abort(MPI_COMM_WORLD, 70);
    abort();
}

#define GROW(ptr, n, cap)                                                                  \
    do {                                                                                   \
        if ((size_t)(n) >= (size_t)(cap)) {                                                \
            size_t grown_ = (cap) ? 2 * (size_t)(cap) : 4;                                 \
            void *p_ = realloc((ptr), grown_ * sizeof(*(ptr)));                            \
            if (!p_)                                                                       \
                die("out of memory");                                                      \
            (ptr) = p_;                                                                    \
            (cap) = grown_;                                                                \
        }                                                                                  \
    } while (0)

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        die("out of memory");
    return p;
}

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* -- data --------------------------------------------------------------------------------------- */
typedef struct Hold {
    int64_t seq, site;
    double since;
    int has_before;
    int64_t bseq, bsite;
    double bsince;
} Hold;

typedef struct Core Core;
typedef struct KeyState KeyState;

typedef struct Request {
    Core *core;
    int rank, mode, nkeys;
    int64_t seq, site;
    double since, priority;
    KeyState **keys;
} Request;

struct KeyState {
    uint8_t *key;
    size_t len;
    uint64_t hash;
    KeyState *hnext, *prev, *next;
    int64_t limit;
    int nreaders, capr;
    int *rranks;
    Hold *rholds;
    int writer;
    Hold write_hold;
    Request **writers;
    int nwriters, capw;
    Request **wreaders;
    int nwreaders, capwr;
    int early;
};

typedef struct Member {
    Core *core;
    int rank;
} Member;

typedef struct Node {
    int64_t world, token;
    Member *m;
    int nm, capm;
    int at;             /* index in Graph.nodes */
    struct Node *hnext; /* next in its hash bucket */
} Node;

typedef struct KeyRef {
    const uint8_t *data;
    size_t len;
} KeyRef;

typedef struct Reordered {
    Core *core;
    uint8_t *key;
    size_t len;
} Reordered;

typedef struct Graph {
    Node **nodes; /* insertion order of WaitGraph._members; NULL where a node left (skipped, compacted now and then) */
    int n, cap, dead;
    Node **buckets; /* (world, token) -> node: a hash table, so that a join or a hello is O(1) */
    size_t nbuckets, count;
    double arrivals;
    Reordered *re;
    int nre, capre;
    int refs;
} Graph;

typedef struct Reply {
    int rank, code;
    int64_t seq;
} Reply;

typedef struct Out {
    Reply *r;
    int n, cap;
} Out;

/* One edge of a deadlock, with what describe_cycle needs to name it. */
typedef struct CycleEdge {
    uint64_t core_uid;
    int waiter, target, queued;
    int waiter_rank, waiter_slot; /* the MPI rank and thread slot of the waiting holder */
    int64_t waiter_world;
    uint8_t *key;
    size_t len;
    int hold_mode;
    int64_t hold_site;
    int wait_mode;
    int64_t wait_site;
} CycleEdge;

typedef struct Special {
    int kind;  /* S_* */
    int error; /* E_* */
    int key;   /* index of the key an error or refusal names, -1 if none */
    int64_t a, b;
    int *users;
    int nusers;
    CycleEdge *cycle;
    int ncycle;
} Special;

typedef struct Events {
    uint8_t *buf;
    size_t n, cap;
    size_t count;
} Events;

typedef struct Channel Channel;

/* A holder is a thread of a rank: (rank, slot), slot from the request's seq.  Holder ids are dense:
 * slot 0 of rank r is r, other slots get ids from size on as first seen (server/holders.py).  The
 * per-holder arrays (waiting, held, nodes, hrank, hslot) have caph entries; per rank: member, closing. */
struct Core {
    uint64_t uid;
    int size, nmembers;
    char *member;
    KeyState **buckets;
    size_t nbuckets, count;
    KeyState *first, *last;
    int nh, caph;
    int *hrank, *hslot; /* holder -> MPI rank (where its replies go), thread slot */
    int64_t *hkeys;     /* rank | slot << SLOT_SHIFT -> holder (hvals), open addressing, slots > 0 only */
    int *hvals;         /* -1: empty */
    size_t hcap, hcount;
    Request **waiting;
    int64_t *held;
    Node **nodes;
    Graph *graph;
    int64_t *closing_seq;
    char *closing;
    int nclosing, closed, joined;
    Reply *outbox;
    int noutbox, capout;
    int record;
    Events ev;
    Channel *channel;
    int refs; /* the Python object and an attached channel */
};

static uint64_t g_uids = 0;

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

/* -- the wait graph (deadlock.py) --------------------------------------------------------------------- */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static uint64_t node_hash(int64_t world, int64_t token)
{
    return mix64((uint64_t)world * 0x9e3779b97f4a7c15ULL ^ (uint64_t)token);
}

static Node *graph_find(Graph *g, int64_t world, int64_t token)
{
    if (!g->nbuckets)
        return NULL;
    for (Node *n = g->buckets[node_hash(world, token) & (g->nbuckets - 1)]; n; n = n->hnext)
        if (n->world == world && n->token == token)
            return n;
    return NULL;
}

static void graph_hash_put(Graph *g, Node *n)
{
    if (g->count + 1 > g->nbuckets / 2) {
        size_t nb = g->nbuckets ? 2 * g->nbuckets : 64;
        Node **b = calloc(nb, sizeof(*b));
        if (!b)
            die("out of memory");
        for (size_t i = 0; i < g->nbuckets; i++)
            for (Node *m = g->buckets[i], *next; m; m = next) {
                next = m->hnext;
                size_t at = node_hash(m->world, m->token) & (nb - 1);
                m->hnext = b[at];
                b[at] = m;
            }
        free(g->buckets);
        g->buckets = b;
        g->nbuckets = nb;
    }
    size_t at = node_hash(n->world, n->token) & (g->nbuckets - 1);
    n->hnext = g->buckets[at];
    g->buckets[at] = n;
    g->count++;
}

/* Take node n out of the graph (it has no member left): out of the hash, a hole in the order. */
static void graph_remove(Graph *g, Node *n)
{
    Node **at = &g->buckets[node_hash(n->world, n->token) & (g->nbuckets - 1)];
    while (*at != n)
        at = &(*at)->hnext;
    *at = n->hnext;
    g->count--;
    g->nodes[n->at] = NULL;
    g->dead++;
    if (g->dead > 64 && 2 * g->dead > g->n) { /* compact, keeping the order */
        int k = 0;
        for (int i = 0; i < g->n; i++)
            if (g->nodes[i]) {
                g->nodes[i]->at = k;
                g->nodes[k++] = g->nodes[i];
            }
        g->n = k;
        g->dead = 0;
    }
}

/* _members.setdefault(node, []).append((core, rank)) */
static Node *graph_add(Graph *g, int64_t world, int64_t token, Core *c, int rank)
{
    Node *n = graph_find(g, world, token);
    if (!n) {
        n = calloc(1, sizeof(*n));
        if (!n)
            die("out of memory");
        n->world = world;
        n->token = token;
        GROW(g->nodes, g->n, g->cap);
        n->at = g->n;
        g->nodes[g->n++] = n;
        graph_hash_put(g, n);
    }
    GROW(n->m, n->nm, n->capm);
    n->m[n->nm].core = c;
    n->m[n->nm].rank = rank;
    n->nm++;
    return n;
}

static void graph_drop_member(Graph *g, Node *n, Core *c, int rank)
{
    int k = 0;
    for (int i = 0; i < n->nm; i++)
        if (!(n->m[i].core == c && (rank < 0 || n->m[i].rank == rank)))
            n->m[k++] = n->m[i];
    n->nm = k;
    if (k)
        return;
    graph_remove(g, n);
    free(n->m);
    free(n);
}

static void graph_join(Graph *g, Core *c)
{
    for (int r = 0; r < c->nh; r++)
        c->nodes[r] = graph_add(g, -1 - (int64_t)r, (int64_t)c->uid, c, r);
    c->joined = 1;
}

static void graph_leave(Graph *g, Core *c)
{
    if (!c->joined)
        return;
    Node **kept = xmalloc((size_t)c->nh * sizeof(Node *));
    for (int r = 0; r < c->nh; r++) { /* the core keeps the values of its nodes, as LockCore.nodes does */
        kept[r] = calloc(1, sizeof(Node));
        if (!kept[r])
            die("out of memory");
        kept[r]->world = c->nodes[r]->world;
        kept[r]->token = c->nodes[r]->token;
    }
    for (int r = 0; r < c->nh; r++) {
        Node *n = graph_find(g, kept[r]->world, kept[r]->token); /* NULL once an earlier holder's drop freed it */
        if (n)
            graph_drop_member(g, n, c, -1);
    }
    memcpy(c->nodes, kept, (size_t)c->nh * sizeof(Node *));
    free(kept);
    c->joined = 0;
}

static void graph_move(Graph *g, Core *c, int rank, int64_t world, int64_t token)
{
    Node *old = c->nodes[rank];
    if (old->world == world && old->token == token)
        return;
    graph_drop_member(g, old, c, rank);
    c->nodes[rank] = graph_add(g, world, token, c, rank);
}

static double graph_next_arrival(Graph *g)
{
    g->arrivals += 1.0;
    return g->arrivals;
}

static int graph_holds_anything(Node *n)
{
    for (int i = 0; i < n->nm; i++)
        if (n->m[i].core->held[n->m[i].rank])
            return 1;
    return 0;
}

typedef struct Edge {
    Node *waiter, *target;
    Core *core;
    int waiter_rank, target_rank, queued;
    KeyState *key;
} Edge;

typedef struct Edges {
    Edge *e;
    int n, cap;
} Edges;

static void edge_add(Edges *es, Node *w, Core *c, int wr, int tr, KeyState *key, int queued)
{
    GROW(es->e, es->n, es->cap);
    Edge *e = &es->e[es->n++];
    e->waiter = w;
    e->target = c->nodes[tr];
    e->core = c;
    e->waiter_rank = wr;
    e->target_rank = tr;
    e->key = key;
    e->queued = queued;
}

/* LockCore.blockers: (rank waited for, key, queued) for rank's queued request */
static void blockers(Core *c, int rank, int hard, Node *w, Edges *es)
{
    Request *r = c->waiting[rank];
    if (!r)
        return;
    for (int k = 0; k < r->nkeys; k++) {
        KeyState *s = r->keys[k];
        if (!hard) {
            Request *ahead = state_ahead(s, r);
            if (ahead) {
                edge_add(es, w, c, rank, ahead->rank, s, 1);
                continue;
            }
        }
        if (r->mode == M_READ) {
            if (s->writer >= 0)
                edge_add(es, w, c, rank, s->writer, s, 0);
        } else if (r->mode == M_WRITE) {
            if (s->writer >= 0)
                edge_add(es, w, c, rank, s->writer, s, 0);
            for (int i = 0; i < s->nreaders; i++)
                edge_add(es, w, c, rank, s->rranks[i], s, 0);
        } else if (s->nreaders >= s->limit) {
            for (int i = 0; i < s->nreaders; i++)
                edge_add(es, w, c, rank, s->rranks[i], s, 0);
        }
    }
}

static void graph_edges(Node *n, int hard, Edges *es)
{
    es->n = 0;
    for (int i = 0; i < n->nm; i++)
        blockers(n->m[i].core, n->m[i].rank, hard, n, es);
}

/* WaitGraph.find_cycle; returns the number of edges of the cycle written to *cycle (0: none). */
static int find_cycle(Node *start, int hard, Edge **cycle)
{
    int depth = 0, cap = 8;
    Edges *pending = calloc((size_t)cap, sizeof(Edges));
    int *at = calloc((size_t)cap, sizeof(int));
    Edge *path = calloc((size_t)cap, sizeof(Edge));
    Node **seen = NULL;
    int nseen = 0, capseen = 0, found = 0;
    if (!pending || !at || !path)
        die("out of memory");
    GROW(seen, nseen, capseen);
    seen[nseen++] = start;
    graph_edges(start, hard, &pending[0]);
    at[0] = 0;
    depth = 1;
    int npath = 0;
    while (depth) {
        Edges *top = &pending[depth - 1];
        if (at[depth - 1] >= top->n) {
            depth--;
            if (npath)
                npath--;
            continue;
        }
        Edge e = top->e[at[depth - 1]++];
        if (e.target == start) {
            *cycle = xmalloc((size_t)(npath + 1) * sizeof(Edge));
            memcpy(*cycle, path, (size_t)npath * sizeof(Edge));
            (*cycle)[npath] = e;
            found = npath + 1;
            break;
        }
        int was = 0;
        for (int i = 0; i < nseen && !was; i++)
            was = seen[i] == e.target;
        if (was)
            continue;
        GROW(seen, nseen, capseen);
        seen[nseen++] = e.target;
        if (depth >= cap) {
            int grown = 2 * cap;
            pending = realloc(pending, (size_t)grown * sizeof(Edges));
            at = realloc(at, (size_t)grown * sizeof(int));
            path = realloc(path, (size_t)grown * sizeof(Edge));
            if (!pending || !at || !path)
                die("out of memory");
            memset(pending + cap, 0, (size_t)(grown - cap) * sizeof(Edges));
            cap = grown;
        }
        path[npath++] = e;
        graph_edges(e.target, hard, &pending[depth]);
        at[depth] = 0;
        depth++;
    }
    for (int i = 0; i < cap; i++)
        free(pending[i].e);
    free(pending);
    free(at);
    free(path);
    free(seen);
    return found;
}

static void core_reprioritize(Core *c, Request *r, double priority)
{
    (void)c;
    for (int k = 0; k < r->nkeys; k++)
        state_unqueue(r->keys[k], r, 1);
    r->priority = priority;
    for (int k = 0; k < r->nkeys; k++)
        state_queue(r->keys[k], r);
}

typedef struct Queued {
    Node *node;
    Core *core;
    Request *req;
    int *targets;
    int ntargets, captargets;
    int count;
    double limit;
} Queued;

static int queued_index(Queued *q, int n, Node *node)
{
    for (int i = 0; i < n; i++)
        if (q[i].node == node)
            return i;
    return -1;
}

static void reordered_add(Graph *g, Core *c, KeyState *s)
{
    for (int i = 0; i < g->nre; i++)
        if (g->re[i].core == c && g->re[i].len == s->len && (s->len == 0 || !memcmp(g->re[i].key, s->key, s->len)))
            return;
    GROW(g->re, g->nre, g->capre);
    g->re[g->nre].core = c;
    g->re[g->nre].key = xmalloc(s->len);
    if (s->len)
        memcpy(g->re[g->nre].key, s->key, s->len);
    g->re[g->nre].len = s->len;
    g->nre++;
}

static void reordered_clear(Graph *g)
{
    for (int i = 0; i < g->nre; i++)
        free(g->re[i].key);
    g->nre = 0;
}

/* WaitGraph.order: a hard cycle through start (returned), or the queues reordered (g->re). */
static int graph_order(Graph *g, Node *start, Edge **cycle)
{
    for (;;) {
        reordered_clear(g);
        int found = find_cycle(start, 1, cycle);
        if (found)
            return found;
        Queued *q = NULL;
        int nq = 0, capq = 0;
        for (int i = 0; i < g->n; i++) {
            Node *node = g->nodes[i];
            if (!node)
                continue;
            for (int j = 0; j < node->nm; j++) {
                Request *r = node->m[j].core->waiting[node->m[j].rank];
                if (!r)
                    continue;
                int at = queued_index(q, nq, node);
                if (at < 0) {
                    GROW(q, nq, capq);
                    memset(&q[nq], 0, sizeof(Queued));
                    q[nq].node = node;
                    at = nq++;
                }
                q[at].core = node->m[j].core;
                q[at].req = r;
            }
        }
        Edges es = {0};
        for (int i = 0; i < nq; i++) {
            es.n = 0;
            blockers(q[i].core, q[i].req->rank, 1, q[i].node, &es);
            for (int k = 0; k < es.n; k++) {
                int t = queued_index(q, nq, es.e[k].target);
                if (t < 0 || t == i)
                    continue;
                int dup = 0;
                for (int m = 0; m < q[i].ntargets && !dup; m++)
                    dup = q[i].targets[m] == t;
                if (dup)
                    continue;
                GROW(q[i].targets, q[i].ntargets, q[i].captargets);
                q[i].targets[q[i].ntargets++] = t;
            }
            for (int m = 0; m < q[i].ntargets; m++)
                q[q[i].targets[m]].count++;
        }
        free(es.e);
        int *ready = xmalloc((size_t)(nq + 1) * sizeof(int));
        int nready = 0, again = 0;
        for (int i = 0; i < nq; i++) {
            q[i].limit = INFINITY;
            if (q[i].count == 0)
                ready[nready++] = i;
        }
        while (nready) {
            int i = ready[--nready];
            Request *r = q[i].req;
            double limit = q[i].limit;
            if (limit < INFINITY && r->priority >= limit) {
                /* _just_before */
                double below = limit - 2.0;
                int any = 0;
                for (int m = 0; m < nq; m++) {
                    double p = q[m].req->priority;
                    if (p < limit && (!any || p > below)) {
                        below = p;
                        any = 1;
                    }
                }
                double middle = (below + limit) / 2;
                if (!(below < middle && middle < limit)) {
                    /* _renumber: space the finite priorities out, in their order, and start again */
                    int *order = xmalloc((size_t)(nq + 1) * sizeof(int));
                    int no = 0;
                    for (int m = 0; m < nq; m++) {
                        if (!(q[m].req->priority < INFINITY))
                            continue;
                        int pos = no;
                        while (pos > 0 && q[order[pos - 1]].req->priority > q[m].req->priority) {
                            order[pos] = order[pos - 1];
                            pos--;
                        }
                        order[pos] = m;
                        no++;
                    }
                    for (int m = 0; m < no; m++)
                        core_reprioritize(q[order[m]].core, q[order[m]].req, 4.0 * (m + 1));
                    g->arrivals = 4.0 * no + 4.0;
                    free(order);
                    again = 1;
                    break;
                }
                core_reprioritize(q[i].core, r, middle);
                for (int k = 0; k < r->nkeys; k++)
                    reordered_add(g, q[i].core, r->keys[k]);
            }
            for (int m = 0; m < q[i].ntargets; m++) {
                int t = q[i].targets[m];
                if (r->priority < q[t].limit)
                    q[t].limit = r->priority;
                if (--q[t].count == 0)
                    ready[nready++] = t;
            }
        }
        free(ready);
        for (int i = 0; i < nq; i++)
            free(q[i].targets);
        free(q);
        if (!again)
            return 0;
    }
}

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

/* -- the core (core.py) ------------------------------------------------------------------------------- */
static KeyState *get_key(Core *c, const uint8_t *p, size_t n)
{
    return table_get(c, p, n, hash_key(p, n));
}

static void grant_queued(Core *c, Request *r, Out *out, KeyState *taken);

static int at_head(Core *c, Request *r)
{
    (void)c;
    for (int k = 0; k < r->nkeys; k++) {
        KeyState *s = r->keys[k];
        if (r->mode == M_READ) {
            if (s->writer >= 0 || !ahead_of_writers(s, r))
                return 0;
        } else if (s->writer >= 0 || s->nreaders || s->writers[0] != r) {
            return 0;
        }
    }
    return 1;
}

static void unqueue(Core *c, Request *r, KeyState *taken)
{
    c->waiting[r->rank] = NULL;
    for (int k = 0; k < r->nkeys; k++)
        state_unqueue(r->keys[k], r, r->keys[k] != taken);
}

static void request_free(Request *r)
{
    free(r->keys);
    free(r);
}

static void grant_queued(Core *c, Request *r, Out *out, KeyState *taken)
{
    unqueue(c, r, taken);
    Hold h = {r->seq, r->site, r->since, 0, 0, 0, 0.0};
    for (int k = 0; k < r->nkeys; k++) {
        KeyState *s = r->keys[k];
        if (r->mode == M_WRITE) {
            s->writer = r->rank;
            s->write_hold = h;
        } else {
            readers_add(s, r->rank, h);
        }
    }
    c->held[r->rank] += r->nkeys;
    out_add(out, c->hrank[r->rank], R_GRANTED, r->seq);
    request_free(r);
}

static void schedule_state(Core *c, KeyState *s, Out *out)
{
    if (s->limit) {
        while (s->nwriters && s->nreaders < s->limit)
            grant_queued(c, s->writers[0], out, NULL);
    } else if (s->writer < 0) {
        if (s->nwreaders && (s->early || !s->nwriters)) {
            int n = s->nwreaders;
            Request **waiting = xmalloc((size_t)n * sizeof(Request *));
            memcpy(waiting, s->wreaders, (size_t)n * sizeof(Request *));
            s->nwreaders = 0;
            for (int i = 0; i < n; i++) {
                Request *r = waiting[i];
                if (ahead_of_writers(s, r) && (r->nkeys == 1 || at_head(c, r))) {
                    grant_queued(c, r, out, s);
                } else {
                    GROW(s->wreaders, s->nwreaders, s->capwr);
                    s->wreaders[s->nwreaders++] = r;
                }
            }
            free(waiting);
        }
        if (s->nwriters && !s->nreaders && at_head(c, s->writers[0]))
            grant_queued(c, s->writers[0], out, NULL);
    }
    if (s->len && state_idle(s))
        table_del(c, s);
}

static void schedule(Core *c, const uint8_t *p, size_t n, Out *out)
{
    KeyState *s = get_key(c, p, n);
    if (s)
        schedule_state(c, s, out);
}

static void drop_if_idle(Core *c, const uint8_t *p, size_t n)
{
    KeyState *s = get_key(c, p, n);
    if (n && s && state_idle(s))
        table_del(c, s);
}

static int holds_locks(Core *c, Request *r)
{
    return c->held[r->rank] > 0 || graph_holds_anything(c->nodes[r->rank]);
}

static void outbox_add(Core *c, int rank, int code, int64_t seq);

static int set_error(Special *sp, int error, int key)
{
    sp->kind = S_ERROR;
    sp->error = error;
    sp->key = key;
    return -1;
}

static void capture_cycle(Edge *cycle, int n, Special *sp)
{
    sp->kind = S_DEADLOCK;
    sp->cycle = calloc((size_t)n, sizeof(CycleEdge));
    if (!sp->cycle)
        die("out of memory");
    sp->ncycle = n;
    for (int i = 0; i < n; i++) {
        Edge *e = &cycle[i];
        CycleEdge *ce = &sp->cycle[i];
        Core *c = e->core;
        ce->core_uid = c->uid;
        ce->waiter = e->waiter_rank;
        ce->target = e->target_rank;
        ce->queued = e->queued;
        ce->waiter_world = c->nodes[e->waiter_rank]->world;
        ce->waiter_rank = c->hrank[e->waiter_rank];
        ce->waiter_slot = c->hslot[e->waiter_rank];
        ce->len = e->key->len;
        ce->key = xmalloc(e->key->len);
        if (e->key->len)
            memcpy(ce->key, e->key->key, e->key->len);
        /* describe_hold(target_rank, key, queued) */
        if (e->queued) {
            ce->hold_mode = c->waiting[e->target_rank]->mode;
            ce->hold_site = 0;
        } else if (e->key->writer == e->target_rank) {
            ce->hold_mode = M_WRITE;
            ce->hold_site = e->key->write_hold.site;
        } else {
            int at = reader_index(e->key, e->target_rank);
            ce->hold_mode = e->key->limit ? M_SLOT : M_READ;
            ce->hold_site = at >= 0 ? e->key->rholds[at].site : 0;
        }
        /* describe_wait(waiter_rank, key) */
        Request *w = c->waiting[e->waiter_rank];
        ce->wait_mode = w->mode;
        ce->wait_site = w->site;
    }
}

static int core_request(Core *c, int h, int64_t seq, const KeyRef *keys, int nkeys, int mode, int64_t limit,
                        int64_t flags, int64_t site, double now, Out *out, Special *sp)
{
    if (c->waiting[h])
        return set_error(sp, E_AWAITING, -1);
    Node *node = c->nodes[h];
    int holder = c->held[h] > 0 || graph_holds_anything(node);
    KeyState **states = xmalloc((size_t)nkeys * sizeof(KeyState *));
    int grantable = 1;
    for (int k = 0; k < nkeys; k++) {
        KeyState *s = get_key(c, keys[k].data, keys[k].len);
        states[k] = s;
        if (!s)
            continue;
        if (state_holds(s, h)) {
            free(states);
            return set_error(sp, E_HOLDS, k);
        }
        if (s->limit != limit) {
            free(states);
            if (mode != M_SLOT || !s->limit)
                return set_error(sp, E_TWO_MODES, k);
            /* _refuse_limit: users = sorted(set(readers) | {queued ranks}) */
            sp->kind = S_REFUSED;
            sp->key = k;
            sp->a = s->limit;
            sp->b = limit;
            sp->users = xmalloc((size_t)(s->nreaders + s->nwriters) * sizeof(int));
            for (int i = 0; i < s->nreaders; i++)
                sp->users[sp->nusers++] = c->hrank[s->rranks[i]];
            for (int i = 0; i < s->nwriters; i++)
                sp->users[sp->nusers++] = c->hrank[s->writers[i]->rank];
            out_add(out, c->hrank[h], R_REFUSED, seq);
            return 0;
        }
        if (grantable && (s->nwriters || !free_for(s, mode)))
            grantable = 0;
    }
    if (nkeys > 1)
        for (int i = 0; i < nkeys; i++)
            for (int j = i + 1; j < nkeys; j++)
                if (keys[i].len == keys[j].len && (!keys[i].len || !memcmp(keys[i].data, keys[j].data, keys[i].len))) {
                    free(states);
                    return set_error(sp, E_DUPLICATE, -1);
                }
    if (grantable) {
        Hold hold = {seq, site, now, 0, 0, 0, 0.0};
        for (int k = 0; k < nkeys; k++) {
            KeyState *s = states[k] ? states[k] : state_new(c, keys[k].data, keys[k].len, limit);
            if (mode == M_WRITE) {
                s->writer = h;
                s->write_hold = hold;
            } else {
                readers_add(s, h, hold);
            }
        }
        c->held[h] += nkeys;
        out_add(out, c->hrank[h], R_GRANTED, seq);
        free(states);
        return 0;
    }
    if (flags & F_TRY) {
        out_add(out, c->hrank[h], R_DENIED, seq);
        free(states);
        return 0;
    }
    Request *r = calloc(1, sizeof(Request));
    if (!r)
        die("out of memory");
    r->core = c;
    r->rank = h;
    r->seq = seq;
    r->mode = mode;
    r->site = site;
    r->since = now;
    r->priority = mode == M_READ ? INFINITY : graph_next_arrival(c->graph);
    r->nkeys = nkeys;
    r->keys = states;
    for (int k = 0; k < nkeys; k++) {
        if (!states[k])
            states[k] = state_new(c, keys[k].data, keys[k].len, limit);
        state_queue(states[k], r);
    }
    c->waiting[h] = r;
    int check = holder;
    if (!check && mode == M_WRITE)
        for (int k = 0; k < nkeys && !check; k++)
            for (int i = 0; i < states[k]->nwreaders && !check; i++)
                check = holds_locks(c, states[k]->wreaders[i]);
    if (!check)
        return 0;
    Edge *cycle = NULL;
    int n = graph_order(c->graph, node, &cycle);
    if (n) {
        capture_cycle(cycle, n, sp);
        free(cycle);
        unqueue(c, r, NULL);
        request_free(r);
        for (int k = 0; k < nkeys; k++)
            drop_if_idle(c, keys[k].data, keys[k].len);
        out_add(out, c->hrank[h], R_DEADLOCK, seq);
        return 0;
    }
    Graph *g = c->graph;
    int nre = g->nre;
    Reordered *re = xmalloc((size_t)(nre + 1) * sizeof(Reordered));
    memcpy(re, g->re, (size_t)nre * sizeof(Reordered));
    g->nre = 0; /* the keys are ours now */
    for (int i = 0; i < nre; i++) {
        if (re[i].core == c) {
            schedule(c, re[i].key, re[i].len, out);
        } else {
            Out other = {0};
            schedule(re[i].core, re[i].key, re[i].len, &other);
            for (int j = 0; j < other.n; j++)
                outbox_add(re[i].core, other.r[j].rank, other.r[j].code, other.r[j].seq);
            free(other.r);
        }
        free(re[i].key);
    }
    free(re);
    return 0;
}

static int core_upgrade(Core *c, int h, int64_t seq, const KeyRef *keys, int nkeys, int64_t site, double now,
                        Out *out, Special *sp)
{
    KeyState **states = xmalloc((size_t)nkeys * sizeof(KeyState *));
    for (int k = 0; k < nkeys; k++) {
        KeyState *s = get_key(c, keys[k].data, keys[k].len);
        if (!s || reader_index(s, h) < 0 || s->limit) {
            free(states);
            return set_error(sp, E_UPGRADE, k);
        }
        states[k] = s;
    }
    for (int k = 0; k < nkeys; k++)
        if (states[k]->nreaders > 1 || states[k]->nwriters) {
            out_add(out, c->hrank[h], R_DENIED, seq);
            free(states);
            return 0;
        }
    for (int k = 0; k < nkeys; k++) {
        Hold before;
        if (!readers_pop(states[k], h, &before))
            die("internal error: an upgrade named a key twice");
        Hold hold = {seq, site, now, 1, before.seq, before.site, before.since};
        states[k]->writer = h;
        states[k]->write_hold = hold;
    }
    out_add(out, c->hrank[h], R_GRANTED, seq);
    free(states);
    return 0;
}

static int release_key(Core *c, int h, const KeyRef *key, int index, Special *sp)
{
    KeyState *s = get_key(c, key->data, key->len);
    if (s) {
        if (s->writer == h) {
            s->writer = -1;
            c->held[h]--;
            return 0;
        }
        if (readers_pop(s, h, NULL)) {
            c->held[h]--;
            return 0;
        }
    }
    return set_error(sp, E_RELEASE, index);
}

static void downgrade_state(int h, KeyState *s)
{
    Hold w = s->write_hold;
    s->writer = -1;
    Hold back = w.has_before ? (Hold){w.bseq, w.bsite, w.bsince, 0, 0, 0, 0.0} : (Hold){w.seq, w.site, w.since, 0, 0, 0, 0.0};
    readers_add(s, h, back);
}

static int core_cancel(Core *c, int h, int64_t seq, const KeyRef *keys, int nkeys, Out *out, Special *sp)
{
    Request *r = c->waiting[h];
    if (r && r->seq == seq) {
        unqueue(c, r, NULL);
        /* keys = request.keys: schedule them after the reply */
        int n = r->nkeys;
        KeyRef *mine = xmalloc((size_t)n * sizeof(KeyRef));
        uint8_t **copies = xmalloc((size_t)n * sizeof(uint8_t *));
        for (int k = 0; k < n; k++) {
            copies[k] = xmalloc(r->keys[k]->len);
            if (r->keys[k]->len)
                memcpy(copies[k], r->keys[k]->key, r->keys[k]->len);
            mine[k].data = copies[k];
            mine[k].len = r->keys[k]->len;
        }
        request_free(r);
        out_add(out, c->hrank[h], R_CANCELLED, seq);
        for (int k = 0; k < n; k++)
            schedule(c, mine[k].data, mine[k].len, out);
        for (int k = 0; k < n; k++)
            free(copies[k]);
        free(copies);
        free(mine);
        return 0;
    }
    for (int k = 0; k < nkeys; k++) {
        KeyState *s = get_key(c, keys[k].data, keys[k].len);
        if (!s)
            continue;
        Hold *hold = NULL;
        if (s->writer == h) {
            hold = &s->write_hold;
        } else {
            int at = reader_index(s, h);
            if (at >= 0)
                hold = &s->rholds[at];
        }
        if (!hold || hold->seq != seq)
            continue;
        if (hold->has_before)
            downgrade_state(h, s);
        else if (release_key(c, h, &keys[k], k, sp))
            return -1;
    }
    out_add(out, c->hrank[h], R_CANCELLED, seq);
    for (int k = 0; k < nkeys; k++)
        schedule(c, keys[k].data, keys[k].len, out);
    return 0;
}

/* Closing by any thread of a rank: every holder of the rank lets go of its holds (key by key, the writer
 * then the readers in order) and its queued request (no reply), as LockCore._on_close. */
static int core_close(Core *c, int h, int64_t seq, Out *out, Special *sp)
{
    int rank = c->hrank[h];
    if (c->closing[rank])
        return set_error(sp, E_CLOSED_TWICE, -1);
    int n = 0, cap = 0, nrel = 0, caprel = 0;
    KeyRef *touched = NULL;
    uint8_t **copies = NULL;
    int ncopies = 0, capcopies = 0;
    struct { int h; KeyState *s; } *rel = NULL;
    for (KeyState *s = c->first; s; s = s->next) {
        int any = 0;
        if (s->writer >= 0 && c->hrank[s->writer] == rank) {
            GROW(rel, nrel, caprel);
            rel[nrel].h = s->writer;
            rel[nrel++].s = s;
            any = 1;
        }
        for (int i = 0; i < s->nreaders; i++)
            if (c->hrank[s->rranks[i]] == rank) {
                GROW(rel, nrel, caprel);
                rel[nrel].h = s->rranks[i];
                rel[nrel++].s = s;
                any = 1;
            }
        if (any) {
            GROW(touched, n, cap);
            GROW(copies, ncopies, capcopies);
            copies[ncopies] = xmalloc(s->len);
            if (s->len)
                memcpy(copies[ncopies], s->key, s->len);
            touched[n].data = copies[ncopies++];
            touched[n].len = s->len;
            n++;
        }
    }
    for (int k = 0; k < nrel; k++) {
        KeyRef key = {rel[k].s->key, rel[k].s->len};
        release_key(c, rel[k].h, &key, k, sp);
    }
    free(rel);
    for (int w = 0; w < c->nh; w++) { /* slot 0 (id rank) first, then the others as first seen */
        Request *r = c->hrank[w] == rank ? c->waiting[w] : NULL;
        if (!r)
            continue;
        unqueue(c, r, NULL);
        for (int k = 0; k < r->nkeys; k++) {
            GROW(touched, n, cap);
            GROW(copies, ncopies, capcopies);
            copies[ncopies] = xmalloc(r->keys[k]->len);
            if (r->keys[k]->len)
                memcpy(copies[ncopies], r->keys[k]->key, r->keys[k]->len);
            touched[n].data = copies[ncopies++];
            touched[n].len = r->keys[k]->len;
            n++;
        }
        request_free(r);
    }
    for (int k = 0; k < n; k++)
        schedule(c, touched[k].data, touched[k].len, out);
    for (int k = 0; k < ncopies; k++)
        free(copies[k]);
    free(copies);
    free(touched);
    c->closing[rank] = 1;
    c->closing_seq[rank] = seq;
    c->nclosing++;
    if (c->nclosing == c->nmembers) {
        c->closed = 1;
        graph_leave(c->graph, c);
        for (int r2 = 0; r2 < c->size; r2++)
            if (c->closing[r2])
                out_add(out, r2, R_CLOSED, c->closing_seq[r2]);
    }
    return 0;
}

static int is_bounded_key(const KeyRef *k)
{
    return k->len >= 1 && k->data[0] == '#';
}

static const KeyRef DEFAULT_KEY = {(const uint8_t *)"", 0};

/* LockCore.handle for the ops that touch locks; records the event (errors included). */
static int core_handle(Core *c, int rank, int op, int64_t seq, int64_t arg, int64_t aux, const KeyRef *keys,
                       int nkeys, int64_t site, double now, Out *out, Special *sp)
{
    int rc = 0;
    int first = out->n;
    if (rank < 0 || rank >= c->size || !c->member[rank]) {
        rc = set_error(sp, E_MEMBER, -1);
        goto done;
    }
    if (c->closed) {
        rc = set_error(sp, E_CLOSED, -1);
        goto done;
    }
    int h = rank;
    if (op == OP_READ || op == OP_WRITE || op == OP_BOUNDED || op == OP_FENCE_BEGIN || op == OP_RELEASE ||
        op == OP_DOWNGRADE || op == OP_CANCEL || op == OP_HELLO || op == OP_CLOSE) {
        h = holder_of(c, rank, seq);
        if (h < 0) {
            rc = set_error(sp, E_SEQ, -1);
            goto done;
        }
    }
    switch (op) {
    case OP_READ:
        rc = core_request(c, h, seq, keys, nkeys, M_READ, 0, arg, site, now, out, sp);
        break;
    case OP_WRITE:
        if (arg & F_UPGRADE)
            rc = core_upgrade(c, h, seq, keys, nkeys, site, now, out, sp);
        else
            rc = core_request(c, h, seq, keys, nkeys, M_WRITE, 0, arg, site, now, out, sp);
        break;
    case OP_BOUNDED:
        if (aux < 1 || nkeys != 1 || !is_bounded_key(&keys[0])) {
            rc = set_error(sp, E_BOUNDED_ARGS, -1);
            sp->a = aux;
            sp->b = nkeys;
            break;
        }
        rc = core_request(c, h, seq, keys, nkeys, M_SLOT, aux, arg, site, now, out, sp);
        break;
    case OP_FENCE_BEGIN:
        rc = core_request(c, h, seq, &DEFAULT_KEY, 1, M_WRITE, 0, 0, site, now, out, sp);
        break;
    case OP_RELEASE:
        for (int k = 0; k < nkeys && !rc; k++)
            rc = release_key(c, h, &keys[k], k, sp);
        if (!rc)
            for (int k = 0; k < nkeys; k++)
                schedule(c, keys[k].data, keys[k].len, out);
        break;
    case OP_DOWNGRADE:
        for (int k = 0; k < nkeys && !rc; k++) {
            KeyState *s = get_key(c, keys[k].data, keys[k].len);
            if (!s || s->writer != h)
                rc = set_error(sp, E_DOWNGRADE, k);
            else
                downgrade_state(h, s);
        }
        if (!rc)
            for (int k = 0; k < nkeys; k++)
                schedule(c, keys[k].data, keys[k].len, out);
        break;
    case OP_CANCEL:
        rc = core_cancel(c, h, seq, keys, nkeys, out, sp);
        break;
    case OP_HELLO:
        graph_move(c->graph, c, h, arg, aux);
        break;
    case OP_CLOSE:
        rc = core_close(c, h, seq, out, sp);
        break;
    default:
        rc = set_error(sp, E_UNKNOWN_OP, -1);
    }
done:
    if (rc) {
        out->n = first; /* a raised ProtocolError drops the replies made so far */
        if (c->record) {
            Reply err = {rank, R_ERROR, seq};
            int replied = !(op == OP_RELEASE || op == OP_DOWNGRADE || op == OP_SITE || op == OP_HELLO);
            record(c, now, rank, op, seq, keys, nkeys, &err, replied);
        }
    } else {
        record(c, now, rank, op, seq, keys, nkeys, out->r + first, out->n - first);
    }
    return rc;
}

static void special_clear(Special *sp)
{
    free(sp->users);
    for (int i = 0; i < sp->ncycle; i++)
        free(sp->cycle[i].key);
    free(sp->cycle);
    memset(sp, 0, sizeof *sp);
}

/* -- the service loop ------------------------------------------------------------------------------- */
/* Recursive: building Python objects under it (snapshot) may run the garbage collector, which may free
 * another core, which takes it again. */
static pthread_mutex_t g_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static pthread_cond_t g_items_ready = PTHREAD_COND_INITIALIZER;
static pthread_cond_t g_drained = PTHREAD_COND_INITIALIZER;

typedef struct SendSlot {
    int64_t words[HEADER_WORDS];
    int rank; /* the reply's client: poked again once the send has completed */
} SendSlot;

struct Channel {
    int id;
    Core *core;
    MPI_Comm comm;
    MPI_Request recv;
    MPI_Status status;
    uint8_t buf[MAX_MESSAGE];
    MPI_Request *reqs;
    SendSlot **slots;
    int nsends, capsends;
    int *deferred;
    int finished, drain_asked;
    int wakeable; /* every rank of the channel can reach the wake word (same node, wake-up on) */
    uint32_t *words; /* the clients' words (see "the wake word"), or NULL */
    int nwords;
    PyObject *words_owner; /* the Words object that maps them (kept alive while the channel lives) */
    Channel *next;
};

enum { I_MESSAGE = 1, I_SPECIAL, I_DRAIN, I_FINISHED };

typedef struct Item {
    int kind, channel, rank, op;
    int64_t seq;
    uint8_t *data; /* I_MESSAGE: the message; I_SPECIAL: the keys, packed */
    int count, truncated; /* I_MESSAGE: bytes received; whether the message was longer than MAX_MESSAGE */
    KeyRef *keys;
    int nkeys;
    Special sp;
    struct Item *next;
} Item;

static Channel *g_channels = NULL;
static int g_next_channel = 1;
static Item *g_items = NULL, **g_items_tail = &g_items;
static int g_thread_running = 0, g_thread_joinable = 0;
static int g_paused = 0; /* MPI_Finalize has begun: one thread calls MPI from now on, the service thread stays out */
static volatile int g_want = 0; /* Python threads waiting for g_lock: the service thread lets them in */
static pthread_t g_thread;
static double g_spin = 0.0002, g_shortest = 10e-6, g_hot = 0.005, g_longest = 0.0002, g_idle_after = 0.05,
              g_idle_longest = 0.001;
static size_t g_soft_events = 4096, g_hard_events = 65536;
static SendSlot *g_free_slots[256];
static int g_nfree_slots = 0;
static long g_wakeups = 0;

static void push_item(Item *it)
{
    it->next = NULL;
    *g_items_tail = it;
    g_items_tail = &it->next;
    pthread_cond_signal(&g_items_ready);
}

static void mpi_check(int err, const char *what)
{
    if (err != MPI_SUCCESS)
        die(what);
}

static void poke_client(Channel *ch, int rank);

static void channel_send(Channel *ch, int rank, int code, int64_t seq)
{
    SendSlot *slot = g_nfree_slots ? g_free_slots[--g_nfree_slots] : xmalloc(sizeof(SendSlot));
    slot->words[0] = code;
    slot->words[1] = seq;
    slot->words[2] = 0;
    slot->words[3] = 0;
    slot->words[4] = 0;
    slot->words[5] = 0;
    slot->words[6] = 0;
    if (ch->nsends >= ch->capsends) {
        int cap = ch->capsends ? 2 * ch->capsends : 32;
        ch->slots = realloc(ch->slots, (size_t)cap * sizeof(SendSlot *));
        ch->reqs = realloc(ch->reqs, (size_t)cap * sizeof(MPI_Request));
        if (!ch->slots || !ch->reqs)
            die("out of memory");
        ch->capsends = cap;
    }
    slot->rank = rank;
    ch->slots[ch->nsends] = slot;
    mpi_check(MPI_Isend(slot->words, HEADER_BYTES, MPI_BYTE, rank, TAG_REPLY, ch->comm, &ch->reqs[ch->nsends]),
              "MPI_Isend of a reply failed");
    ch->nsends++;
    poke_client(ch, rank);
}

static void channel_reap(Channel *ch)
{
    if (!ch->nsends)
        return;
    int done = 0;
    int *idx = xmalloc((size_t)ch->nsends * sizeof(int));
    mpi_check(MPI_Testsome(ch->nsends, ch->reqs, &done, idx, MPI_STATUSES_IGNORE), "MPI_Testsome failed");
    free(idx);
    if (done == MPI_UNDEFINED || done == 0)
        return;
    int k = 0;
    for (int i = 0; i < ch->nsends; i++) {
        if (ch->reqs[i] == MPI_REQUEST_NULL) {
            /* Sent for sure now: a client that slept through the first poke (an MPI that sent the reply
             * only at its next progress) is woken now. */
            poke_client(ch, ch->slots[i]->rank);
            if (g_nfree_slots < 256)
                g_free_slots[g_nfree_slots++] = ch->slots[i];
            else
                free(ch->slots[i]);
        } else {
            ch->reqs[k] = ch->reqs[i];
            ch->slots[k] = ch->slots[i];
            k++;
        }
    }
    ch->nsends = k;
}

static void outbox_add(Core *c, int rank, int code, int64_t seq)
{
    Reply one = {rank, code, seq};
    record(c, monotonic(), -1, 0, 0, NULL, 0, &one, 1);
    if (c->channel && !c->channel->finished) {
        channel_send(c->channel, rank, code, seq);
        return;
    }
    GROW(c->outbox, c->noutbox, c->capout);
    c->outbox[c->noutbox].rank = rank;
    c->outbox[c->noutbox].code = code;
    c->outbox[c->noutbox].seq = seq;
    c->noutbox++;
}

static void channel_finish(Channel *ch)
{
    if (ch->nsends)
        mpi_check(MPI_Waitall(ch->nsends, ch->reqs, MPI_STATUSES_IGNORE), "MPI_Waitall of the last replies failed");
    for (int i = 0; i < ch->nsends; i++)
        free(ch->slots[i]);
    ch->nsends = 0;
    MPI_Cancel(&ch->recv);
    MPI_Wait(&ch->recv, MPI_STATUS_IGNORE);
    MPI_Request_free(&ch->recv);
    ch->finished = 1;
    Item *it = calloc(1, sizeof(Item));
    if (!it)
        die("out of memory");
    it->kind = I_FINISHED;
    it->channel = ch->id;
    push_item(it);
}

static int parse_keys(const uint8_t *area, int n, int64_t arg, KeyRef **keys, int *nkeys)
{
    if (!(arg & F_MULTI)) {
        *keys = xmalloc(sizeof(KeyRef));
        (*keys)[0].data = area;
        (*keys)[0].len = (size_t)n;
        *nkeys = 1;
        return 0;
    }
    int count = 0, at = 0;
    KeyRef *out = xmalloc((size_t)(n / 2 + 1) * sizeof(KeyRef));
    while (at < n) {
        if (at + 2 > n) {
            free(out);
            return -1;
        }
        int len = area[at] | (area[at + 1] << 8);
        at += 2;
        if (at + len > n) {
            free(out);
            return -1;
        }
        out[count].data = area + at;
        out[count].len = (size_t)len;
        count++;
        at += len;
    }
    *keys = out;
    *nkeys = count;
    return 0;
}

static int is_keyed(int op)
{
    return op == OP_READ || op == OP_WRITE || op == OP_RELEASE || op == OP_CANCEL || op == OP_BOUNDED ||
           op == OP_DOWNGRADE || op == OP_LOCKS;
}

static int is_native_op(int op)
{
    return op == OP_READ || op == OP_WRITE || op == OP_RELEASE || op == OP_CANCEL || op == OP_BOUNDED ||
           op == OP_DOWNGRADE || op == OP_HELLO || op == OP_CLOSE;
}

static void ask_drain(Channel *ch)
{
    if (ch->drain_asked || ch->core->ev.count < g_soft_events)
        return;
    ch->drain_asked = 1;
    Item *it = calloc(1, sizeof(Item));
    if (!it)
        die("out of memory");
    it->kind = I_DRAIN;
    it->channel = ch->id;
    push_item(it);
}

/* Hand a special reply (its text is Python's) to the Python thread. */
static void push_special(Channel *ch, int rank, int op, int64_t seq, const KeyRef *keys, int nkeys, Special *sp)
{
    Item *it = calloc(1, sizeof(Item));
    if (!it)
        die("out of memory");
    it->kind = I_SPECIAL;
    it->channel = ch->id;
    it->rank = rank;
    it->op = op;
    it->seq = seq;
    size_t total = 0;
    for (int k = 0; k < nkeys; k++)
        total += keys[k].len;
    it->data = xmalloc(total);
    it->keys = xmalloc((size_t)(nkeys + 1) * sizeof(KeyRef));
    size_t at = 0;
    for (int k = 0; k < nkeys; k++) {
        if (keys[k].len)
            memcpy(it->data + at, keys[k].data, keys[k].len);
        it->keys[k].data = it->data + at;
        it->keys[k].len = keys[k].len;
        at += keys[k].len;
    }
    it->nkeys = nkeys;
    it->sp = *sp;
    memset(sp, 0, sizeof *sp);
    push_item(it);
}

/* Handle at most one arrived request of ch (g_lock held); return whether one arrived.  A client's message is
 * never a reason to die: one too long for the receive (MPI_ERR_TRUNCATE; the communicator returns errors) or
 * with a header that does not fit it goes to Python, which refuses it (server/intake.py). */
static int channel_poll(Channel *ch)
{
    int flag = 0, truncated = 0;
    if (ch->finished)
        return 0;
    ch->status.MPI_ERROR = MPI_SUCCESS;
    int err = MPI_Test(&ch->recv, &flag, &ch->status);
    if (err == MPI_SUCCESS && flag)
        err = ch->status.MPI_ERROR;
    if (err != MPI_SUCCESS) {
        int cls = MPI_ERR_OTHER;
        MPI_Error_class(err, &cls);
        if (cls != MPI_ERR_TRUNCATE)
            die("MPI_Test of the request receive failed");
        flag = truncated = 1;
    }
    if (!flag) {
        if (ch->nsends)
            channel_reap(ch);
        return 0;
    }
    int src = ch->status.MPI_SOURCE, count = 0;
    MPI_Get_count(&ch->status, MPI_BYTE, &count);
    if (truncated || count < 0 || count > MAX_MESSAGE)
        count = MAX_MESSAGE;
    int64_t h[HEADER_WORDS];
    memcpy(h, ch->buf, sizeof h);
    int op = (int)h[0];
    int fast = !truncated && count >= HEADER_BYTES && h[0] == op && h[6] == count - HEADER_BYTES && h[4] == 0 &&
               !ch->deferred[src] && is_native_op(op) && !(is_keyed(op) && (h[2] & F_KEYS_IN_PAYLOAD));
    KeyRef *keys = NULL;
    int nkeys = 1;
    if (fast && is_keyed(op) && parse_keys(ch->buf + HEADER_BYTES, count - HEADER_BYTES, h[2], &keys, &nkeys))
        fast = 0;
    if (!fast) {
        Item *it = calloc(1, sizeof(Item));
        if (!it)
            die("out of memory");
        it->kind = I_MESSAGE;
        it->channel = ch->id;
        it->rank = src;
        it->count = count;
        it->truncated = truncated;
        it->data = xmalloc(MAX_MESSAGE);
        memcpy(it->data, ch->buf, MAX_MESSAGE);
        ch->deferred[src]++;
        push_item(it);
        mpi_check(MPI_Start(&ch->recv), "MPI_Start of the request receive failed");
        return 1;
    }
    Out out = {0};
    Special sp = {0};
    const KeyRef *use = keys ? keys : &DEFAULT_KEY;
    Core *c = ch->core;
    core_handle(c, src, op, h[1], h[2], h[3], use, nkeys, h[5], monotonic(), &out, &sp);
    for (int i = 0; i < out.n; i++)
        if (out.r[i].code != R_DEADLOCK && out.r[i].code != R_REFUSED)
            channel_send(ch, out.r[i].rank, out.r[i].code, out.r[i].seq);
    free(out.r);
    if (sp.kind)
        push_special(ch, src, op, h[1], use, nkeys, &sp);
    free(keys);
    ask_drain(ch);
    if (c->closed) {
        channel_finish(ch);
        return 1;
    }
    if (ch->nsends >= 16)
        channel_reap(ch);
    mpi_check(MPI_Start(&ch->recv), "MPI_Start of the request receive failed");
    return 1;
}

static int over_hard_bound(void)
{
    for (Channel *ch = g_channels; ch; ch = ch->next)
        if (!ch->finished && ch->core->ev.count >= g_hard_events)
            return 1;
    return 0;
}

static void nap(double seconds)
{
    struct timespec ts;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
}

/* -- the wake word -------------------------------------------------------------------------------------
 * One 32-bit word in POSIX shared memory per serving process (server/wake.py names and creates it).  The
 * service thread, idle past its hot window, stores 1 ("asleep"), polls its channels once more, and sleeps
 * on the word with FUTEX_WAIT for at most a cap.  A client on the same node that has just sent a request
 * loads the word and, only if it reads 1, swaps in 0 and calls FUTEX_WAKE: a client pays the system call
 * only when the server sleeps.  Requests stay MPI messages; the word is a hint, never a lock: a wake-up that
 * is missed costs at most the cap.  None is missed in the usual order of things: the server stores 1 before
 * its last poll, a client sends before it loads (with a full fence between), so either the poll sees the
 * request or the client sees the 1. */
#define WAKE_BYTES 64
static uint32_t *g_wake = NULL; /* this process's word, once it serves */
static long g_sleeps = 0, g_woken = 0; /* futex sleeps of a server thread; of them, ended by a client */
static double g_wake_longest = 0.1; /* cap of a futex sleep when every client of every channel can wake us */

static uint32_t *wake_map_bytes(const char *name, int create, size_t bytes)
{
    int fd = shm_open(name, create ? O_RDWR | O_CREAT | O_EXCL : O_RDWR, 0600);
    if (fd < 0)
        return NULL;
    if (create && ftruncate(fd, (off_t)bytes) != 0) {
        int saved = errno;
        close(fd);
        shm_unlink(name);
        errno = saved;
        return NULL;
    }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int saved = errno;
    close(fd);
    if (p == MAP_FAILED) {
        if (create)
            shm_unlink(name);
        errno = saved;
        return NULL;
    }
    return (uint32_t *)p;
}

static uint32_t *wake_map(const char *name, int create)
{
    return wake_map_bytes(name, create, WAKE_BYTES);
}

static long futex(uint32_t *word, int op, uint32_t value, const struct timespec *timeout)
{
    return syscall(SYS_futex, word, op, value, timeout, NULL, 0);
}

/* A client has sent a request: wake the server if it sleeps.  Returns whether it did. */
static int wake_poke(uint32_t *word)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the request's stores before the load of the word */
    if (__atomic_load_n(word, __ATOMIC_RELAXED) != 1 || __atomic_exchange_n(word, 0, __ATOMIC_SEQ_CST) != 1)
        return 0;
    futex(word, FUTEX_WAKE, INT_MAX, NULL);
    return 1;
}

/* Sleep on the word (armed to 1 before the caller's last poll) for at most seconds; disarm it.
 * Returns whether a client woke us (it swapped in the 0). */
static int wake_sleep_on(uint32_t *word, double seconds)
{
    struct timespec ts;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    futex(word, FUTEX_WAIT, 1, &ts);
    return __atomic_exchange_n(word, 0, __ATOMIC_SEQ_CST) == 0;
}

static int wake_sleep(uint32_t *word, double seconds) /* a server thread's sleep, counted */
{
    int woken = wake_sleep_on(word, seconds);
    __atomic_add_fetch(&g_sleeps, 1, __ATOMIC_RELAXED);
    if (woken)
        __atomic_add_fetch(&g_woken, 1, __ATOMIC_RELAXED);
    return woken;
}

/* A channel's client words: one per rank (a cache line each) in a segment the master makes for the channel.
 * A client waiting for a reply sleeps on its word; the server pokes it after sending the client a reply. */
#define WORD_STRIDE 16 /* uint32_t: 64 bytes */

static void poke_client(Channel *ch, int rank)
{
    if (ch->words && rank >= 0 && rank < ch->nwords)
        wake_poke(&ch->words[(size_t)rank * WORD_STRIDE]);
}

/* Wake our own server thread (pause, close): it must look at the world now, not after its sleep. */
static void wake_self(void)
{
    if (g_wake) {
        __atomic_store_n(g_wake, 0, __ATOMIC_SEQ_CST);
        futex(g_wake, FUTEX_WAKE, INT_MAX, NULL);
    }
}

/* The cap of a futex sleep: long if every client of every open channel can wake us, else the idle cap
 * (a client on another node cannot reach the word: the server must come and look).  g_lock held. */
static double sleep_cap(void)
{
    for (Channel *ch = g_channels; ch; ch = ch->next)
        if (!ch->finished && !ch->wakeable)
            return g_idle_longest;
    return g_wake_longest;
}

/* Join a service thread that has left its loop (g_lock held; it takes g_lock no more). */
static void reap_thread(void)
{
    if (g_thread_joinable && !g_thread_running) {
        pthread_join(g_thread, NULL);
        g_thread_joinable = 0;
    }
}

/* The backoff: after a request, poll in a sched_yield loop for g_spin seconds, then every g_shortest
 * seconds until g_hot after it (a client's think time: its next request is seen within microseconds),
 * then sleep twice as long each time up to g_longest, and up to g_idle_longest once g_idle_after has
 * passed without a request (the first grant after idling waits at most that long). */
static void *native_thread(void *unused)
{
    (void)unused;
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0); /* sleeps of microseconds, not the default 50 us more */
    sigset_t all; /* signals are the application's: they go to its threads, never interrupt this one's MPI calls */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    double last_work = monotonic(), sleep = g_shortest, cap = g_idle_longest;
    int armed = 0; /* the wake word says "asleep"; one more poll before the futex sleep */
    for (;;) {
        int busy = 0, open = 0, sending = 0;
        pthread_mutex_lock(&g_lock);
        while (over_hard_bound() && !g_paused) { /* never unbounded memory: wait for Python to drain */
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += 1000000;
            if (until.tv_nsec >= 1000000000) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&g_drained, &g_lock, &until);
        }
        if (g_paused) {
            g_thread_running = 0;
            pthread_mutex_unlock(&g_lock);
            break;
        }
        for (Channel *ch = g_channels; ch; ch = ch->next) {
            if (ch->finished)
                continue;
            open = 1;
            for (int i = 0; i < 16 && channel_poll(ch); i++) { /* serve what has arrived, up to a bound */
                busy = 1;
                if (ch->finished)
                    break;
            }
            if (!ch->finished && ch->nsends) { /* progress our replies: no sleep while one is still going */
                channel_reap(ch);
                sending |= ch->nsends > 0;
            }
        }
        if (!open) {
            g_thread_running = 0;
            pthread_mutex_unlock(&g_lock);
            if (armed)
                __atomic_store_n(g_wake, 0, __ATOMIC_SEQ_CST);
            break;
        }
        if (g_wake)
            cap = sleep_cap();
        pthread_mutex_unlock(&g_lock);
        g_wakeups++;
        if (g_want)
            sched_yield(); /* a Python thread waits for the lock: let it in */
        double now = monotonic();
        if (busy) {
            last_work = now;
            sleep = g_shortest;
            if (armed) {
                __atomic_store_n(g_wake, 0, __ATOMIC_SEQ_CST);
                armed = 0;
            }
            continue;
        }
        double since = now - last_work;
        if (since < g_spin) {
            sched_yield();
            continue;
        }
        if (since < g_hot) {
            nap(g_shortest);
            continue;
        }
        if (armed && sending) { /* not asleep while a reply is still going out: clients need not poke */
            __atomic_store_n(g_wake, 0, __ATOMIC_SEQ_CST);
            armed = 0;
        }
        if (g_wake && !sending) { /* idle: sleep until a client wakes us, or the cap */
            if (!armed) {
                __atomic_store_n(g_wake, 1, __ATOMIC_SEQ_CST);
                armed = 1;
                continue; /* a request sent before the store was seen must be seen by this poll */
            }
            if (wake_sleep(g_wake, cap)) { /* a client poked: poll hot, its request may take more than one poll */
                last_work = monotonic();
                sleep = g_shortest;
            }
            armed = 0;
            continue;
        }
        nap(sleep);
        double most = since > g_idle_after ? g_idle_longest : g_longest;
        sleep = sleep * 2 < most ? sleep * 2 : most;
    }
    return NULL;
}

/* -- Python objects ----------------------------------------------------------------------------------- */
static void lock_world(void)
{
    if (pthread_mutex_trylock(&g_lock) == 0)
        return;
    Py_BEGIN_ALLOW_THREADS
    __atomic_add_fetch(&g_want, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&g_lock);
    __atomic_sub_fetch(&g_want, 1, __ATOMIC_SEQ_CST);
    Py_END_ALLOW_THREADS
}

typedef struct {
    PyObject_HEAD Graph *graph;
} GraphObject;

typedef struct {
    PyObject_HEAD Core *core;
    PyObject *graph;
} CoreObject;

static PyTypeObject GraphType;
static PyTypeObject CoreType;

static PyObject *Graph_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist))
        return NULL;
    GraphObject *self = (GraphObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->graph = calloc(1, sizeof(Graph));
    if (!self->graph) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->graph->refs = 1;
    return (PyObject *)self;
}

static void graph_unref(Graph *g)
{
    if (--g->refs)
        return;
    for (int i = 0; i < g->n; i++)
        if (g->nodes[i]) {
            free(g->nodes[i]->m);
            free(g->nodes[i]);
        }
    free(g->nodes);
    free(g->buckets);
    reordered_clear(g);
    free(g->re);
    free(g);
}

static void Graph_dealloc(GraphObject *self)
{
    if (self->graph) {
        lock_world(); /* never wait for g_lock holding the GIL: its holder may be waiting for the GIL */
        graph_unref(self->graph);
        pthread_mutex_unlock(&g_lock);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Graph_arrivals(GraphObject *self, void *closure)
{
    (void)closure;
    return PyFloat_FromDouble(self->graph->arrivals);
}

static PyGetSetDef Graph_getset[] = {
    {"arrivals", (getter)Graph_arrivals, NULL, "The last arrival number given to a queued request.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject GraphType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mpilock.server._native.Graph",
    .tp_basicsize = sizeof(GraphObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The wait-for graph shared by the native cores of a process.",
    .tp_new = Graph_new,
    .tp_dealloc = (destructor)Graph_dealloc,
    .tp_getset = Graph_getset,
};

static void core_free(Core *c)
{
    KeyState *s = c->first;
    while (s) {
        KeyState *next = s->next;
        state_free(s);
        s = next;
    }
    for (int r = 0; r < c->nh; r++)
        if (c->waiting[r])
            request_free(c->waiting[r]);
    graph_leave(c->graph, c);
    graph_unref(c->graph);
    for (int r = 0; r < c->nh; r++)
        free(c->nodes[r]); /* left the graph: its own copies */
    free(c->hrank);
    free(c->hslot);
    free(c->hkeys);
    free(c->hvals);
    free(c->buckets);
    free(c->member);
    free(c->waiting);
    free(c->held);
    free(c->nodes);
    free(c->closing);
    free(c->closing_seq);
    free(c->outbox);
    free(c->ev.buf);
    free(c);
}

static void core_unref(Core *c)
{
    if (--c->refs == 0)
        core_free(c);
}

static PyObject *Core_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"size", "members", "graph", "record", NULL};
    int size, rec = 0;
    PyObject *members, *graph;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOO!|p", kwlist, &size, &members, &GraphType, &graph, &rec))
        return NULL;
    if (size < 1) {
        PyErr_SetString(PyExc_ValueError, "size must be >= 1");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(members, "members must be a sequence of ranks");
    if (!seq)
        return NULL;
    Core *c = calloc(1, sizeof(Core));
    if (!c) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    c->size = size;
    c->member = calloc((size_t)size, 1);
    c->waiting = calloc((size_t)size, sizeof(Request *));
    c->held = calloc((size_t)size, sizeof(int64_t));
    c->nodes = calloc((size_t)size, sizeof(Node *));
    c->closing = calloc((size_t)size, 1);
    c->closing_seq = calloc((size_t)size, sizeof(int64_t));
    c->hrank = xmalloc((size_t)size * sizeof(int));
    c->hslot = calloc((size_t)size, sizeof(int));
    c->nh = c->caph = size;
    for (int r = 0; r < size; r++)
        c->hrank[r] = r;
    c->nbuckets = 16;
    c->buckets = calloc(c->nbuckets, sizeof(KeyState *));
    c->record = rec;
    if (!c->member || !c->waiting || !c->held || !c->nodes || !c->closing || !c->closing_seq || !c->buckets)
        die("out of memory");
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        long r = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (r == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            free(c->member);
            free(c->waiting);
            free(c->held);
            free(c->nodes);
            free(c->closing);
            free(c->closing_seq);
            free(c->hrank);
            free(c->hslot);
            free(c->buckets);
            free(c);
            return NULL;
        }
        if (r >= 0 && r < size && !c->member[r]) {
            c->member[r] = 1;
            c->nmembers++;
        }
    }
    Py_DECREF(seq);
    CoreObject *self = (CoreObject *)type->tp_alloc(type, 0);
    if (!self) {
        free(c);
        return NULL;
    }
    lock_world(); /* never wait for g_lock holding the GIL: its holder may be waiting for the GIL */
    c->uid = ++g_uids;
    c->graph = ((GraphObject *)graph)->graph;
    c->graph->refs++;
    state_new(c, (const uint8_t *)"", 0, 0); /* the default lock, always there */
    graph_join(c->graph, c);
    c->refs = 1;
    pthread_mutex_unlock(&g_lock);
    self->core = c;
    Py_INCREF(graph);
    self->graph = graph;
    return (PyObject *)self;
}

static void Core_dealloc(CoreObject *self)
{
    if (self->core) {
        lock_world(); /* never wait for g_lock holding the GIL: its holder may be waiting for the GIL */
        core_unref(self->core);
        pthread_mutex_unlock(&g_lock);
    }
    Py_XDECREF(self->graph);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Key tuple -> KeyRef array pointing into the bytes objects (kept alive by the caller's tuple). */
static KeyRef *keyrefs(PyObject *keys, int *n)
{
    if (!PyTuple_Check(keys)) {
        PyErr_SetString(PyExc_TypeError, "keys must be a tuple of bytes");
        return NULL;
    }
    *n = (int)PyTuple_GET_SIZE(keys);
    KeyRef *out = PyMem_Malloc(sizeof(KeyRef) * (size_t)(*n + 1));
    if (!out)
        return (KeyRef *)PyErr_NoMemory();
    for (int i = 0; i < *n; i++) {
        PyObject *k = PyTuple_GET_ITEM(keys, i);
        if (!PyBytes_Check(k)) {
            PyMem_Free(out);
            PyErr_SetString(PyExc_TypeError, "keys must be a tuple of bytes");
            return NULL;
        }
        out[i].data = (const uint8_t *)PyBytes_AS_STRING(k);
        out[i].len = (size_t)PyBytes_GET_SIZE(k);
    }
    return out;
}

static PyObject *replies_list(const Reply *r, int n)
{
    PyObject *list = PyList_New(n);
    if (!list)
        return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *t = Py_BuildValue("(iiLii)", r[i].rank, r[i].code, (long long)r[i].seq, 0, 0);
        if (!t) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, t);
    }
    return list;
}

/* A special reply as Python data: ("error", kind, key index, a, b) / ("refused", key, limit, asked, users) /
 * ("deadlock", [edge, ...]) with edge = (core uid, waiter, target, queued, waiter world, key, hold mode,
 * hold site, wait mode, wait site, waiter rank, waiter slot); waiter and target are holder ids. */
static PyObject *special_object(Special *sp)
{
    if (sp->kind == S_ERROR)
        return Py_BuildValue("(siiLL)", "error", sp->error, sp->key, (long long)sp->a, (long long)sp->b);
    if (sp->kind == S_REFUSED) {
        PyObject *users = PyList_New(sp->nusers);
        if (!users)
            return NULL;
        for (int i = 0; i < sp->nusers; i++)
            PyList_SET_ITEM(users, i, PyLong_FromLong(sp->users[i]));
        return Py_BuildValue("(siLLN)", "refused", sp->key, (long long)sp->a, (long long)sp->b, users);
    }
    if (sp->kind == S_DEADLOCK) {
        PyObject *edges = PyList_New(sp->ncycle);
        if (!edges)
            return NULL;
        for (int i = 0; i < sp->ncycle; i++) {
            CycleEdge *e = &sp->cycle[i];
            PyObject *t = Py_BuildValue("(KiiiLy#iLiLii)", (unsigned long long)e->core_uid, e->waiter, e->target,
                                        e->queued, (long long)e->waiter_world, (const char *)e->key,
                                        (Py_ssize_t)e->len, e->hold_mode, (long long)e->hold_site, e->wait_mode,
                                        (long long)e->wait_site, e->waiter_rank, e->waiter_slot);
            if (!t) {
                Py_DECREF(edges);
                return NULL;
            }
            PyList_SET_ITEM(edges, i, t);
        }
        return Py_BuildValue("(sN)", "deadlock", edges);
    }
    Py_RETURN_NONE;
}

static PyObject *Core_handle(CoreObject *self, PyObject *args)
{
    int rank, op;
    long long seq, arg, aux, site;
    double now;
    PyObject *keys;
    if (!PyArg_ParseTuple(args, "iiLLLO!Ld", &rank, &op, &seq, &arg, &aux, &PyTuple_Type, &keys, &site, &now))
        return NULL;
    int nkeys;
    KeyRef *refs = keyrefs(keys, &nkeys);
    if (!refs)
        return NULL;
    Out out = {0};
    Special sp = {0};
    lock_world();
    Core *c = self->core;
    core_handle(c, rank, op, seq, arg, aux, refs, nkeys, site, now, &out, &sp);
    Channel *ch = c->channel;
    if (ch && !ch->finished) { /* attached: plain replies go out from here, the caller sends the rest */
        int k = 0;
        for (int i = 0; i < out.n; i++) {
            if (out.r[i].code == R_DEADLOCK || out.r[i].code == R_REFUSED)
                out.r[k++] = out.r[i];
            else
                channel_send(ch, out.r[i].rank, out.r[i].code, out.r[i].seq);
        }
        out.n = k;
        if (c->closed)
            channel_finish(ch);
        else
            ask_drain(ch);
    }
    pthread_mutex_unlock(&g_lock);
    PyMem_Free(refs);
    PyObject *replies = replies_list(out.r, out.n);
    free(out.r);
    PyObject *special = replies ? special_object(&sp) : NULL;
    special_clear(&sp);
    if (!special) {
        Py_XDECREF(replies);
        return NULL;
    }
    return Py_BuildValue("(NN)", replies, special);
}

static PyObject *Core_take_outbox(CoreObject *self, PyObject *unused)
{
    (void)unused;
    lock_world();
    Core *c = self->core;
    int n = c->noutbox;
    Reply *r = c->outbox;
    c->outbox = NULL;
    c->noutbox = c->capout = 0;
    pthread_mutex_unlock(&g_lock);
    PyObject *list = replies_list(r, n);
    free(r);
    return list;
}

static PyObject *hold_object(const Hold *h)
{
    if (h->has_before)
        return Py_BuildValue("(LLd(LLdO))", (long long)h->seq, (long long)h->site, h->since, (long long)h->bseq,
                             (long long)h->bsite, h->bsince, Py_None);
    return Py_BuildValue("(LLdO)", (long long)h->seq, (long long)h->site, h->since, Py_None);
}

static PyObject *request_object(Request *r)
{
    PyObject *keys = PyTuple_New(r->nkeys);
    if (!keys)
        return NULL;
    for (int k = 0; k < r->nkeys; k++) {
        PyObject *b = PyBytes_FromStringAndSize((const char *)r->keys[k]->key, (Py_ssize_t)r->keys[k]->len);
        if (!b) {
            Py_DECREF(keys);
            return NULL;
        }
        PyTuple_SET_ITEM(keys, k, b);
    }
    return Py_BuildValue("(iLiLddN)", r->rank, (long long)r->seq, r->mode, (long long)r->site, r->since, r->priority,
                         keys);
}

/* The state as plain data (built under the GIL with g_lock held: nothing here calls back into this module). */
static PyObject *core_snapshot(Core *c)
{
    PyObject *keys = PyList_New(0), *waiting = PyDict_New(), *held = PyList_New(c->nh),
             *nodes = PyList_New(c->nh), *closing = PyDict_New();
    if (!keys || !waiting || !held || !nodes || !closing)
        goto fail;
    for (KeyState *s = c->first; s; s = s->next) {
        PyObject *readers = PyList_New(s->nreaders), *writers = PyList_New(s->nwriters),
                 *wreaders = PyList_New(s->nwreaders);
        if (!readers || !writers || !wreaders) {
            Py_XDECREF(readers);
            Py_XDECREF(writers);
            Py_XDECREF(wreaders);
            goto fail;
        }
        for (int i = 0; i < s->nreaders; i++)
            PyList_SET_ITEM(readers, i, Py_BuildValue("(iN)", s->rranks[i], hold_object(&s->rholds[i])));
        for (int i = 0; i < s->nwriters; i++)
            PyList_SET_ITEM(writers, i, request_object(s->writers[i]));
        for (int i = 0; i < s->nwreaders; i++)
            PyList_SET_ITEM(wreaders, i, request_object(s->wreaders[i]));
        PyObject *wh = s->writer >= 0 ? hold_object(&s->write_hold) : Py_NewRef(Py_None);
        PyObject *entry = Py_BuildValue("(y#LiNNNNi)", (const char *)s->key, (Py_ssize_t)s->len, (long long)s->limit,
                                        s->writer, wh, readers, writers, wreaders, s->early);
        if (!entry || PyList_Append(keys, entry) < 0) {
            Py_XDECREF(entry);
            goto fail;
        }
        Py_DECREF(entry);
    }
    for (int r = 0; r < c->nh; r++) {
        if (c->waiting[r]) {
            PyObject *k = PyLong_FromLong(r), *v = PyLong_FromLongLong(c->waiting[r]->seq);
            if (!k || !v || PyDict_SetItem(waiting, k, v) < 0) {
                Py_XDECREF(k);
                Py_XDECREF(v);
                goto fail;
            }
            Py_DECREF(k);
            Py_DECREF(v);
        }
        if (r < c->size && c->closing[r]) {
            PyObject *k = PyLong_FromLong(r), *v = PyLong_FromLongLong(c->closing_seq[r]);
            if (!k || !v || PyDict_SetItem(closing, k, v) < 0) {
                Py_XDECREF(k);
                Py_XDECREF(v);
                goto fail;
            }
            Py_DECREF(k);
            Py_DECREF(v);
        }
        PyList_SET_ITEM(held, r, PyLong_FromLongLong(c->held[r]));
        PyList_SET_ITEM(nodes, r, Py_BuildValue("(LL)", (long long)c->nodes[r]->world, (long long)c->nodes[r]->token));
    }
    return Py_BuildValue("(NNNNNid)", keys, waiting, held, nodes, closing, c->closed, c->graph->arrivals);
fail:
    Py_XDECREF(keys);
    Py_XDECREF(waiting);
    Py_XDECREF(held);
    Py_XDECREF(nodes);
    Py_XDECREF(closing);
    return NULL;
}

static PyObject *Core_snapshot(CoreObject *self, PyObject *unused)
{
    (void)unused;
    lock_world();
    PyObject *result = core_snapshot(self->core);
    pthread_mutex_unlock(&g_lock);
    return result;
}

static PyObject *events_list(const uint8_t *buf, size_t n)
{
    PyObject *list = PyList_New(0);
    size_t at = 0;
    while (list && at < n) {
        EventHead h;
        memcpy(&h, buf + at, sizeof h);
        at += sizeof h;
        PyObject *keys = PyTuple_New(h.nkeys);
        if (!keys)
            goto fail;
        for (uint32_t k = 0; k < h.nkeys; k++) {
            uint32_t len;
            memcpy(&len, buf + at, sizeof len);
            at += sizeof len;
            PyTuple_SET_ITEM(keys, k, PyBytes_FromStringAndSize((const char *)buf + at, len));
            at += len;
        }
        PyObject *replies = PyList_New(h.nreplies);
        if (!replies) {
            Py_DECREF(keys);
            goto fail;
        }
        for (uint32_t i = 0; i < h.nreplies; i++) {
            int32_t rc[2];
            int64_t seq;
            memcpy(rc, buf + at, sizeof rc);
            memcpy(&seq, buf + at + sizeof rc, sizeof seq);
            at += sizeof rc + sizeof seq;
            PyList_SET_ITEM(replies, i, Py_BuildValue("(iiLii)", rc[0], rc[1], (long long)seq, 0, 0));
        }
        PyObject *event = Py_BuildValue("(diiLNN)", h.now, h.rank, h.op, (long long)h.seq, keys, replies);
        if (!event || PyList_Append(list, event) < 0) {
            Py_XDECREF(event);
            goto fail;
        }
        Py_DECREF(event);
    }
    return list;
fail:
    Py_XDECREF(list);
    return NULL;
}

static PyObject *Core_drain(CoreObject *self, PyObject *unused)
{
    (void)unused;
    lock_world();
    Core *c = self->core;
    Events ev = c->ev;
    memset(&c->ev, 0, sizeof c->ev);
    if (c->channel)
        c->channel->drain_asked = 0;
    pthread_cond_broadcast(&g_drained);
    pthread_mutex_unlock(&g_lock);
    PyObject *list = events_list(ev.buf, ev.n);
    free(ev.buf);
    return list;
}

static PyObject *Core_holder(CoreObject *self, PyObject *args)
{
    int rank;
    long long slot;
    if (!PyArg_ParseTuple(args, "iL", &rank, &slot))
        return NULL;
    if (rank < 0 || rank >= self->core->size || slot < 0 || slot >= (1LL << 23)) {
        PyErr_SetString(PyExc_ValueError, "no such rank or slot");
        return NULL;
    }
    lock_world();
    Core *c = self->core;
    int h = holder_find(c, rank, slot);
    if (h < 0 && !c->closed)
        h = holder_add(c, rank, slot);
    pthread_mutex_unlock(&g_lock);
    return PyLong_FromLong(h);
}

static PyObject *Core_who(CoreObject *self, PyObject *args)
{
    int h;
    if (!PyArg_ParseTuple(args, "i", &h))
        return NULL;
    lock_world();
    Core *c = self->core;
    int ok = h >= 0 && h < c->nh, rank = ok ? c->hrank[h] : 0, slot = ok ? c->hslot[h] : 0;
    pthread_mutex_unlock(&g_lock);
    if (!ok) {
        PyErr_SetString(PyExc_IndexError, "no such holder");
        return NULL;
    }
    return Py_BuildValue("(ii)", rank, slot);
}

/* Bytes the core allocated per holder (a count, not a measurement): the per-holder arrays, the holder map
 * and, while joined, each holder's graph node (with its member list and its places in the graph). */
static PyObject *Core_holder_bytes(CoreObject *self, void *closure)
{
    (void)closure;
    lock_world();
    Core *c = self->core;
    size_t n = (size_t)c->caph * (2 * sizeof(int) + sizeof(Request *) + sizeof(int64_t) + sizeof(Node *));
    n += c->hcap * (sizeof(int64_t) + sizeof(int));
    Graph *g = c->graph;
    for (int h = 0; h < c->nh; h++) {
        Node *node = c->nodes[h];
        n += sizeof(Node) + (size_t)node->capm * sizeof(Member) / (size_t)(node->nm ? node->nm : 1);
        if (c->joined && g->n)
            n += sizeof(Node *) * ((size_t)g->cap + g->nbuckets) / (size_t)g->count;
    }
    pthread_mutex_unlock(&g_lock);
    return PyLong_FromSize_t(n);
}

static PyObject *Core_holders(CoreObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(self->core->nh);
}

static PyObject *Core_closed(CoreObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->core->closed);
}

static PyObject *Core_uid(CoreObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->core->uid);
}

static PyMethodDef Core_methods[] = {
    {"handle", (PyCFunction)Core_handle, METH_VARARGS,
     "handle(rank, op, seq, arg, aux, keys, site, now) -> (replies, special): apply one lock request."},
    {"take_outbox", (PyCFunction)Core_take_outbox, METH_NOARGS,
     "Return and forget the replies that another core's request caused here."},
    {"snapshot", (PyCFunction)Core_snapshot, METH_NOARGS, "The whole state as plain data."},
    {"drain", (PyCFunction)Core_drain, METH_NOARGS, "Return and forget the recorded events."},
    {"holder", (PyCFunction)Core_holder, METH_VARARGS,
     "holder(rank, slot) -> the id of thread slot of rank, numbered now if new (-1 once closed)."},
    {"who", (PyCFunction)Core_who, METH_VARARGS, "who(holder) -> (rank, slot) of a holder id."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Core_getset[] = {
    {"closed", (getter)Core_closed, NULL, "Whether every member rank has closed.", NULL},
    {"uid", (getter)Core_uid, NULL, "A number unique to this core in the process.", NULL},
    {"holders", (getter)Core_holders, NULL, "Number of holders (threads of ranks) numbered so far.", NULL},
    {"holder_bytes", (getter)Core_holder_bytes, NULL, "Bytes allocated for the holders (arrays, map, graph nodes).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mpilock.server._native.Core",
    .tp_basicsize = sizeof(CoreObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The lock state of one controller (the rules of server/core.py).",
    .tp_new = Core_new,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
    .tp_getset = Core_getset,
};

/* -- module functions: channels and the thread -------------------------------------------------------- */
static Channel *find_channel(int id)
{
    for (Channel *ch = g_channels; ch; ch = ch->next)
        if (ch->id == id)
            return ch;
    return NULL;
}

static PyObject *mod_attach(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *core;
    long long fhandle;
    if (!PyArg_ParseTuple(args, "O!L", &CoreType, &core, &fhandle))
        return NULL;
    Core *c = ((CoreObject *)core)->core;
    MPI_Comm comm = MPI_Comm_f2c((MPI_Fint)fhandle);
    int size = 0;
    if (comm == MPI_COMM_NULL || MPI_Comm_size(comm, &size) != MPI_SUCCESS || size != c->size) {
        PyErr_SetString(PyExc_ValueError, "not the communicator of this core");
        return NULL;
    }
    Channel *ch = calloc(1, sizeof(Channel));
    if (!ch)
        return PyErr_NoMemory();
    ch->deferred = calloc((size_t)size, sizeof(int));
    if (!ch->deferred) {
        free(ch);
        return PyErr_NoMemory();
    }
    ch->comm = comm;
    ch->core = c;
    lock_world();
    if (c->channel) {
        pthread_mutex_unlock(&g_lock);
        free(ch->deferred);
        free(ch);
        PyErr_SetString(PyExc_ValueError, "this core is served already");
        return NULL;
    }
    ch->id = g_next_channel++;
    if (MPI_Recv_init(ch->buf, MAX_MESSAGE, MPI_BYTE, MPI_ANY_SOURCE, TAG_REQUEST, comm, &ch->recv) != MPI_SUCCESS ||
        MPI_Start(&ch->recv) != MPI_SUCCESS) {
        pthread_mutex_unlock(&g_lock);
        free(ch->deferred);
        free(ch);
        PyErr_SetString(PyExc_RuntimeError, "could not post the request receive");
        return NULL;
    }
    c->channel = ch;
    c->refs++;
    ch->next = g_channels;
    g_channels = ch;
    pthread_mutex_unlock(&g_lock);
    return PyLong_FromLong(ch->id);
}

static PyObject *mod_start(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    lock_world();
    int started = 0;
    if (!g_thread_running && !g_paused) {
        reap_thread(); /* one that has stopped but was not joined yet */
        if (pthread_create(&g_thread, NULL, native_thread, NULL) == 0) {
            g_thread_running = 1;
            g_thread_joinable = 1;
            started = 1;
        } else {
            pthread_mutex_unlock(&g_lock);
            PyErr_SetString(PyExc_RuntimeError, "could not start the native server thread");
            return NULL;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return PyBool_FromLong(started);
}

/* MPI_Finalize has begun (MPICH no longer serializes MPI calls then): stop the service thread for good and
 * wake a Python thread waiting in next_item.  From now on the caller polls with help() and takes the items. */
static PyObject *mod_pause(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    lock_world();
    g_paused = 1;
    wake_self();
    pthread_cond_broadcast(&g_items_ready);
    pthread_cond_broadcast(&g_drained);
    pthread_mutex_unlock(&g_lock);
    Py_RETURN_NONE;
}

/* Join the service thread once it has stopped (no open channel left); True if it is gone. */
static PyObject *mod_join(PyObject *mod, PyObject *args)
{
    (void)mod;
    double timeout;
    if (!PyArg_ParseTuple(args, "d", &timeout))
        return NULL;
    double until = monotonic() + timeout;
    int gone = 0;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        pthread_mutex_lock(&g_lock);
        if (!g_thread_running) {
            reap_thread();
            gone = 1;
        }
        pthread_mutex_unlock(&g_lock);
        if (gone || monotonic() > until)
            break;
        nap(0.0002);
    }
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(gone);
}

/* Forget finished channels (after Python has seen them finish). */
static PyObject *mod_release(PyObject *mod, PyObject *args)
{
    (void)mod;
    int id;
    if (!PyArg_ParseTuple(args, "i", &id))
        return NULL;
    lock_world();
    Channel **at = &g_channels;
    while (*at && (*at)->id != id)
        at = &(*at)->next;
    Channel *ch = *at;
    if (ch && ch->finished) {
        *at = ch->next;
        ch->core->channel = NULL;
        core_unref(ch->core);
        Py_XDECREF(ch->words_owner);
        free(ch->reqs);
        free(ch->slots);
        free(ch->deferred);
        free(ch);
    }
    pthread_mutex_unlock(&g_lock);
    Py_RETURN_NONE;
}

static PyObject *mod_help(PyObject *mod, PyObject *args)
{
    (void)mod;
    int id;
    if (!PyArg_ParseTuple(args, "i", &id))
        return NULL;
    if (pthread_mutex_trylock(&g_lock) != 0)
        Py_RETURN_FALSE;
    Channel *ch = find_channel(id);
    int served = 0;
    if (ch && !ch->finished && ch->core->ev.count < g_hard_events)
        served = channel_poll(ch);
    pthread_mutex_unlock(&g_lock);
    return PyBool_FromLong(served);
}

static PyObject *mod_undefer(PyObject *mod, PyObject *args)
{
    (void)mod;
    int id, rank;
    if (!PyArg_ParseTuple(args, "ii", &id, &rank))
        return NULL;
    lock_world();
    Channel *ch = find_channel(id);
    if (ch && ch->deferred[rank] > 0)
        ch->deferred[rank]--;
    pthread_mutex_unlock(&g_lock);
    Py_RETURN_NONE;
}

static PyObject *item_object(Item *it)
{
    switch (it->kind) {
    case I_MESSAGE:
        return Py_BuildValue("(iiiy#i)", it->kind, it->channel, it->rank, (const char *)it->data,
                             (Py_ssize_t)it->count, it->truncated);
    case I_SPECIAL: {
        PyObject *keys = PyTuple_New(it->nkeys);
        if (!keys)
            return NULL;
        for (int k = 0; k < it->nkeys; k++)
            PyTuple_SET_ITEM(keys, k, PyBytes_FromStringAndSize((const char *)it->keys[k].data,
                                                                (Py_ssize_t)it->keys[k].len));
        PyObject *sp = special_object(&it->sp);
        if (!sp) {
            Py_DECREF(keys);
            return NULL;
        }
        return Py_BuildValue("(iiiiLNN)", it->kind, it->channel, it->rank, it->op, (long long)it->seq, keys, sp);
    }
    default:
        return Py_BuildValue("(ii)", it->kind, it->channel);
    }
}

static void item_free(Item *it)
{
    free(it->data);
    free(it->keys);
    special_clear(&it->sp);
    free(it);
}

/* Wait (GIL released) up to timeout seconds for something Python must do; None if nothing came. */
static PyObject *mod_next_item(PyObject *mod, PyObject *args)
{
    (void)mod;
    double timeout;
    if (!PyArg_ParseTuple(args, "d", &timeout))
        return NULL;
    Item *it = NULL;
    Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&g_lock);
    if (!g_items && timeout > 0) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        double whole = floor(timeout);
        until.tv_sec += (time_t)whole;
        until.tv_nsec += (long)((timeout - whole) * 1e9);
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        while (!g_items && !g_paused) {
            if (pthread_cond_timedwait(&g_items_ready, &g_lock, &until) == ETIMEDOUT)
                break;
        }
    }
    it = g_items;
    if (it) {
        g_items = it->next;
        if (!g_items)
            g_items_tail = &g_items;
    }
    pthread_mutex_unlock(&g_lock);
    Py_END_ALLOW_THREADS if (!it) Py_RETURN_NONE;
    PyObject *result = item_object(it);
    item_free(it);
    return result;
}

static PyObject *mod_configure(PyObject *mod, PyObject *args, PyObject *kwds)
{
    (void)mod;
    static char *kwlist[] = {"spin", "shortest", "hot", "longest", "idle_after", "idle_longest", "soft_events",
                             "hard_events", "wake_longest", NULL};
    double spin = g_spin, shortest = g_shortest, hot = g_hot, longest = g_longest, idle_after = g_idle_after,
           idle_longest = g_idle_longest, wake_longest = g_wake_longest;
    Py_ssize_t soft = (Py_ssize_t)g_soft_events, hard = (Py_ssize_t)g_hard_events;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|ddddddnnd", kwlist, &spin, &shortest, &hot, &longest, &idle_after,
                                     &idle_longest, &soft, &hard, &wake_longest))
        return NULL;
    lock_world();
    g_wake_longest = wake_longest;
    g_spin = spin;
    g_shortest = shortest;
    g_hot = hot;
    g_longest = longest;
    g_idle_after = idle_after;
    g_idle_longest = idle_longest;
    g_soft_events = (size_t)soft;
    g_hard_events = (size_t)hard;
    pthread_mutex_unlock(&g_lock);
    Py_RETURN_NONE;
}

static PyObject *mod_library_version(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    char text[MPI_MAX_LIBRARY_VERSION_STRING];
    int n = 0;
    if (MPI_Get_library_version(text, &n) != MPI_SUCCESS)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(text, n, "replace");
}

static PyObject *mod_compiled_against(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
#if defined(MPICH_VERSION)
    return Py_BuildValue("(ss)", "MPICH", MPICH_VERSION);
#elif defined(OMPI_MAJOR_VERSION)
    char v[64];
    snprintf(v, sizeof v, "%d.%d.%d", OMPI_MAJOR_VERSION, OMPI_MINOR_VERSION, OMPI_RELEASE_VERSION);
    return Py_BuildValue("(ss)", "Open MPI", v);
#else
    return Py_BuildValue("(ss)", "unknown", "");
#endif
}

static PyObject *mod_wakeups(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    return PyLong_FromLong(g_wakeups);
}

/* Seconds per request of READ+RELEASE pairs applied by a fresh core, recording on: the core's share of the
 * server's work per request, without MPI (for python -m mpilock.bench). */
static PyObject *mod_time_core(PyObject *mod, PyObject *args)
{
    (void)mod;
    int pairs;
    if (!PyArg_ParseTuple(args, "i", &pairs) || pairs < 1)
        return NULL;
    GraphObject *graph = (GraphObject *)PyObject_CallNoArgs((PyObject *)&GraphType);
    if (!graph)
        return NULL;
    PyObject *core = PyObject_CallFunction((PyObject *)&CoreType, "i[i]Oi", 2, 1, (PyObject *)graph, 1);
    Py_DECREF(graph);
    if (!core)
        return NULL;
    Core *c = ((CoreObject *)core)->core;
    Out out = {0};
    Special sp = {0};
    double elapsed;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&g_lock);
    double start = monotonic();
    for (int i = 0; i < pairs; i++) {
        out.n = 0;
        core_handle(c, 1, OP_READ, 2 * i + 1, 0, 0, &DEFAULT_KEY, 1, 0, start, &out, &sp);
        core_handle(c, 1, OP_RELEASE, 0, 0, 0, &DEFAULT_KEY, 1, 0, start, &out, &sp);
        if (c->ev.count > 4096) { /* the Python thread drains the record meanwhile: keep it small here */
            c->ev.n = 0;
            c->ev.count = 0;
        }
    }
    elapsed = monotonic() - start;
    pthread_mutex_unlock(&g_lock);
    Py_END_ALLOW_THREADS
    free(out.r);
    Py_DECREF(core);
    return PyFloat_FromDouble(elapsed / (2.0 * pairs));
}

static PyObject *mod_constants(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    return Py_BuildValue("{s(iiiiiiiiiiiiiii)s(iiiiiiiii)s(iiii)s(ii)sisi}", "ops", OP_READ, OP_WRITE, OP_RELEASE,
                         OP_CANCEL, OP_FENCE_BEGIN, OP_FENCE_END, OP_FENCE_WAIT, OP_COLLECT, OP_CLOSE, OP_STATS,
                         OP_BOUNDED, OP_DOWNGRADE, OP_SITE, OP_HELLO, OP_LOCKS, "replies", R_GRANTED, R_DENIED,
                         R_CANCELLED, R_FENCE_DONE, R_PAYLOAD, R_CLOSED, R_ERROR, R_REFUSED, R_DEADLOCK, "flags",
                         F_TRY, F_UPGRADE, F_MULTI, F_KEYS_IN_PAYLOAD, "tags", TAG_REQUEST, TAG_REPLY, "header",
                         HEADER_WORDS, "max_message", MAX_MESSAGE);
}

/* -- module functions: the wake word (see "the wake word" above) ----------------------------------------- */
static PyObject *mod_wake_serve(PyObject *mod, PyObject *args)
{
    (void)mod;
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name))
        return NULL;
    if (g_wake)
        Py_RETURN_FALSE;
    uint32_t *word = wake_map(name, 1);
    if (!word)
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
    __atomic_store_n(word, 0, __ATOMIC_SEQ_CST);
    lock_world();
    g_wake = word;
    pthread_mutex_unlock(&g_lock);
    Py_RETURN_TRUE;
}

static PyObject *mod_wake_unlink(PyObject *mod, PyObject *args)
{
    (void)mod;
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name))
        return NULL;
    if (shm_unlink(name) != 0 && errno != ENOENT)
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
    Py_RETURN_NONE;
}

static PyObject *mod_set_wakeable(PyObject *mod, PyObject *args)
{
    (void)mod;
    int id, flag;
    if (!PyArg_ParseTuple(args, "ip", &id, &flag))
        return NULL;
    lock_world();
    Channel *ch = find_channel(id);
    if (ch)
        ch->wakeable = flag;
    pthread_mutex_unlock(&g_lock);
    Py_RETURN_NONE;
}

static PyObject *mod_wake_counts(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    return Py_BuildValue("(ll)", __atomic_load_n(&g_sleeps, __ATOMIC_RELAXED),
                         __atomic_load_n(&g_woken, __ATOMIC_RELAXED));
}

/* For a server loop in Python: arm the word before the last poll, sleep on it if that poll found nothing. */
static PyObject *mod_wake_arm(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    if (!g_wake)
        Py_RETURN_FALSE;
    __atomic_store_n(g_wake, 1, __ATOMIC_SEQ_CST);
    Py_RETURN_TRUE;
}

static PyObject *mod_wake_sleep(PyObject *mod, PyObject *args)
{
    (void)mod;
    double seconds;
    if (!PyArg_ParseTuple(args, "d", &seconds))
        return NULL;
    if (!g_wake)
        Py_RETURN_FALSE;
    int woken;
    Py_BEGIN_ALLOW_THREADS woken = wake_sleep(g_wake, seconds);
    Py_END_ALLOW_THREADS return PyBool_FromLong(woken);
}

static PyObject *mod_wake_now(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    wake_self();
    Py_RETURN_NONE;
}

static PyObject *mod_wake_disarm(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    if (g_wake)
        __atomic_store_n(g_wake, 0, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}


typedef struct {
    PyObject_HEAD uint32_t *base;
    int count, created;
    char name[256];
} WordsObject;

static int Words_init(WordsObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "count", "create", NULL};
    const char *name;
    int count, create = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "si|p", kwlist, &name, &count, &create))
        return -1;
    if (self->base) {
        PyErr_SetString(PyExc_RuntimeError, "Words initialized twice");
        return -1;
    }
    if (count < 1 || strlen(name) >= sizeof(self->name)) {
        PyErr_SetString(PyExc_ValueError, "Words needs a count >= 1 and a name shorter than 256 bytes");
        return -1;
    }
    self->base = wake_map_bytes(name, create, (size_t)count * WORD_STRIDE * sizeof(uint32_t));
    if (!self->base) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
        return -1;
    }
    self->count = count;
    self->created = create;
    strcpy(self->name, name);
    return 0;
}

static void Words_dealloc(WordsObject *self)
{
    if (self->base)
        munmap(self->base, (size_t)self->count * WORD_STRIDE * sizeof(uint32_t));
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static uint32_t *words_at(WordsObject *self, PyObject *args)
{
    int rank = 0;
    if (!PyArg_ParseTuple(args, "|i", &rank))
        return NULL;
    if (!self->base || rank < 0 || rank >= self->count) {
        PyErr_SetString(PyExc_IndexError, "no word for that rank");
        return NULL;
    }
    return &self->base[(size_t)rank * WORD_STRIDE];
}

static PyObject *Words_poke(WordsObject *self, PyObject *args)
{
    uint32_t *word = words_at(self, args);
    return word ? PyBool_FromLong(wake_poke(word)) : NULL;
}

static PyObject *Words_asleep(WordsObject *self, PyObject *args)
{
    uint32_t *word = words_at(self, args);
    return word ? PyBool_FromLong(__atomic_load_n(word, __ATOMIC_SEQ_CST) == 1) : NULL;
}

static PyObject *Words_arm(WordsObject *self, PyObject *args)
{
    uint32_t *word = words_at(self, args);
    if (!word)
        return NULL;
    __atomic_store_n(word, 1, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *Words_disarm(WordsObject *self, PyObject *args)
{
    uint32_t *word = words_at(self, args);
    if (!word)
        return NULL;
    __atomic_store_n(word, 0, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *Words_sleep(WordsObject *self, PyObject *args)
{
    int rank;
    double seconds;
    if (!PyArg_ParseTuple(args, "id", &rank, &seconds))
        return NULL;
    if (!self->base || rank < 0 || rank >= self->count) {
        PyErr_SetString(PyExc_IndexError, "no word for that rank");
        return NULL;
    }
    uint32_t *word = &self->base[(size_t)rank * WORD_STRIDE];
    int woken;
    Py_BEGIN_ALLOW_THREADS woken = wake_sleep_on(word, seconds > 0 ? seconds : 0);
    Py_END_ALLOW_THREADS return PyBool_FromLong(woken);
}

static PyObject *Words_unlink(WordsObject *self, PyObject *unused)
{
    (void)unused;
    if (self->created && self->name[0] && shm_unlink(self->name) != 0 && errno != ENOENT)
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, self->name);
    self->name[0] = 0;
    Py_RETURN_NONE;
}

static PyMethodDef Words_methods[] = {
    {"poke", (PyCFunction)Words_poke, METH_VARARGS,
     "poke(rank=0) -> bool: wake the sleeper of that word, if it sleeps (after sending it a message)."},
    {"asleep", (PyCFunction)Words_asleep, METH_VARARGS, "asleep(rank=0) -> bool: whether that word says 'asleep'."},
    {"arm", (PyCFunction)Words_arm, METH_VARARGS, "arm(rank): say 'asleep' in the word, before a last test."},
    {"disarm", (PyCFunction)Words_disarm, METH_VARARGS, "disarm(rank): say 'awake' in the word."},
    {"sleep", (PyCFunction)Words_sleep, METH_VARARGS,
     "sleep(rank, seconds) -> woken: sleep on the armed word (GIL released) until poked or timed out."},
    {"unlink", (PyCFunction)Words_unlink, METH_NOARGS, "Remove the segment's name (mappings stay valid)."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject WordsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mpilock.server._native.Words",
    .tp_basicsize = sizeof(WordsObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Words(name, count, create=False): words in POSIX shared memory, one per rank (a cache line each): "
              "a channel's client words, or (count 1) a serving process's wake word as its clients map it.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Words_init,
    .tp_dealloc = (destructor)Words_dealloc,
    .tp_methods = Words_methods,
};

static PyObject *mod_set_client_words(PyObject *mod, PyObject *args)
{
    (void)mod;
    int id;
    PyObject *words;
    if (!PyArg_ParseTuple(args, "iO!", &id, &WordsType, &words))
        return NULL;
    lock_world();
    Channel *ch = find_channel(id);
    if (ch && !ch->words_owner) {
        Py_INCREF(words);
        ch->words_owner = words;
        ch->nwords = ((WordsObject *)words)->count;
        ch->words = ((WordsObject *)words)->base;
    }
    pthread_mutex_unlock(&g_lock);
    Py_RETURN_NONE;
}

/* ---- the sender: a client's header-only requests, each in one C call ------------------------------
 * The hot path of mpilock.link.Link.send (its Python twin is the fallback there, without this module):
 * send(op, seq, arg, aux, site, area, mark, slot) packs the header and key area into a buffer of its
 * own, sets mark[slot] = True (the caller's note that the request went out, see
 * mpilock.controller.Lock) and starts the MPI_Isend, all inside one C call, where no signal handler can
 * run.  The buffer lives until the send completed: reap() tests them, finish() waits for all and refuses
 * later sends.  Any thread may call it: a mutex (taken without holding the GIL while it waits) guards
 * the list of sends in flight. */
#define SENDER_REAP_AFTER 64

typedef struct {
    PyObject_HEAD MPI_Comm comm;
    int dest;
    int closed;
    pthread_mutex_t lock;
    MPI_Request *reqs;     /* the sends in flight ... */
    int64_t **bufs;        /* ... and their buffers, index for index */
    int n, cap;
    int64_t **spare;       /* buffers of completed sends, for reuse */
    int nspare, capspare;
    int *indices;          /* scratch for MPI_Testsome */
} SenderObject;

static void sender_lock(SenderObject *s)
{
    if (pthread_mutex_trylock(&s->lock) == 0)
        return;
    Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&s->lock);
    Py_END_ALLOW_THREADS
}

static int sender_grow(SenderObject *s)
{
    int cap = s->cap ? 2 * s->cap : 2 * SENDER_REAP_AFTER;
    MPI_Request *reqs = realloc(s->reqs, (size_t)cap * sizeof(MPI_Request));
    if (!reqs)
        return -1;
    s->reqs = reqs;
    int64_t **bufs = realloc(s->bufs, (size_t)cap * sizeof(int64_t *));
    if (!bufs)
        return -1;
    s->bufs = bufs;
    int *indices = realloc(s->indices, (size_t)cap * sizeof(int));
    if (!indices)
        return -1;
    s->indices = indices;
    int64_t **spare = realloc(s->spare, (size_t)cap * sizeof(int64_t *));
    if (!spare)
        return -1;
    s->spare = spare;
    s->cap = s->capspare = cap;
    return 0;
}

/* Forget the completed sends (their buffers go to the spares); called with the mutex held. */
static int sender_reap(SenderObject *s)
{
    int done = 0;
    if (!s->n)
        return 0;
    int err = MPI_Testsome(s->n, s->reqs, &done, s->indices, MPI_STATUSES_IGNORE);
    if (err != MPI_SUCCESS)
        return -1;
    if (done == MPI_UNDEFINED || done == 0)
        return 0;
    int kept = 0;
    for (int i = 0; i < s->n; i++) {
        if (s->reqs[i] == MPI_REQUEST_NULL) {
            if (s->nspare < s->capspare)
                s->spare[s->nspare++] = s->bufs[i];
            else
                free(s->bufs[i]);
        } else {
            s->reqs[kept] = s->reqs[i];
            s->bufs[kept] = s->bufs[i];
            kept++;
        }
    }
    s->n = kept;
    return 0;
}

static PyObject *Sender_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)kwds;
    long long fhandle;
    int dest;
    if (!PyArg_ParseTuple(args, "Li", &fhandle, &dest))
        return NULL;
    MPI_Comm comm = MPI_Comm_f2c((MPI_Fint)fhandle);
    int size = 0;
    if (comm == MPI_COMM_NULL || MPI_Comm_size(comm, &size) != MPI_SUCCESS || dest < 0 || dest >= size) {
        PyErr_SetString(PyExc_ValueError, "Sender: not a communicator, or dest is not one of its ranks");
        return NULL;
    }
    SenderObject *s = (SenderObject *)type->tp_alloc(type, 0);
    if (!s)
        return NULL;
    s->comm = comm;
    s->dest = dest;
    pthread_mutex_init(&s->lock, NULL);
    if (sender_grow(s) < 0) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    return (PyObject *)s;
}

static void Sender_dealloc(SenderObject *s)
{
    int finalized = 1;
    MPI_Finalized(&finalized);
    if (s->n && !finalized) /* never free a buffer MPI may still read: complete the sends first */
        MPI_Waitall(s->n, s->reqs, MPI_STATUSES_IGNORE);
    if (!s->n || !finalized) {
        for (int i = 0; i < s->n; i++)
            free(s->bufs[i]);
    } /* else: sends of a finalized MPI may be in flight; leak their buffers */
    for (int i = 0; i < s->nspare; i++)
        free(s->spare[i]);
    free(s->reqs);
    free(s->bufs);
    free(s->spare);
    free(s->indices);
    pthread_mutex_destroy(&s->lock);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *Sender_send(SenderObject *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "send(op, seq, arg, aux, site, area, mark, slot) takes 8 arguments");
        return NULL;
    }
    int64_t words[5];
    int w[5] = {0, 1, 2, 3, 5}; /* op, seq, arg, aux, site: header words 0-3 and 5 (4 is the payload size) */
    for (int i = 0; i < 5; i++) {
        words[i] = PyLong_AsLongLong(args[i]);
        if (words[i] == -1 && PyErr_Occurred())
            return NULL;
    }
    PyObject *area = args[5], *mark = args[6];
    if (!PyBytes_Check(area) || PyBytes_GET_SIZE(area) > MAX_MESSAGE - HEADER_BYTES) {
        PyErr_SetString(PyExc_ValueError, "send: the key area must be bytes that fit one message");
        return NULL;
    }
    Py_ssize_t slot = PyLong_AsSsize_t(args[7]);
    if (slot == -1 && PyErr_Occurred())
        return NULL;
    if (mark != Py_None && (!PyList_Check(mark) || slot < 0 || slot >= PyList_GET_SIZE(mark))) {
        PyErr_SetString(PyExc_ValueError, "send: mark must be None or a list with an item at slot");
        return NULL;
    }
    Py_ssize_t alen = PyBytes_GET_SIZE(area);
    sender_lock(s);
    if (s->closed) {
        pthread_mutex_unlock(&s->lock);
        Py_RETURN_FALSE;
    }
    if ((s->n >= SENDER_REAP_AFTER && sender_reap(s) < 0) || (s->n == s->cap && sender_grow(s) < 0)) {
        pthread_mutex_unlock(&s->lock);
        return PyErr_Format(PyExc_RuntimeError, "mpilock: completing earlier sends failed");
    }
    int64_t *buf = s->nspare ? s->spare[--s->nspare] : malloc(MAX_MESSAGE);
    if (!buf) {
        pthread_mutex_unlock(&s->lock);
        return PyErr_NoMemory();
    }
    memset(buf, 0, HEADER_BYTES);
    for (int i = 0; i < 5; i++)
        buf[w[i]] = words[i];
    buf[6] = alen;
    memcpy((char *)buf + HEADER_BYTES, PyBytes_AS_STRING(area), (size_t)alen);
    if (mark != Py_None) /* marked just before the send, in the same C call: no handler runs between */
        PyList_SetItem(mark, slot, Py_NewRef(Py_True));
    int err = MPI_Isend(buf, (int)(HEADER_BYTES + alen), MPI_BYTE, s->dest, TAG_REQUEST, s->comm, &s->reqs[s->n]);
    if (err != MPI_SUCCESS) {
        s->spare[s->nspare++] = buf;
        pthread_mutex_unlock(&s->lock);
        return PyErr_Format(PyExc_RuntimeError, "mpilock: MPI_Isend of a request failed (error %d)", err);
    }
    s->bufs[s->n++] = buf;
    pthread_mutex_unlock(&s->lock);
    Py_RETURN_TRUE;
}

static PyObject *Sender_reap(SenderObject *s, PyObject *unused)
{
    (void)unused;
    sender_lock(s);
    int err = s->closed ? 0 : sender_reap(s);
    int n = s->n;
    pthread_mutex_unlock(&s->lock);
    if (err < 0)
        return PyErr_Format(PyExc_RuntimeError, "mpilock: testing earlier sends failed");
    return PyLong_FromLong(n);
}

static PyObject *Sender_finish(SenderObject *s, PyObject *unused)
{
    (void)unused;
    sender_lock(s);
    s->closed = 1;
    int err = MPI_SUCCESS;
    if (s->n) {
        Py_BEGIN_ALLOW_THREADS err = MPI_Waitall(s->n, s->reqs, MPI_STATUSES_IGNORE);
        Py_END_ALLOW_THREADS
    }
    for (int i = 0; i < s->n; i++)
        free(s->bufs[i]);
    s->n = 0;
    pthread_mutex_unlock(&s->lock);
    if (err != MPI_SUCCESS)
        return PyErr_Format(PyExc_RuntimeError, "mpilock: completing the last sends failed (error %d)", err);
    Py_RETURN_NONE;
}

static PyMethodDef Sender_methods[] = {
    {"send", (PyCFunction)(void (*)(void))Sender_send, METH_FASTCALL,
     "send(op, seq, arg, aux, site, area, mark, slot) -> started: a header-only request; mark[slot] = True just "
     "before its MPI_Isend (False: finished, nothing sent)."},
    {"reap", (PyCFunction)Sender_reap, METH_NOARGS, "Forget the completed sends; return how many are in flight."},
    {"finish", (PyCFunction)Sender_finish, METH_NOARGS, "Complete every send in flight; refuse later sends."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject SenderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mpilock.server._native.Sender",
    .tp_basicsize = sizeof(SenderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Sender(fortran_comm, dest): a client's header-only requests to the server, each sent in one C call.",
    .tp_new = Sender_new,
    .tp_dealloc = (destructor)Sender_dealloc,
    .tp_methods = Sender_methods,
};

/* ---- the guard: __enter__ and __exit__ that no signal handler can split ----------------------------
 * Python runs signal handlers between bytecodes, never inside a C call.  Guard.__enter__ makes a new
 * empty list, the token of this acquire, and calls self._take(token); if an exception leaves it (a
 * handler's, or a real error such as a timeout), it calls self._undo(token) until one call returns, then
 * raises that first exception.  Guard.__exit__ makes a token and calls self._give(exc, token) until one
 * call returns; a handler's exception that cut a call short is raised once the release is complete.  A
 * token is fresh for each call, so several threads may enter one Guard at once, and _undo/_give can tell
 * how far the cut call got (mpilock.controller.Lock fills it).  _give returns None, or an exception to
 * raise (a misuse, not to retry). */
#define GUARD_TRIES 100000
static PyObject *s_take, *s_undo, *s_give;

/* Call self.name(arg) or self.name(arg, arg2) until a call returns; keep the first exception in *t, *v, *tb
 * (if none kept yet). */
static PyObject *guard_finish(PyObject *self, PyObject *name, PyObject *arg, PyObject *arg2, PyObject **t,
                              PyObject **v, PyObject **tb)
{
    PyObject *stack[3] = {self, arg, arg2};
    size_t nargs = arg2 ? 3 : 2;
    for (long i = 0; i < GUARD_TRIES; i++) {
        PyObject *r = PyObject_VectorcallMethod(name, stack, nargs, NULL);
        if (r)
            return r;
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        if (!*t) {
            *t = et;
            *v = ev;
            *tb = etb;
        } else {
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(etb);
        }
    }
    return NULL;
}

static PyObject *Guard_enter(PyObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *token = PyList_New(0);
    if (!token)
        return NULL;
    PyObject *stack[2] = {self, token};
    PyObject *r = PyObject_VectorcallMethod(s_take, stack, 2, NULL);
    if (r) {
        Py_DECREF(token);
        return r;
    }
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyObject *undone = guard_finish(self, s_undo, token, NULL, &t, &v, &tb);
    Py_XDECREF(undone);
    Py_DECREF(token);
    PyErr_Restore(t, v, tb);
    return NULL;
}

static PyObject *Guard_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *exc = nargs >= 2 ? args[1] : Py_None;
    PyObject *token = PyList_New(0);
    if (!token)
        return NULL;
    PyObject *t = NULL, *v = NULL, *tb = NULL;
    PyObject *r = guard_finish(self, s_give, exc, token, &t, &v, &tb);
    Py_DECREF(token);
    if (t) {
        Py_XDECREF(r);
        PyErr_Restore(t, v, tb);
        return NULL;
    }
    if (!r) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_RuntimeError, "mpilock: the release failed %d times", GUARD_TRIES);
        return NULL;
    }
    if (r != Py_None && PyExceptionInstance_Check(r)) {
        PyErr_SetObject((PyObject *)Py_TYPE(r), r);
        Py_DECREF(r);
        return NULL;
    }
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyMethodDef Guard_methods[] = {
    {"__enter__", Guard_enter, METH_NOARGS, "Acquire with self._take(token); undo with self._undo(token) if anything leaves it."},
    {"__exit__", (PyCFunction)(void (*)(void))Guard_exit, METH_FASTCALL, "Release with self._give(exc, token), finished whatever interrupts it."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject GuardType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mpilock.server._native.Guard",
    .tp_basicsize = sizeof(PyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Base of a context manager whose __enter__/__exit__ finish or undo their work whatever a signal raises.",
    .tp_new = PyType_GenericNew,
    .tp_methods = Guard_methods,
};

static PyMethodDef module_methods[] = {
    {"attach", mod_attach, METH_VARARGS, "attach(core, fortran_comm) -> channel id: serve core on that communicator."},
    {"start", mod_start, METH_NOARGS, "Start the service thread if it is not running; True if started."},
    {"join", mod_join, METH_VARARGS, "join(timeout) -> bool: wait until the service thread has stopped."},
    {"pause", mod_pause, METH_NOARGS, "Stop the service thread for good (MPI_Finalize): the caller polls."},
    {"release", mod_release, METH_VARARGS, "release(channel): forget a finished channel."},
    {"help", mod_help, METH_VARARGS, "help(channel) -> bool: poll that channel once, unless someone else polls."},
    {"undefer", mod_undefer, METH_VARARGS, "undefer(channel, rank): Python has handled one message of rank."},
    {"next_item", mod_next_item, METH_VARARGS, "next_item(timeout): the next thing Python must do, or None."},
    {"configure", (PyCFunction)(void (*)(void))mod_configure, METH_VARARGS | METH_KEYWORDS,
     "Set the backoff of the service thread and the bounds of the event buffers."},
    {"library_version", mod_library_version, METH_NOARGS, "MPI_Get_library_version of the MPI this module calls."},
    {"compiled_against", mod_compiled_against, METH_NOARGS, "(family, version) of the MPI headers at build time."},
    {"wakeups", mod_wakeups, METH_NOARGS, "How many times the service thread has polled."},
    {"constants", mod_constants, METH_NOARGS, "The protocol numbers compiled in."},
    {"wake_serve", mod_wake_serve, METH_VARARGS,
     "wake_serve(name) -> bool: create this process's wake word in POSIX shared memory (False: it has one)."},
    {"wake_unlink", mod_wake_unlink, METH_VARARGS, "wake_unlink(name): remove the name (mappings stay valid)."},
    {"set_wakeable", mod_set_wakeable, METH_VARARGS,
     "set_wakeable(channel, flag): whether every rank of the channel can wake this server."},
    {"wake_counts", mod_wake_counts, METH_NOARGS, "(sleeps, woken): futex sleeps, and those a client ended."},
    {"wake_arm", mod_wake_arm, METH_NOARGS, "Say 'asleep' in the word, before a last poll; False if there is none."},
    {"wake_sleep", mod_wake_sleep, METH_VARARGS, "wake_sleep(seconds) -> woken: sleep on the armed word."},
    {"wake_disarm", mod_wake_disarm, METH_NOARGS, "Say 'awake' in the word (the last poll found work)."},
    {"wake_now", mod_wake_now, METH_NOARGS, "Wake this process's sleeping server thread (a channel came or went)."},
    {"set_client_words", mod_set_client_words, METH_VARARGS,
     "set_client_words(channel, words): poke a rank's word after each reply the C thread sends it."},
    {"time_core", mod_time_core, METH_VARARGS, "time_core(pairs) -> seconds per request of the core alone."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "mpilock.server._native",
    "The lock rules of mpilock.server.core in C, and a service loop thread that needs no GIL.", -1, module_methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void)
{
    if (PyType_Ready(&GraphType) < 0 || PyType_Ready(&CoreType) < 0 || PyType_Ready(&WordsType) < 0 ||
        PyType_Ready(&GuardType) < 0 || PyType_Ready(&SenderType) < 0)
        return NULL;
    s_take = PyUnicode_InternFromString("_take");
    s_undo = PyUnicode_InternFromString("_undo");
    s_give = PyUnicode_InternFromString("_give");
    if (!s_take || !s_undo || !s_give)
        return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (!m)
        return NULL;
    Py_INCREF(&GraphType);
    Py_INCREF(&CoreType);
    Py_INCREF(&WordsType);
    Py_INCREF(&GuardType);
    Py_INCREF(&SenderType);
    if (PyModule_AddObject(m, "Guard", (PyObject *)&GuardType) < 0 ||
        PyModule_AddObject(m, "Sender", (PyObject *)&SenderType) < 0 ||
        PyModule_AddObject(m, "Graph", (PyObject *)&GraphType) < 0 ||
        PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0 ||
        PyModule_AddObject(m, "Words", (PyObject *)&WordsType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
