"""``WindowController`` and ``sync()``: the readers-writer lock every rank holds a handle to."""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import pickle
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from mpi4py import MPI

from .errors import ClosedError, LockTimeout, MpilockError
from .fence import _UNSET, Fence
from .link import Answer, Link
from .nesting import ACQUIRED, LOCAL, PROMOTED
from .server.frames import joined
from .server.loop import SERVICE, Channel
from .server.protocol import Flag, Op, Reply
from .trace import Recorder

log = logging.getLogger("mpilock")

_GRANT = frozenset({Reply.GRANTED, Reply.DENIED})
_CANCELLED = frozenset({Reply.CANCELLED})


def check_args(comm: Any, master: Any) -> MPI.Intracomm:
    """Validate ``comm`` and ``master`` identically on every rank (collective)."""
    if comm is None:
        comm = MPI.COMM_WORLD
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
        raise TypeError(f"comm must be an MPI intracommunicator such as MPI.COMM_WORLD, not {comm!r}")
    problem = None
    if isinstance(master, bool) or not isinstance(master, int):
        problem = ("TypeError", f"master must be an int rank, not {master!r}")
    elif not 0 <= master < comm.Get_size():
        problem = ("ValueError", f"master={master} is not a rank of a communicator of size {comm.Get_size()}")
    level = MPI.Query_thread()
    if level < MPI.THREAD_MULTIPLE:
        problem = (
            "MpilockError",
            "mpilock needs MPI_THREAD_MULTIPLE but MPI was initialised with a lower thread level; "
            "do not set mpi4py.rc.thread_level (its default is 'multiple') or set it to 'multiple' "
            "before importing mpi4py.MPI, and use an MPI library built with thread support",
        )
    views = comm.allgather((repr(master), problem))
    for rank, (_, found) in enumerate(views):
        if found is not None:
            kind, text = found
            error = {"TypeError": TypeError, "ValueError": ValueError}.get(kind, MpilockError)
            raise error(text if rank == comm.Get_rank() else f"on rank {rank}: {text}")
    if len({m for m, _ in views}) > 1:
        raise ValueError(f"ranks disagree on master: {[m for m, _ in views]}")
    return comm


class WindowController:
    """A readers-writer lock shared by all ranks of a communicator.

    Many ranks may hold :meth:`read` at once; :meth:`write` is exclusive and
    has priority over later readers.  Lock state lives on a server thread on
    rank ``master``; every rank talks to it over a private duplicate of
    ``comm``.  Creating and closing a controller are collective.
    """

    def __init__(
        self, comm: MPI.Intracomm | None = None, master: int = 0, *, trace: str | os.PathLike[str] | None = None
    ) -> None:
        """Create the lock on ``comm`` (default ``COMM_WORLD``) served by rank ``master``.

        ``trace`` (or the environment variable ``MPILOCK_TRACE``) names a
        Chrome trace-event JSON file the master writes at close.
        """
        user_comm = check_args(comm, master)
        private = user_comm.Dup()
        self._channel: Channel | None = None
        self._recorder: Recorder | None = None
        self._trace_path = trace_path(trace)
        if private.Get_rank() == master:
            self._recorder = Recorder(private.Get_size(), keep_events=self._trace_path is not None)
            self._channel = Channel(private, self._recorder)
            SERVICE.add(self._channel)
        self._attach(private, master, user_comm, writer=master)

    @classmethod
    def _client_of(cls, private: MPI.Intracomm, server: int, comm: MPI.Intracomm) -> WindowController:
        """Build a controller for the ranks of ``comm``, served by a dedicated rank of ``private``."""
        ctrl = cls.__new__(cls)
        ctrl._channel, ctrl._recorder, ctrl._trace_path = None, None, None
        ctrl._attach(private, server, comm, writer=0)
        return ctrl

    def _attach(self, private: MPI.Intracomm, server: int, comm: MPI.Intracomm, writer: int) -> None:
        """Connect this rank of ``comm`` to the server on rank ``server`` of ``private``."""
        self._private = private
        """The private duplicate that carries lock traffic (freed at close)."""
        self._comm = comm
        """The user's communicator, as in mpilock 1.x/2.x (code written for them uses ``ctrl._comm``)."""
        self._master = server
        self._rank = comm.Get_rank()
        self._size = comm.Get_size()
        self._default_writer = writer
        self._link = Link(private, server, self._channel.help if self._channel is not None else None)
        self._mode: str | None = None  # None, "read" or "write": what the server thinks we hold
        self._fences_started = 0
        self._closed = False
        self._serial = next(_SERIALS)
        _OPEN[self._serial] = self

    # -- properties of the seed API ----------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether the controller is closed; lock calls then raise :class:`ClosedError`."""
        return self._closed

    @property
    def master(self) -> int:
        """Rank of the process that runs the lock server."""
        return self._master

    @property
    def comm(self) -> MPI.Intracomm:
        """The communicator of the ranks that share the lock (yours, not the private one)."""
        return self._comm

    @property
    def rank(self) -> int:
        """Rank of this process in the communicator."""
        return self._rank

    @property
    def size(self) -> int:
        """Number of ranks sharing the lock."""
        return self._size

    # -- locks ----------------------------------------------------------------------
    @contextmanager
    def read(self, timeout: float | None = None) -> Iterator[None]:
        """Hold a shared read lock for the ``with`` block.

        Waits while a writer holds or waits for the lock.  ``timeout`` (seconds)
        raises :class:`LockTimeout` after that long, ``timeout=0`` tries once.
        Inside :meth:`read` or :meth:`write` of the same rank it is local.
        """
        how = self._acquire(False, timeout)
        try:
            yield
        finally:
            self._release(how)

    @contextmanager
    def write(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the exclusive write lock for the ``with`` block.

        Waits for current readers and earlier writers; blocks new readers
        meanwhile.  ``timeout`` as for :meth:`read`.  Inside :meth:`write` it is
        local; inside :meth:`read` it promotes (see the README).
        """
        how = self._acquire(True, timeout)
        try:
            yield
        finally:
            self._release(how)

    def single_write(self, handle: Any = None, rank: int | None = None) -> Fence:
        """Run a block on rank ``rank`` only (default the master) under the write lock; collective.

        Use ``with ctrl.single_write() as fence: fence.guard(); ...``.  Every
        other rank jumps to the end of the block at ``guard()`` and waits there
        until the writer's block has finished.  With ``handle=h`` the writer's
        ``as`` target is ``h`` and everyone else's is ``None``.
        """
        self._check_open()
        writer = self._default_writer if rank is None else rank
        if isinstance(writer, bool) or not isinstance(writer, int) or not 0 <= writer < self._size:
            raise ValueError(f"single_write rank={rank!r} is not a rank of a communicator of size {self._size}")
        number = self._fences_started
        self._fences_started += 1
        return Fence(self, writer, number, _UNSET if handle is None else handle)

    def _acquire(self, write: bool, timeout: float | None) -> str:
        self._check_open()
        if self._mode == "write" or (self._mode == "read" and not write):
            return LOCAL
        if self._mode == "read":  # write inside read: promote
            self._server_release()
            try:
                self._server_acquire(Op.WRITE, 0, timeout)
            except BaseException:
                self._server_acquire(Op.READ, 0, None)
                raise
            return PROMOTED
        self._server_acquire(Op.WRITE if write else Op.READ, 0, timeout)
        return ACQUIRED

    def _release(self, how: str) -> None:
        if self._closed:
            return  # close() already released it
        if how == ACQUIRED:
            self._server_release()
        elif how == PROMOTED:  # back to the read lock the block started with
            self._server_release()
            self._server_acquire(Op.READ, 0, None)

    def _fence_acquire(self, number: int) -> str:
        self._check_open()
        if self._mode is None:
            self._server_acquire(Op.FENCE_BEGIN, number, None)
            return ACQUIRED
        return self._acquire(True, None)

    def _server_acquire(self, op: Op, arg: int, timeout: float | None) -> None:
        flags = Flag.TRY if timeout is not None and timeout <= 0 else 0
        seq = self._link.send(op, arg | flags if op != Op.FENCE_BEGIN else arg)
        deadline = None if timeout is None or flags else time.monotonic() + timeout
        answer = self._link.wait(seq, _GRANT, deadline)
        if answer is None:  # withdraw; a grant that raced us is handed back by the server
            self._link.send(Op.CANCEL, seq=seq)
            self._link.wait(seq, _CANCELLED)
        if answer is None or answer.code == Reply.DENIED:
            kind = "write" if op != Op.READ else "read"
            raise LockTimeout(f"rank {self._rank} gave up waiting for the {kind} lock after {timeout} s")
        self._mode = "read" if op == Op.READ else "write"

    def _server_release(self) -> None:
        self._link.send(Op.RELEASE)
        self._mode = None

    def stats(self) -> dict[str, Any]:
        """Return per-rank lock counts, wait-time percentiles and hold times.

        Asked from the server, which computes them from what it has seen so
        far (see :meth:`mpilock.trace.Recorder.stats`); not collective.
        """
        answer = self._link_call(Op.STATS)
        result: dict[str, Any] = pickle.loads(joined(answer.payload))
        return result

    def _link_call(self, op: Op, arg: int = 0, aux: int = 0, payload: bytes | None = None) -> Answer:
        self._check_open()
        return self._link.call(op, arg, aux, payload)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this WindowController is closed")

    # -- lifecycle ------------------------------------------------------------------
    def close(self) -> None:
        """Release held locks (with a warning) and shut the lock down; collective and idempotent."""
        if self._closed:
            return
        if self._mode is not None:
            warnings.warn(
                f"rank {self._rank} closed a WindowController while holding its {self._mode} lock; released it",
                ResourceWarning,
                stacklevel=2,
            )
            self._server_release()
        self._link.call(Op.CLOSE)
        self._closed = True
        _OPEN.pop(self._serial, None)
        if self._channel is not None:
            self._channel.finished.wait()
            SERVICE.channel_finished()
        if self._recorder is not None and self._trace_path is not None:
            self._recorder.write_chrome_trace(self._trace_path)
        self._link.finish()
        self._private.Free()

    def __enter__(self) -> WindowController:
        """Use the controller as a context manager that closes it."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the controller (collective), unless an exception is leaving the block.

        Closing waits for every rank; after an error on this rank the others
        may never get there, so the controller is left open instead: closed at
        interpreter exit, or the job aborted if the exception is never caught.
        """
        if exc is None:
            self.close()

    def __repr__(self) -> str:
        """Show rank, master and state."""
        state = "closed" if self._closed else "open"
        return f"<WindowController rank={self._rank} master={self._master} size={self._size} {state}>"


_OPEN: dict[int, WindowController] = {}
"""Controllers not yet closed, by creation order (the same on every rank)."""
_SERIALS = itertools.count()


@atexit.register
def _close_all() -> None:
    """Close every controller still open, oldest first (runs before MPI_Finalize).

    If the interpreter is exiting because of an uncaught exception, the other
    ranks are not going to reach ``close()`` with this one: closing would hang
    the job, so the job is aborted instead (as ``python -m mpi4py`` does).
    """
    crashed = getattr(sys, "last_value", None)
    if crashed is not None and any(c.size > 1 for c in _OPEN.values()):
        log.critical("uncaught %r with an open WindowController; aborting the MPI job", crashed)
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)
    for serial in sorted(_OPEN):
        _OPEN[serial].close()


def trace_path(trace: str | os.PathLike[str] | None) -> str | os.PathLike[str] | None:
    """Return the trace file asked for by ``trace=`` or else ``MPILOCK_TRACE`` (None: no tracing)."""
    return trace if trace is not None else os.environ.get("MPILOCK_TRACE") or None


def sync(
    comm: MPI.Intracomm | None = None, master: int = 0, *, trace: str | os.PathLike[str] | None = None
) -> WindowController:
    """Create a :class:`WindowController` on ``comm`` (default ``COMM_WORLD``); collective.

    ``master`` is the rank that runs the lock server; ``trace`` names a Chrome
    trace file the master writes at close (see :class:`WindowController`).
    """
    return WindowController(comm, master, trace=trace)
