/*
 * sender.c: the Sender type, a client's header-only requests packed, marked sent and started in one C
 * call.  Its Python side, and the fallback without this module, is mpilock/link.py (Link.send);
 * the header layout is server/protocol.py's HEADER (server/wire.py packs the same in Python).
 */
#include "native.h"

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
    int reap_at;           /* test the sends in flight when this many: doubles while they stay in flight */
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
    s->reap_at = SENDER_REAP_AFTER;
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
    /* Only a Sender dropped without finish() has sends here.  Never block (the GIL is held, and a send nobody
     * receives would block forever) and never free a buffer MPI may still read: a send still in flight is
     * detached (MPI_Request_free: it completes on its own) and its buffer leaked, as are those of a finalized MPI. */
    for (int i = 0; i < s->n; i++) {
        int done = 0;
        if (!finalized) {
            MPI_Test(&s->reqs[i], &done, MPI_STATUS_IGNORE);
            if (!done)
                MPI_Request_free(&s->reqs[i]);
        }
        if (done)
            free(s->bufs[i]);
    }
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
    if (s->n >= s->reap_at) { /* amortized: sends that stay in flight (a server slow to receive) are not
                                 tested again at every send */
        if (sender_reap(s) < 0) {
            pthread_mutex_unlock(&s->lock);
            return PyErr_Format(PyExc_RuntimeError, "mpilock: completing earlier sends failed");
        }
        s->reap_at = s->n < SENDER_REAP_AFTER ? SENDER_REAP_AFTER : 2 * s->n;
    }
    if (s->n == s->cap && sender_grow(s) < 0) {
        pthread_mutex_unlock(&s->lock);
        return PyErr_NoMemory();
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
