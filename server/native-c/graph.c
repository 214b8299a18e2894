/*
 * graph.c: the wait-for graph shared by the cores of a process, its cycle search and the reordering of
 * queues a soft cycle calls for.  Mirrors server/deadlock.py (WaitGraph) and LockCore.blockers of
 * server/core.py, in the same order of iterations.
 */
#include "native.h"

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
