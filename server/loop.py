"""The thin MPI service loop: receive requests, feed the cores, send the replies.

One background thread per process serves every controller whose master is this
rank (one :class:`Channel` each), so many controllers never cost one busy
thread each.  The thread exists only while at least one channel is open.
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from collections.abc import Callable
from typing import Any

from mpi4py import MPI

from .backoff import Backoff
from .core import LockCore
from .events import ProtocolError, Send
from .protocol import HEADER_LEN, TAG_PAYLOAD, TAG_REPLY, TAG_REQUEST, Op, Reply

log = logging.getLogger("mpilock.server")

Observer = Callable[[float, int, int, int, list[Send]], None]
"""Called as ``observer(time, rank, op, seq, replies)`` after each request."""


class Channel:
    """The server side of one controller: its private communicator and core."""

    def __init__(self, comm: MPI.Intracomm, observer: Observer | None = None) -> None:
        """Serve the lock of the controller that owns the private ``comm``."""
        self.comm = comm
        self.core = LockCore(comm.Get_size())
        self.observer = observer
        self.finished = threading.Event()
        """Set once every rank has closed and the last replies are delivered."""
        self._header = array("q", bytes(8 * HEADER_LEN))
        self._status = MPI.Status()
        self._recv = self._post()
        self._sends: list[tuple[MPI.Request, Any]] = []

    def _post(self) -> MPI.Request:
        return self.comm.Irecv([self._header, MPI.INT64_T], MPI.ANY_SOURCE, TAG_REQUEST)

    def poll(self) -> bool:
        """Handle at most one arrived request; return whether anything happened."""
        busy = self._flush_sends()
        if not self._recv.Test(self._status):
            return busy
        rank = self._status.Get_source()
        op, seq, arg, aux, nbytes = self._header.tolist()
        payload = None
        if nbytes:
            buf = bytearray(nbytes)
            self.comm.Recv([buf, MPI.BYTE], rank, TAG_PAYLOAD)
            payload = bytes(buf)
        try:
            replies = self.core.handle(rank, op, seq, arg, aux, payload)
        except (ProtocolError, ValueError) as err:
            log.warning("protocol error from rank %d: %s", rank, err)
            replies = [] if op == Op.RELEASE else [Send(rank, Reply.ERROR, seq, payload=str(err).encode())]
        for reply in replies:
            self._send(reply)
        if self.observer is not None:
            self.observer(time.monotonic(), rank, op, seq, replies)
        if self.core.closed:
            self._recv = MPI.REQUEST_NULL
            MPI.Request.Waitall([r for r, _ in self._sends])
            self._sends.clear()
            self.finished.set()
        else:
            self._recv = self._post()
        return True

    def _send(self, reply: Send) -> None:
        data = reply.payload or b""
        header = array("q", [reply.code, reply.seq, reply.arg, reply.aux, len(data)])
        self._sends.append((self.comm.Isend([header, MPI.INT64_T], reply.rank, TAG_REPLY), header))
        if data:
            self._sends.append((self.comm.Isend([data, MPI.BYTE], reply.rank, TAG_PAYLOAD), data))

    def _flush_sends(self) -> bool:
        if not self._sends:
            return False
        before = len(self._sends)
        self._sends = [(r, b) for r, b in self._sends if not r.Test()]
        return len(self._sends) != before


class ServiceLoop:
    """The process-wide server thread; started and stopped with its channels."""

    def __init__(self) -> None:
        """Create an idle loop; :meth:`add` starts the thread."""
        self._lock = threading.Lock()
        self._channels: list[Channel] = []
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

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
            self._serve()
        except BaseException:  # a bug in the server would hang every rank: abort instead
            log.critical("mpilock server thread crashed; aborting the MPI job", exc_info=True)
            MPI.COMM_WORLD.Abort(70)

    def _serve(self) -> None:
        backoff = Backoff()
        while True:
            with self._lock:
                channels = [c for c in self._channels if not c.finished.is_set()]
                self._channels = channels
                if not channels:
                    self._thread = None
                    return
            busy = False
            for channel in channels:
                busy = channel.poll() or busy
            if busy:
                backoff.reset()
            else:
                self._wake.clear()
                backoff.pause(self._wake)


SERVICE = ServiceLoop()
"""The one service loop of this process."""
