"""Which lock server loop this process runs: the native one (``server/_native.c``) or the pure-Python one.

Decided once, when first imported (by :mod:`mpilock.controller`): the native
loop runs if ``MPILOCK_NATIVE`` is not 0, the module ``mpilock.server._native``
was built and loads, its protocol numbers are this package's, and the MPI
library it calls is the one mpi4py uses (``MPI_Get_library_version`` as the C
module sees it, and the family of the MPI headers it was compiled with,
against mpi4py's).  If the install built no module, or one for another MPI,
it is built at first use for the MPI library mpi4py loads
(:mod:`.native_build`).  Otherwise the pure-Python loop runs: the reason is
logged at import (INFO, logger ``mpilock``), and unless ``MPILOCK_NATIVE=0``
asked for it, one WARNING with the reason and the command that fixes it at
the first ``sync()`` of the master.  :data:`LOOP` and :data:`REASON` tell
which and why; ``python -m mpilock.bench`` and ``python -m mpilock.native``
print them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Protocol

from mpi4py import MPI

from .dispatch import Observer
from .latch import Latch
from .loop import SERVICE, Channel
from .protocol import HEADER_LEN, MAX_MESSAGE, TAG_REPLY, TAG_REQUEST, Flag, Op, Reply
from .settings import SETTINGS

log = logging.getLogger("mpilock")

_FAMILIES = {"MPICH": "MPICH", "Open MPI": "Open MPI"}


def decide() -> tuple[str, str, int]:
    """Return ``(loop, reason, log level)``: ``"native"`` or ``"python"``, why, and how loudly to say it."""
    if not SETTINGS.native:
        return "python", "MPILOCK_NATIVE=0 asks for the pure-Python loop", logging.INFO
    from .native_core import IMPORT_ERROR, NATIVE

    c: Any = NATIVE
    if c is None:
        return "python", f"the native module is not built or does not load ({IMPORT_ERROR})", logging.WARNING
    expected = {
        "ops": tuple(int(op) for op in Op),
        "replies": tuple(int(reply) for reply in Reply),
        "flags": (int(Flag.TRY), int(Flag.UPGRADE), int(Flag.MULTI), int(Flag.KEYS_IN_PAYLOAD)),
        "tags": (TAG_REQUEST, TAG_REPLY),
        "header": HEADER_LEN,
        "max_message": MAX_MESSAGE,
    }
    if c.constants() != expected:
        return "python", "the native module was built from another version of the protocol", logging.WARNING
    family, version = c.compiled_against()
    vendor = MPI.get_vendor()[0]
    ours, theirs = c.library_version(), MPI.Get_library_version()
    if _FAMILIES.get(vendor, vendor) != family or (ours or "").strip() != theirs.strip():
        first = theirs.strip().splitlines()[0] if theirs.strip() else "?"
        return (
            "python",
            f"the native module was built against {family} {version}, but mpi4py uses {vendor} ({first}); "
            "reinstall mpilock with that MPI's mpicc (MPICC=...) to use it",
            logging.WARNING,
        )
    return "native", f"built against {family} {version}, the MPI library mpi4py uses ({c.__file__})", logging.INFO


LOOP, REASON, _LEVEL = decide()
"""``"native"`` or ``"python"``, and why."""
log.info("mpilock: %s lock server loop: %s", LOOP, REASON)

FIX = (
    f"MPICC=/path/to/mpicc {sys.executable} -m pip install --force-reinstall --no-deps --no-binary=mpilock-server "
    "mpilock-server"
    if REASON.startswith("the native module was built")
    else f"MPICC=/path/to/mpicc {sys.executable} -m mpilock.native"
)
"""The command that makes the native loop run here, given that MPI's ``mpicc``.

If the installed module was built for another MPI or protocol: reinstall
from source with it.  If none loads: build it into the cache at first use
(:mod:`.native_build`) and say which loop runs now.
"""

_WARNED: list[bool] = []


def warn_once() -> None:
    """Log one WARNING per process if the pure-Python loop serves although the native one was not switched off.

    Called where a process first serves a lock (the master's first ``sync()``):
    the user learns at run time, not from a build log, that the fallback runs,
    why, and the one command that fixes it.
    """
    if _LEVEL < logging.WARNING or _WARNED:
        return
    _WARNED.append(True)
    library = (MPI.Get_library_version().strip().splitlines() or ["?"])[0]
    log.warning(
        "mpilock: the pure-Python lock server loop serves this job (grants 10-100x slower on a busy master): %s. "
        "To run the native loop with %s (the MPI mpi4py loads), run once: %s",
        REASON,
        " ".join(library.split()),
        FIX,
    )


__all__ = [
    "FIX",
    "LOOP",
    "PAUSED",
    "REASON",
    "ServedChannel",
    "Service",
    "chosen",
    "decide",
    "drive",
    "pause",
    "serve",
    "use",
    "warn_once",
]


class ServedChannel(Protocol):
    """What a controller needs of the server side of its lock, whichever loop serves it."""

    finished: Latch
    """Set once every rank has closed and the last replies are delivered."""

    def help(self) -> bool:
        """Poll once from the master's waiting application thread; return whether a request was served."""

    def set_wakeable(self, everyone: bool) -> None:
        """Say whether every client can wake the server (see :mod:`.wake`): its idle sleeps may then be long."""

    def set_client_words(self, words: Any) -> None:
        """Poke a client's word after each reply sent to it (see :mod:`.wake`): a waiting client sleeps on it."""


class Service(Protocol):
    """The loop that serves a process's channels."""

    def channel_finished(self) -> None:
        """Stop the loop's threads before returning if the channel that has just finished was the last."""

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Join the loop's threads if no channel is left; return whether they are gone."""


def serve(comm: MPI.Intracomm, observer: Observer, name: str) -> tuple[ServedChannel, Service]:
    """Serve the lock of the controller whose private communicator is ``comm`` with this process's loop."""
    warn_once()
    if chosen() == "native":
        from .native_loop import SERVICE as NATIVE

        return NATIVE.channel(comm, observer, name), NATIVE
    channel = Channel(comm, observer, graph=SERVICE.graph, name=name, lock=SERVICE.poll_lock)
    SERVICE.add(channel)
    return channel, SERVICE


PAUSED = Latch()
"""Set by :func:`pause`: no server thread runs in this process any more."""


def pause() -> None:
    """Stop every server thread of this process for good: ``MPI_Finalize`` has begun.

    MPICH no longer serializes the MPI calls of a process's threads then (it
    says so before it calls the ``MPI_COMM_SELF`` delete callbacks), so the
    thread that closes the open controllers must make every MPI call itself:
    from now on a waiting client polls its own channel, whichever loop serves it.
    """
    PAUSED.set()
    SERVICE.pause()
    native_loop = sys.modules.get(f"{__package__}.native_loop")
    if native_loop is not None:  # imported only once a native channel was made
        native_loop.SERVICE.pause()


def drive() -> bool:
    """Once :func:`pause` d, do the server threads' work once in this thread; return whether a request was served.

    Every waiting client calls it, whatever it waits for: this rank's
    channels must be served while it waits for another rank's.
    """
    served = SERVICE.drive()
    native_loop = sys.modules.get(f"{__package__}.native_loop")
    if native_loop is not None:
        served = native_loop.SERVICE.drive() or served
    return served


_CHOSEN: list[str] = []
"""The loop :func:`use` chose for the controllers made from then on (empty: :data:`LOOP`)."""


def use(loop: str | None) -> None:
    """Serve the controllers this process makes from now on with ``loop`` (``None``: :data:`LOOP`).

    For ``python -m mpilock.bench``, which measures both loops in one run.
    ``"native"`` raises ``ValueError`` where the native loop cannot run.
    Controllers of different loops detect deadlocks only among their own kind.
    """
    if loop not in (None, "native", "python"):
        raise ValueError(f"loop must be 'native', 'python' or None, not {loop!r}")
    if loop == "native" and LOOP != "native":
        raise ValueError(f"the native loop cannot run here: {REASON}")
    _CHOSEN[:] = [loop] if loop is not None else []


def chosen() -> str:
    """Return the loop that serves the controllers made now: ``"native"`` or ``"python"``."""
    return _CHOSEN[0] if _CHOSEN else LOOP
