/*
 * guard.c: the Guard type, a context manager base whose __enter__/__exit__ finish or undo their work
 * whatever a signal handler raises.  Its Python side, and the fallback without this module, is
 * mpilock/guard.py (the base of mpilock/controller.py's Lock).
 */
#include "native.h"

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
