"""The thin MPI service loop: receive requests, feed the cores, send the replies.

One background thread per process serves every controller whose master is this
rank (one :class:`Channel` each), so many controllers never cost one busy
thread each.  The thread exists only while at least one channel is open.  A
dedicated server rank runs the same loop in its main thread instead
(:func:`serve_until_closed`).
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from mpi4py import MPI

from . import wire
from .backoff import Backoff
from .core import LockCore
from .events import ProtocolError, Send
from .protocol import TAG_REPLY, TAG_REQUEST, Op, Reply

log = logging.getLogger("mpilock.server")

_STATS, _RELEASE = int(Op.STATS), int(Op.RELEASE)  # enum lookups are slow on the hot path

SWITCH_INTERVAL = float(os.environ.get("MPILOCK_SWITCH_INTERVAL", "0.0005"))
"""GIL switch interval (seconds) the master uses while its server thread runs; 0 leaves it alone.

A thread waiting for the GIL gets it only after this long if the application
thread computes in pure Python, so it bounds the grant latency of a busy master.
"""


class Observer(Protocol):
    """What a channel reports to: the lock statistics and trace recorder."""

    def observe(self, now: float, rank: int, op: int, seq: int, replies: list[Send]) -> None:
        """Account for one request from ``rank`` and the replies it caused."""

    def stats(self) -> dict[str, Any]:
        """Summarise what was observed (sent to clients that ask with ``Op.STATS``)."""


class Channel:
    """The server side of one controller: its private communicator and core."""

    def __init__(
        self, comm: MPI.Intracomm, observer: Observer | None = None, members: Iterable[int] | None = None
    ) -> None:
        """Serve the lock of the controller that owns the private ``comm``.

        ``members`` are the ranks of ``comm`` that use the lock (default all).
        """
        self.comm = comm
        self.core = LockCore(comm.Get_size(), members)
        self.observer = observer
        self.finished = threading.Event()
        """Set once every rank has closed and the last replies are delivered."""
        self._header = wire.header_buffer()
        self._status = MPI.Status()
        self._recv = self._post()
        self._sends: wire.Pending = []

    def _post(self) -> MPI.Request:
        return self.comm.Irecv([self._header, MPI.INT64_T], MPI.ANY_SOURCE, TAG_REQUEST)

    def poll(self) -> bool:
        """Handle at most one arrived request; return whether anything happened.

        One ``Testsome`` covers the receive and every send in flight, so an
        idle poll releases the GIL once.
        """
        statuses: list[MPI.Status] = []
        done = MPI.Request.Testsome([self._recv] + [r for r, _ in self._sends], statuses)
        if not done:
            return False
        if done[-1] > 0 or len(done) > 1:
            self._sends = [(r, b) for r, b in self._sends if r != MPI.REQUEST_NULL]
        if done[0] == 0:
            self._serve_one(statuses[0].Get_source())
        return True

    def _serve_one(self, rank: int) -> None:
        op, seq, arg, aux, nbytes = self._header.tolist()
        payload = wire.recv_payload(self.comm, rank, nbytes)
        if op == _STATS:
            stats = self.observer.stats() if self.observer is not None else {}
            replies = [Send(rank, Reply.PAYLOAD, seq, payload=pickle.dumps(stats))]
        else:
            try:
                replies = self.core.handle(rank, op, seq, arg, aux, payload)
            except (ProtocolError, ValueError) as err:
                log.warning("protocol error from rank %d: %s", rank, err)
                replies = [] if op == _RELEASE else [Send(rank, Reply.ERROR, seq, payload=str(err).encode())]
            if self.observer is not None:
                self.observer.observe(time.monotonic(), rank, op, seq, replies)
        for reply in replies:
            self._sends += wire.isend(
                self.comm, reply.rank, TAG_REPLY, reply.code, reply.seq, reply.arg, reply.aux, reply.payload
            )
        if self.core.closed:
            MPI.Request.Waitall([r for r, _ in self._sends])
            self._sends.clear()
            self.finished.set()
        else:
            self._recv = self._post()


def serve(current: Callable[[], list[Channel]], wake: threading.Event | None = None) -> None:
    """Poll the channels ``current()`` returns, in this thread, until it returns none."""
    backoff = Backoff()
    while channels := current():
        busy = False
        for channel in channels:
            busy = channel.poll() or busy
        if busy:
            backoff.reset()
        else:
            if wake is not None:
                wake.clear()
            backoff.pause(wake)


def serve_until_closed(channel: Channel) -> None:
    """Serve one channel in this thread until every member rank has closed it."""
    serve(lambda: [] if channel.finished.is_set() else [channel])


class ServiceLoop:
    """The process-wide server thread; started and stopped with its channels."""

    def __init__(self) -> None:
        """Create an idle loop; :meth:`add` starts the thread."""
        self._lock = threading.Lock()
        self._channels: list[Channel] = []
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._saved_interval: float | None = None

    @property
    def running(self) -> bool:
        """Whether the server thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def add(self, channel: Channel) -> None:
        """Serve ``channel`` until every rank has closed it."""
        with self._lock:
            self._channels.append(channel)
            if self._thread is None:
                if SWITCH_INTERVAL > 0 and self._saved_interval is None:
                    self._saved_interval = sys.getswitchinterval()
                    sys.setswitchinterval(min(self._saved_interval, SWITCH_INTERVAL))
                self._thread = threading.Thread(target=self._run, name="mpilock-server", daemon=True)
                self._thread.start()
        self._wake.set()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Join the thread if it has no channel left; return whether it is gone."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def _run(self) -> None:
        try:
            serve(self._current, self._wake)
        except BaseException:  # a bug in the server would hang every rank: abort instead
            log.critical("mpilock server thread crashed; aborting the MPI job", exc_info=True)
            MPI.COMM_WORLD.Abort(70)

    def _current(self) -> list[Channel]:
        """Return the open channels; with none left, mark the thread stopped and restore the interval."""
        with self._lock:
            self._channels = [c for c in self._channels if not c.finished.is_set()]
            if not self._channels:
                self._thread = None
                if self._saved_interval is not None:
                    sys.setswitchinterval(self._saved_interval)
                    self._saved_interval = None
            return self._channels


SERVICE = ServiceLoop()
"""The one service loop of this process."""
