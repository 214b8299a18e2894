"""How one acquire changed a rank's lock state, so that its release, or its undoing, reverses exactly that.

An acquire keeps a *step*: a list whose slots it fills as it goes (the
token ``Lock.__enter__`` passes, see :mod:`mpilock.guard`).  A list,
not an object with methods: storing into a slot is one bytecode that calls no
function, so Python cannot run a signal handler in the middle of it, and the
step always tells how far the acquire or its release got (see
:class:`mpilock.controller.Lock`).
"""

from __future__ import annotations

from typing import Any

Taken = tuple[tuple[bytes, ...], tuple[bytes, ...]]
"""``(acquired, promoted)``: keys the server granted for this acquire (released at its end), and keys
this rank held for read that it now holds for write (turned back into read locks at its end)."""

LOCAL: Taken = ((), ())
"""Nested inside locks that already cover it: nothing was asked of the server, nothing to undo."""

Step = list[Any]
"""``[state, asked, prior, taken, reread, released, downgraded, lock, holder, spans]``, indexed below."""

STATE, ASKED, PRIOR, TAKEN, REREAD, RELEASED, DOWNGRADED, LOCK, HOLDER, SPANS = range(10)
"""Slots of a step: its state; the requests it sent and has not seen answered, as ``(seq, request)``; what
its thread held of the keys before (key -> mode or ``None``); the :data:`Taken` once granted; a promotion's
read to take back if undone (``[keys, asked, site, released]``); whether the release and the downgrade
went out; the lock it belongs to; the thread's holder (:class:`mpilock.holder.Holder`); its OpenTelemetry
span records (or ``None``)."""

OPEN, DONE, UNDONE, GIVEN = range(4)
"""States of a step: acquiring; held (on its thread's stack); undone after an exception; released."""


def new_step(holder: Any, taken: Taken | None = None, lock: Any = None) -> Step:
    """Return a step of ``holder``: open, or done with ``taken`` (an acquire made another way, a fence's)."""
    return [OPEN if taken is None else DONE, [], {}, taken, None, False, False, lock, holder, None]
