"""How open controllers end when the program does: at exit, at ``MPI_Finalize``, or by aborting the job.

* **Normal exit** (end of the script, ``sys.exit(0)``): an ``atexit`` hook
  closes every controller still open, oldest first.  Closing is collective,
  and every rank gets there.
* **Exit with a failure** (an uncaught exception, or ``sys.exit(n)`` with
  ``n != 0`` under ``python -m mpi4py``): the other ranks will never reach
  their ``close()``, so closing would hang the job.  The hook aborts the job
  with ``MPI_Abort`` instead (status ``n``, or 1), which is what
  ``python -m mpi4py`` does a moment later anyway; a rank's failure ends the
  whole job instead of burning its allocation.  mpi4py's runner reports a
  ``SystemExit`` status only through ``MPI._set_abort_status``; we record it
  there (a wrapper, installed once).
* **An explicit ``MPI.Finalize()``** without ``close()``: mpilock wraps
  mpi4py's ``MPI.Finalize`` so that it closes every open controller first
  (every rank finalizes, so the collective close completes) and joins the
  server threads, so nothing touches MPI after it is finalized.
* **``MPI_Finalize`` from elsewhere** (C code, or a ``Finalize`` imported
  from ``mpi4py.MPI`` before mpilock was): MPI calls the delete callback of
  an attribute on ``MPI_COMM_SELF`` at its start, while MPI still works, and
  the callback closes the open controllers.  MPICH no longer serializes the
  MPI calls of a process's threads by then, so the callback first stops the
  server threads (:func:`mpilock.server.native.pause`) and the closing
  thread serves its channels itself.  A server thread caught inside an MPI
  call at the instant MPICH stopped serializing can still upset MPICH (it
  may abort in ``MPI_Finalize``); the wrapper above has no such window.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import sys
from typing import Any, Protocol

from mpi4py import MPI

from .server import native

log = logging.getLogger("mpilock")


class Closable(Protocol):
    """What the registry needs of a controller."""

    @property
    def size(self) -> int:
        """Ranks sharing the controller."""

    def close(self) -> None:
        """Close it (collective)."""


_OPEN: dict[int, Closable] = {}
"""Controllers not yet closed, by creation order (the same on every rank)."""
_SERIALS = itertools.count()
_ABORT_STATUS = [0]
"""The status mpi4py's runner (``python -m mpi4py``) will abort with, as it reported it."""
_FINALIZE_KEYVAL: list[int] = []


def next_serial() -> int:
    """Return the number of a new controller (made collectively, so every rank numbers them alike)."""
    return next(_SERIALS)


def register(serial: int, controller: Closable) -> None:
    """Track ``controller`` (number ``serial``) until it closes."""
    _install_finalize_hook()
    _OPEN[serial] = controller


def unregister(serial: int) -> None:
    """Forget controller number ``serial``: it is closed."""
    _OPEN.pop(serial, None)


def exit_status() -> int:
    """Return the status this process exits with if it is a failure, else 0 (as far as it can be known)."""
    if _ABORT_STATUS[0]:
        return _ABORT_STATUS[0]
    crashed = getattr(sys, "last_value", None)
    if isinstance(crashed, KeyboardInterrupt):
        return 130
    return 1 if crashed is not None else 0


def close_all() -> None:
    """Close every open controller, oldest first, or abort the job if this rank is failing (see module doc)."""
    if not _OPEN or MPI.Is_finalized():
        return
    status = exit_status()
    if status and any(c.size > 1 for c in _OPEN.values()):
        log.critical(
            "rank %d exits with status %d while %d WindowController(s) are open; aborting the MPI job "
            "(the other ranks would wait for its close() forever)",
            MPI.COMM_WORLD.Get_rank(),
            status,
            len(_OPEN),
        )
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(status)
    for serial in sorted(_OPEN):
        controller = _OPEN.get(serial)
        if controller is not None:
            controller.close()


atexit.register(close_all)


def _at_finalize(comm: Any, keyval: int, value: Any) -> None:
    """Delete callback of the ``MPI_COMM_SELF`` attribute: MPI is finalizing."""
    try:
        if _OPEN:
            native.pause()
        close_all()
    except BaseException:
        log.critical("closing the open WindowControllers at MPI_Finalize failed; aborting", exc_info=True)
        MPI.COMM_WORLD.Abort(70)


def _install_finalize_hook() -> None:
    if _FINALIZE_KEYVAL or MPI.Is_finalized():
        return
    keyval = MPI.Comm.Create_keyval(delete_fn=_at_finalize)
    MPI.COMM_SELF.Set_attr(keyval, True)
    _FINALIZE_KEYVAL.append(keyval)


def _record_abort_status() -> None:
    """Wrap ``MPI._set_abort_status`` so that the status mpi4py's runner will abort with is known here."""
    original = getattr(MPI, "_set_abort_status", None)
    if original is None or getattr(original, "_mpilock", False):
        return

    def set_abort_status(status: int) -> None:
        _ABORT_STATUS[0] = status
        original(status)

    set_abort_status._mpilock = True  # type: ignore[attr-defined]
    setattr(MPI, "_set_abort_status", set_abort_status)  # noqa: B010 (a private name mypy's stubs keep)


def _wrap_finalize() -> None:
    """Make mpi4py's ``MPI.Finalize`` close the open controllers before ``MPI_Finalize`` begins (see module doc)."""
    original = MPI.Finalize
    if getattr(original, "_mpilock", False):
        return

    @functools.wraps(original)
    def finalize() -> None:
        close_all()
        original()

    finalize._mpilock = True  # type: ignore[attr-defined]
    setattr(MPI, "Finalize", finalize)  # noqa: B010 (mpi4py's own name for it, replaced)


_record_abort_status()
_wrap_finalize()
