"""The native service loop: a C thread answers lock requests; a Python thread does what needs Python.

One C thread per process (``server/_native.c``) polls every native channel's
persistent receive with ``MPI_Test`` and answers lock requests (read, write,
try, upgrade, bounded, release, downgrade, cancel, hello, close) without the
GIL, sending replies with ``MPI_Isend``.  It hands everything else to one
Python thread per process (:class:`NativeService`), which waits for it with
the GIL released: messages with payloads (fences, acquire sites, keys too long
to travel inline), fences, ``STATS``, ``LOCKS``, the texts of errors,
refusals and deadlocks, and the end of a channel.  A rank's messages after one
handed to Python go to Python too, in order, until Python has handled it, so
that every rank's requests are applied in the order it sent them.

Statistics stay exact: the C core records every lock request with its
replies, in the order it applied them (whoever applied them), and Python feeds
those records to the channel's :class:`~mpilock.trace.Recorder` on ``STATS``,
on close, and whenever the record grows past a bound (the C thread waits for
Python once it is far past it, so memory stays bounded).

The master's own application thread, waiting for a reply, polls its channel
in C (:meth:`NativeChannel.help`): its grants need neither thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from mpi4py import MPI

from . import wire
from .dispatch import Observer, answer, refusal, send_replies
from .events import Send
from .frames import Payload
from .holders import namer
from .intake import Arrivals, Request, read
from .latch import Latch
from .native_core import NativeGraph, NativeLockCore, module
from .protocol import TAG_REQUEST, Op, Reply
from .service import JOIN_TIMEOUT, Service
from .settings import SETTINGS
from .wake import sleep_cap as wake_cap

log = logging.getLogger("mpilock.server")
_c = module()

_MESSAGE, _SPECIAL, _DRAIN, _FINISHED = 1, 2, 3, 4
"""Kinds of the things the C thread hands to Python (``enum I_*`` of _native.c)."""
_STATS = int(Op.STATS)

SOFT_EVENTS = 4096
"""Recorded requests after which the C thread asks Python to feed them to the recorder."""
HARD_EVENTS = 65536
"""Recorded requests at which the C thread stops serving until Python has fed them to the recorder."""
PAYLOAD_POLL = 0.0001
"""Seconds the Python thread waits for the C thread between two steps of a payload on its way."""
STALLED_POLL = 0.002
"""Seconds it waits between probes for a payload that is late (see :attr:`~.intake.Intake.stalled`)."""
SHORTEST_SLEEP = 10e-6
"""Poll interval of the C thread during :data:`HOT` after a request, and its first sleep after that."""
HOT = SETTINGS.native_hot
"""Seconds after a request during which the C thread polls every :data:`SHORTEST_SLEEP` (``MPILOCK_NATIVE_HOT``)."""
BUSY_SLEEP = 0.0002
"""Longest sleep of the C thread while a request came within :data:`IDLE_AFTER`."""
IDLE_AFTER = 0.05
"""Seconds without a request after which the C thread's sleeps may grow to :data:`IDLE_SLEEP`."""
IDLE_SLEEP = SETTINGS.native_idle_sleep
"""Longest sleep of the idle C thread: the first grant after idling waits at most this long more.

A wake-up costs the thread ~16 µs of CPU on a 2-core VM (timer, switch, cold caches; ``MPI_Test``
itself 0.5 µs), so 5 ms (200 wake-ups/s) keeps an idle master near 0.3 % of a core."""


class NativeChannel:
    """The server side of one controller, served by the C thread: its private communicator and native core."""

    def __init__(
        self,
        comm: MPI.Intracomm,
        observer: Observer | None,
        graph: NativeGraph,
        name: str = "",
        members: Iterable[int] | None = None,
    ) -> None:
        """Serve the lock of the controller that owns the private ``comm`` (see :class:`~.loop.Channel`)."""
        comm.Set_errhandler(MPI.ERRORS_RETURN)  # a client's message too long for the receive must not abort the job
        self.comm = comm
        self.core = NativeLockCore(comm.Get_size(), members, graph, name, record=observer is not None)
        self.observer = observer
        if observer is not None:
            observer.thread_name = namer(self.core)  # stats() and traces name the threads
        self.finished = Latch()
        """Set once every rank has closed, the last replies are delivered and the recorder has every event."""
        self._sends: wire.Pending = []
        self._words: Any = None
        self._arriving = Arrivals(comm, TAG_REQUEST)
        """Per rank, handed-over requests waiting for their payload (the first) or behind it."""
        self.id: int = _c.attach(self.core.native, comm.py2f())

    def help(self) -> bool:
        """Poll once from a client thread of the master (in C, with the GIL held: microseconds).

        The master's own requests are answered without a thread switch.  The
        C call cannot fail (an MPI failure aborts the job inside it) and a
        signal cannot interrupt it: an exception a signal handler raises
        (``KeyboardInterrupt``, a timeout alarm) arrives after the call has
        returned, with the channel consistent, so it goes to the waiting
        client like any other exception; the main thread may poll too.
        """
        return bool(_c.help(self.id))

    def set_wakeable(self, everyone: bool) -> None:
        """Say whether every client can wake the C thread: its idle sleeps are then capped by ``MPILOCK_WAKE_SLEEP``."""
        _c.set_wakeable(self.id, everyone)

    def set_client_words(self, words: Any) -> None:
        """Poke a client's word (``words``, see :mod:`.wake`) after each reply sent to it, from C or Python."""
        self._words = words
        _c.set_client_words(self.id, words)

    # -- what the Python thread does ----------------------------------------------------------------
    @property
    def waiting(self) -> bool:
        """Whether a handed-over request waits for its payload (call :meth:`advance` soon)."""
        return bool(self._arriving)

    def take(self, rank: int, message: bytes, truncated: bool) -> None:
        """Take in a request the C thread handed over (``truncated``: longer than the receive): serve it, or queue it.

        It waits for its payload behind the rank's earlier ones (the C thread
        hands over every later request of the rank until it is served, see
        ``undefer``), so each rank's requests are served in the order sent
        and other ranks are served meanwhile.
        """
        request, problem = read(message, len(message), truncated, rank)
        self._arriving.add(rank, request, problem)
        self.advance()

    def advance(self) -> bool:
        """Advance every waiting rank's payload by one step; serve the requests whose payload is here, in order.

        Return whether a payload is on its way (not only waited for): poll again soon.
        """
        return self._arriving.advance(self._serve_arrived)[1]

    def _serve_arrived(self, rank: int, request: Request, payload: Payload | None, problem: str | None) -> bool:
        """Serve a handed-over request whose payload has arrived, then let the C thread serve the rank again."""
        try:
            self.serve_message(rank, request, payload, problem)
        finally:
            _c.undefer(self.id, rank)
        return False  # the end of a channel comes from the C thread (``_FINISHED``), not from here

    def serve_message(self, rank: int, request: Request, payload: Payload | None, problem: str | None) -> None:
        """Serve a request the C thread handed over (with a payload, or not a lock request), or refuse it.

        Unlike the Python loop, nothing is reported to the observer here: the
        C core records the lock requests, :meth:`drain` feeds them to it (first
        of all before ``STATS`` is answered).
        """
        if problem is None and request[0] == _STATS:
            self.drain()
        self.send(answer(self.core, self.observer, rank, request, payload, problem, False))

    def serve_special(self, rank: int, op: int, seq: int, keys: tuple[bytes, ...], special: tuple[Any, ...]) -> None:
        """Send the reply of a request the C thread served whose reply carries a text (an error, refusal, deadlock)."""
        if special[0] == "error":
            text = self.core.error_text(special, rank, op, int(special[3]), keys)
            log.warning("protocol error from rank %d: %s", rank, text)
            self.send(refusal(rank, op, seq, text))
            return
        code = Reply.REFUSED if special[0] == "refused" else Reply.DEADLOCK
        self.send([Send(rank, code, seq, payload=self.core.special_text(special, rank, keys).encode())])

    def send(self, replies: list[Send]) -> None:
        """Start sending ``replies`` from Python (those with payloads; the C thread sends the plain ones)."""
        sends = self._sends
        send_replies(self.comm, replies, sends, self._words)  # the C thread pokes again before it sleeps
        if len(sends) >= wire.REAP_AFTER:
            self._sends = wire.reap(sends)

    def drain(self) -> None:
        """Feed the requests the C core recorded to the observer, in the order they were applied."""
        events = self.core.drain()
        observer = self.observer
        if observer is not None:
            for now, rank, op, seq, keys, replies in events:
                observer.observe(now, rank, op, seq, replies, keys)

    def finish(self) -> None:
        """Every rank has closed and the C side has delivered its last replies: finish ours and say so."""
        self.drain()
        MPI.Request.Waitall([r for r, _ in self._sends])
        self._sends.clear()
        _c.release(self.id)
        self.finished.set()

    def reap(self) -> None:
        """Complete the finished sends of Python's replies."""
        if self._sends:
            self._sends = wire.reap(self._sends)


class NativeService(Service):
    """The process's native loop: the C thread and the Python thread, started and stopped with their channels."""

    def __init__(self) -> None:
        """Create an idle service; :meth:`add` starts the threads."""
        super().__init__()
        self._graph: NativeGraph | None = None
        self._channels: dict[int, NativeChannel] = {}
        self._configured = False

    @property
    def graph(self) -> NativeGraph:
        """The wait-for graph of every native channel of this process (deadlocks across controllers)."""
        if self._graph is None:
            self._graph = NativeGraph()
        return self._graph

    def channel(self, comm: MPI.Intracomm, observer: Observer | None, name: str) -> NativeChannel:
        """Make a native channel on ``comm`` and serve it until every rank has closed it."""
        if not self._configured:
            _c.configure(
                spin=SETTINGS.spin,
                shortest=SHORTEST_SLEEP,
                hot=HOT,
                longest=min(BUSY_SLEEP, IDLE_SLEEP),
                idle_after=IDLE_AFTER,
                idle_longest=IDLE_SLEEP,
                soft_events=SOFT_EVENTS,
                hard_events=HARD_EVENTS,
                wake_longest=wake_cap(),
            )
            self._configured = True
        channel = NativeChannel(comm, observer, self.graph, name)
        self.add(channel)
        return channel

    def add(self, channel: NativeChannel) -> None:
        """Serve ``channel``: start the threads if they are not running."""
        with self._lock:
            self._channels[channel.id] = channel
            if self._paused:  # polled by drive()
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mpilock-native", daemon=True)
                self._thread.start()
        _c.start()

    def channel_finished(self) -> None:
        """If no open channel is left (one has just finished), join both threads (called by the closing rank)."""
        with self._lock:
            if self._channels:
                return
            thread = self._thread
        _c.wake_now()  # the C thread may sleep on its wake word: it must see that no channel is left
        self._join(thread)

    def _halt(self) -> None:
        """Stop the C thread for good (the Python thread sees :attr:`_paused` at its next item or timeout)."""
        _c.pause()

    def _join(self, thread: threading.Thread | None) -> None:
        """Wait for the Python thread, then for the C thread."""
        super()._join(thread)
        _c.join(JOIN_TIMEOUT)

    def drive(self) -> bool:
        """Do both threads' work once in this thread (once paused): poll every channel, then handle what it handed over.

        Return whether a request was served.
        """
        with self._lock:
            channels = list(self._channels.values())
        served = False
        for channel in channels:
            served = channel.help() or served
        while (item := _c.next_item(0.0)) is not None:
            served = True
            self._handle(item)
        for channel in channels:
            if channel.waiting:
                served = channel.advance() or served
        with self._lock:
            self._reap()
        return served

    def _reap(self) -> None:
        """Complete the finished sends of every channel's Python replies (``self._lock`` held)."""
        for channel in self._channels.values():
            channel.reap()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Join the threads if no channel is left; return whether they are gone."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running and bool(_c.join(0.0 if timeout is None else timeout))

    def _run(self) -> None:
        try:
            timeout = 1.0
            while True:
                item = _c.next_item(timeout)
                if item is not None:
                    self._handle(item)
                timeout = self._advance()
                with self._lock:
                    if self._paused:  # pause() joins this thread: no MPI call from here any more
                        self._thread = None
                        return
                    self._reap()
                    if not self._channels:
                        self._thread = None
                        return
        except BaseException:  # a bug here would hang every rank: abort instead
            log.critical("mpilock native server's Python thread crashed; aborting the MPI job", exc_info=True)
            MPI.COMM_WORLD.Abort(70)

    def _advance(self) -> float:
        """Advance the payloads the channels wait for; return how long to wait for the C thread next (seconds)."""
        with self._lock:
            waiting = [c for c in self._channels.values() if c.waiting]
        if not waiting:
            return 1.0
        moving = False
        for channel in waiting:
            moving = channel.advance() or moving
        return PAYLOAD_POLL if moving else STALLED_POLL

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind, ident = item[0], item[1]
        channel = self._channels.get(ident)
        if channel is None:
            return
        if kind == _MESSAGE:
            channel.take(item[2], item[3], bool(item[4]))
        elif kind == _SPECIAL:
            _, _, rank, op, seq, keys, special = item
            channel.serve_special(rank, op, seq, keys, special)
        elif kind == _DRAIN:
            channel.drain()
        elif kind == _FINISHED:
            # Forget the channel before finish() sets its event: the closing thread, woken by that event,
            # joins both threads only when no channel is left (otherwise MPI_Finalize could run beside them).
            with self._lock:
                del self._channels[ident]
            channel.finish()


SERVICE = NativeService()
"""The one native service of this process."""
