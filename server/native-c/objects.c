/*
 * objects.c: the Python types Graph and Core over the C state (requests in, replies and special replies
 * out as Python data, the state read back as a snapshot).  Its caller is server/native_core.py
 * (NativeGraph, NativeLockCore), which presents it with the interface of server/core.py.
 */
#include "native.h"

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
