/*
 * mpilock.server._native: the lock rules of server/core.py and server/deadlock.py in C, and a
 * service loop thread that answers lock requests without the GIL.
 *
 * The Python LockCore is the reference: every function of the lock state mirrors one of core.py,
 * locks.py or deadlock.py, in the same order of checks, mutations, iterations and replies, so that
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
 *
 * The source is split by concern in server/native-c/: native.h (the shared structures), then the lock
 * state and rules (keys.c, events.c, graph.c, holders.c, rules.c: the twins of server/keys.py,
 * locks.py, events.py, deadlock.py, holders.py and core.py), the service thread (service.c, wake.c:
 * server/loop.py, native_loop.py, wake.py, backoff.py), and the CPython side (objects.c, sender.c,
 * guard.c, module.c).  This file includes them in that order into one translation unit, so the small functions of
 * the hot path still inline across files and every function stays static; build only this file.
 */
#include "native-c/native.h"

#include "native-c/keys.c"
#include "native-c/events.c"
#include "native-c/graph.c"
#include "native-c/holders.c"
#include "native-c/rules.c"
#include "native-c/service.c"
#include "native-c/wake.c"
#include "native-c/objects.c"
#include "native-c/sender.c"
#include "native-c/guard.c"
#include "native-c/module.c"
