"""The thin MPI service loop: receive requests, feed the cores, send the replies.

One background thread per process serves every controller whose master is this
rank (one :class:`Channel` each), so many controllers never cost one busy
thread each.  The thread exists only while at least one channel is open.  A
dedicated server rank runs the same loop in its main thread instead
(:func:`serve_until_closed`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from mpi4py import MPI

from . import wire
from .backoff import CONTENDED_SLEEP, Backoff
from .core import LockCore
from .deadlock import WaitGraph
from .dispatch import Observer, answer, send_replies
from .frames import Payload
from .holders import namer
from .intake import Arrivals, Request, read
from .latch import Latch
from .protocol import TAG_REQUEST
from .service import Service
from .settings import SETTINGS
from .wake import IdleSleep, wake_own_server

log = logging.getLogger("mpilock.server")

_TRUNCATE = MPI.ERR_TRUNCATE
_MAIN = threading.main_thread()

SWITCH_INTERVAL = SETTINGS.switch_interval
"""GIL switch interval (seconds) the master uses while its server thread runs; 0 leaves it alone.

A thread waiting for the GIL gets it only after this long if the application
thread computes in pure Python, so it bounds the grant latency of a busy master.
"""


class Channel:
    """The server side of one controller: its private communicator and core."""

    def __init__(
        self,
        comm: MPI.Intracomm,
        observer: Observer | None = None,
        members: Iterable[int] | None = None,
        graph: WaitGraph | None = None,
        name: str = "",
        lock: threading.Lock | None = None,
    ) -> None:
        """Serve the lock of the controller that owns the private ``comm``.

        ``members`` are the ranks of ``comm`` that use the lock (default
        all); ``graph`` is the wait-for graph shared by every channel of this
        process, ``name`` names the controller in deadlock reports.  Channels
        that share a graph must share ``lock``: a deadlock search reads every
        core of the graph.
        """
        comm.Set_errhandler(MPI.ERRORS_RETURN)  # a client's message too long for the receive must not abort the job
        self.comm = comm
        self.core = LockCore(comm.Get_size(), members, graph, name)
        self.observer = observer
        if observer is not None:
            observer.thread_name = namer(self.core)  # stats() and traces name the threads
        self.finished = Latch()
        """Set once every rank has closed and the last replies are delivered."""
        self._buffer = wire.message_buffer()
        self._view = memoryview(self._buffer)
        self._status = MPI.Status()
        self._recv = comm.Recv_init([self._buffer, MPI.BYTE], MPI.ANY_SOURCE, TAG_REQUEST)
        """One persistent receive, restarted after each request (cheaper than a new ``Irecv``)."""
        self._recv.Start()
        self._sends: wire.Pending = []
        self._arriving = Arrivals(comm, TAG_REQUEST)
        """Per rank, requests waiting for their payload (the first) or behind it."""
        self._lock = lock if lock is not None else threading.Lock()
        """Held while polling: the server thread and a waiting client of this rank may both poll."""
        self.wakeable = False
        """Whether every client can wake the server thread (see :mod:`.wake`)."""

        self._words: Any = None
        """The clients' words (see :mod:`.wake`): each reply pokes its rank's."""
        self._replied: set[int] = set()
        """Ranks sent a reply since the server thread last slept (poked again before it sleeps)."""

    def set_wakeable(self, everyone: bool) -> None:
        """Say whether every client can wake the server thread: its idle sleeps may then be long."""
        self.wakeable = everyone

    def set_client_words(self, words: Any) -> None:
        """Poke a client's word (``words``, see :mod:`.wake`) after each reply sent to it: it may sleep on it."""
        self._words = words

    def settle(self) -> bool:
        """Before the server thread sleeps: complete the replies in flight and poke their clients once more.

        An MPI may put a reply on the wire only at a later progress call, after
        the first poke: a client that slept through it is woken now.  Returns
        ``False`` (do not sleep yet) while a reply is still going out, or while
        another thread polls the channel (a thread of the master's own client
        helping: it changes the sends and the replied set, so this waits its turn).
        """
        if not self._lock.acquire(False):
            return False
        try:
            if self._sends:
                self._sends = wire.reap(self._sends)
                if self._sends:
                    return False
            words = self._words
            if words is not None:
                for rank in self._replied:
                    words.poke(rank)
            self._replied.clear()
            return True
        finally:
            self._lock.release()

    def poll(self, block: bool = True) -> bool:
        """Handle at most one arrived request; return whether one was handled.

        A busy poll is one ``Test``; the reply sends are completed only by
        idle polls (or once ``REAP_AFTER`` are in flight), so the hot path
        costs one MPI call, and an idle poll at most two.  With ``block``
        false, return at once if another thread is polling this channel.
        While payloads arrive, a poll takes one more step of each (a probe,
        or one message) and returns true while one is on its way: poll again
        at once.  A poll never waits for a client's message.
        """
        if not self._lock.acquire(block):
            return False
        try:
            if self.finished.is_set():
                return False
            if self.core.outbox:
                self._send_outbox()
            try:
                arrived, truncated = self._recv.Test(self._status), False
            except MPI.Exception as err:  # the status holds the sender and the message's first bytes are here
                if err.Get_error_class() != _TRUNCATE:
                    raise
                arrived = truncated = True
            if arrived:
                self._take(self._status.Get_source(), truncated)
                return True
            if self._arriving:  # the copying happens in our Tests: poll again at once while a payload moves
                return any(self._arriving.advance(self._serve_arrived))
            if self._sends:
                self._sends = wire.reap(self._sends)
            return False
        finally:
            self._lock.release()

    def help(self) -> bool:
        """Poll once from a client thread of the master, unless the server thread is polling.

        A rank's application thread that waits for its own server's reply
        serves the request itself instead of handing the GIL to the server
        thread and back (~35 µs per lock on the master, measured).  A
        failure while serving aborts the job, as in the server thread: the
        channel would be left without a posted receive and every rank would hang.

        Never in the main thread: Python runs signal handlers there, between
        any two bytecodes, and an exception one raises (``KeyboardInterrupt``,
        a timeout alarm) in the middle of serving would leave the channel
        broken.  The main thread's waits leave the serving to the server thread.
        """
        if threading.current_thread() is _MAIN:
            return False
        try:
            return self.poll(False)
        except BaseException:
            log.critical("mpilock server failed in a waiting client thread; aborting the MPI job", exc_info=True)
            MPI.COMM_WORLD.Abort(70)
            raise

    def _send_outbox(self) -> None:
        """Send the replies another channel's request caused here (grants after a queue was reordered)."""
        replies, self.core.outbox = self.core.outbox, []
        if self.observer is not None:
            self.observer.observe(time.monotonic(), -1, 0, 0, replies)
        send_replies(self.comm, replies, self._sends, self._words, self._replied)

    def _take(self, rank: int, truncated: bool = False) -> None:
        """Take in the request message that has just arrived from ``rank``: serve it, or queue it for its payload.

        A request waits in its rank's queue while its payload arrives, or
        behind an earlier one that waits, so each rank's requests are served
        in the order sent and other ranks are served meanwhile.
        """
        request, problem = read(self._view, self._status.Get_count(MPI.BYTE), truncated, rank)
        if request is not None and not request[4] and problem is None and rank not in self._arriving:
            self._serve(rank, request, None, None, False)  # the hot path
            if not self.finished.is_set():
                self._recv.Start()
            return
        self._recv.Start()
        self._arriving.add(rank, request, problem)
        self._arriving.advance(self._serve_arrived)

    def _serve_arrived(self, rank: int, request: Request, payload: Payload | None, problem: str | None) -> bool:
        """Serve a request whose payload has arrived (the receive is on); return whether the channel finished."""
        self._serve(rank, request, payload, problem, True)
        return self.finished.is_set()

    def _serve(self, rank: int, request: Request, payload: Payload | None, problem: str | None, started: bool) -> None:
        """Serve ``rank``'s ``request`` (refuse it if it has a ``problem``); ``started``: the receive is on."""
        replies = answer(self.core, self.observer, rank, request, payload, problem, True)
        sends = self._sends
        send_replies(self.comm, replies, sends, self._words, self._replied)
        if self.core.closed:
            MPI.Request.Waitall([r for r, _ in sends])
            sends.clear()
            if started:  # never in practice (a rank's CLOSE behind its own payload): the receive is on
                self._recv.Cancel()
                self._recv.Wait()
            self._recv.Free()
            self.finished.set()
            return
        if len(sends) >= wire.REAP_AFTER:
            self._sends = wire.reap(sends)


def serve(current: Callable[[], list[Channel]], changed: Latch | None = None, contended: float = 0.0) -> None:
    """Poll the channels ``current()`` returns, in this thread, until it returns none.

    ``current()`` is asked again only when a channel has finished or
    ``changed`` is set (a channel was added), not on every poll.  A server
    thread that shares the GIL with an application passes ``contended`` (see
    :class:`Backoff`); a rank that only serves has nobody to yield to.
    """
    backoff = Backoff(contended=contended)
    idle = IdleSleep()
    channels = current()
    while channels:
        busy = stale = False
        for channel in channels:
            if channel.poll():
                busy = True
            if channel.finished.is_set():  # possibly finished by a client thread's help()
                stale = True
        if changed is not None and changed.is_set():
            changed.clear()
            stale = True
        if stale:
            channels = current()
        if busy:
            backoff.reset()
            idle.worked()
        elif not stale:
            everyone = all(c.wakeable for c in channels)
            if not (idle.due() and all([c.settle() for c in channels]) and idle.sleep(everyone, changed)):
                backoff.pause(changed)


def serve_until_closed(channel: Channel) -> None:
    """Serve one channel in this thread until every member rank has closed it."""
    serve(lambda: [] if channel.finished.is_set() else [channel])


class ServiceLoop(Service):
    """The process-wide server thread; started and stopped with its channels."""

    def __init__(self) -> None:
        """Create an idle loop; :meth:`add` starts the thread."""
        super().__init__()
        self.graph = WaitGraph()
        """The wait-for graph of every channel this process serves (deadlocks across controllers)."""
        self.poll_lock = threading.Lock()
        """Held by whoever polls one of the channels (they share :attr:`graph`)."""
        self._channels: list[Channel] = []
        self._wake = Latch()
        self._saved_interval: float | None = None

    def add(self, channel: Channel) -> None:
        """Serve ``channel`` until every rank has closed it."""
        with self._lock:
            self._channels.append(channel)
            if self._paused:  # polled by drive()
                return
            if SWITCH_INTERVAL > 0 and self._saved_interval is None:
                self._saved_interval = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved_interval, SWITCH_INTERVAL))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mpilock-server", daemon=True)
                self._thread.start()
        self._wake.set()
        wake_own_server()

    def channel_finished(self) -> None:
        """If no open channel is left (one has just finished), restore the switch interval and join the thread.

        Called by the closing rank, so that when ``close()`` returns the
        interval is back and no server thread is left, not whenever the
        server thread next looks.
        """
        with self._lock:
            if not all(c.finished.is_set() for c in self._channels):
                return
            self._restore_interval()
            thread = self._thread
        self._halt()
        self._join(thread)

    def _halt(self) -> None:
        """Wake the server thread (from its event, or its sleep on this rank's wake word)."""
        self._wake.set()
        wake_own_server()

    def drive(self) -> bool:
        """Poll every open channel once in this thread, the server thread's work once paused; return if one served."""
        with self._lock:
            channels = [c for c in self._channels if not c.finished.is_set()]
        served = False
        for channel in channels:
            served = channel.poll(False) or served
        return served

    def _restore_interval(self) -> None:
        if self._saved_interval is not None:
            sys.setswitchinterval(self._saved_interval)
            self._saved_interval = None

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Join the thread if it has no channel left; return whether it is gone."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def _run(self) -> None:
        try:
            serve(self._current, self._wake, CONTENDED_SLEEP)
        except BaseException:  # a bug in the server would hang every rank: abort instead
            log.critical("mpilock server thread crashed; aborting the MPI job", exc_info=True)
            MPI.COMM_WORLD.Abort(70)

    def _current(self) -> list[Channel]:
        """Return the open channels; with none left, mark the thread stopped and restore the interval."""
        with self._lock:
            self._channels = [c for c in self._channels if not c.finished.is_set()]
            if self._paused:  # the waiting clients poll from now on
                self._thread = None
                return []
            if not self._channels:
                self._thread = None
                self._restore_interval()
            return self._channels


SERVICE = ServiceLoop()
"""The one service loop of this process."""
