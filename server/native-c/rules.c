/*
 * rules.c: the lock rules, the C twin of server/core.py (LockCore): read, write, try, upgrade, bounded,
 * release, downgrade, cancel, hello and close, writer priority, multi-key grants, in the same order of
 * checks, mutations and replies, so that tests/test_native_core.py can require the same replies and state
 * after every request.  The fences' bookkeeping, sites and lock tables stay in Python
 * (server/native_core.py, server/answers.py).
 */
#include "native.h"

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
