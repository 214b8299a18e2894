/*
 * module.c: the CPython module mpilock.server._native: the functions server/native_loop.py and
 * server/wake.py call (channels, the thread, items for Python, configuration, the wake word and the Words
 * type), the module table and PyInit__native.
 */
#include "native.h"

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
