"""The client side of the wire: send requests to the master, poll for replies."""

from __future__ import annotations

import math
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from mpi4py import MPI

from .errors import ClosedError, DeadlockError, LimitError, MpilockError
from .guard import Guard
from .server import frames, wake, wire
from .server.backoff import CLIENT_SPIN_SECONDS, Backoff
from .server.frames import Frames, Payload, joined
from .server.latch import Latch
from .server.native import PAUSED, drive
from .server.native_core import NATIVE
from .server.protocol import (
    ANSWERED_AT_ONCE,
    HEADER,
    SLOT_SHIFT,
    TAG_FRAMES,
    TAG_REPLY,
    TAG_REPLY_PAYLOAD,
    TAG_REQUEST,
    Op,
    Reply,
)

_NO_CODE = bytes(8)  # the code word of a header that never arrived
_NOBODY = -12345
"""The source a receive's status shows until the receive completes (see :meth:`Link._receive`)."""
KEEP_SENT = 64
"""Send buffers kept alive after their send started, whatever happens to its request object."""
HANDOVER_WAIT = 0.002
"""Longest a thread waits for its reply before it tries again to become the receiver (seconds)."""
DRIVE_INTERVAL = 0.0002
"""Seconds between a paused process's polls of its channels while it waits for an event (see :meth:`Link.wait_for`)."""
_REPLIES = {int(r): r for r in Reply}
"""Reply codes to members, a dict lookup: ``Reply(code)`` costs ~0.2 µs."""
_REFUSALS: dict[Reply, tuple[type[MpilockError], str]] = {
    Reply.ERROR: (MpilockError, "lock server rejected the request: "),
    Reply.REFUSED: (LimitError, ""),
    Reply.DEADLOCK: (DeadlockError, ""),
}
"""Replies that end a request with an error: the server kept nothing of it."""


NATIVE_SENDS = True
"""Whether links send header-only requests with the native ``Sender`` when the module serves mpi4py's MPI
(tests set it false before ``sync()`` to run the same requests through the Python path)."""


def _sender(comm: MPI.Intracomm, master: int) -> Any:
    """Return a native ``Sender`` to ``master`` of ``comm``, or ``None`` without a module built for mpi4py's MPI.

    It sends a header-only request, marked sent just before, in one C call
    (no signal handler runs inside it), at less than half the cost of the same
    in Python.  It serves the clients whichever server loop runs.
    """
    if NATIVE is None or not NATIVE_SENDS or not hasattr(NATIVE, "Sender"):
        return None
    from .server.native_build import serves_mpi4pys_mpi

    if not serves_mpi4pys_mpi(NATIVE):
        return None
    return NATIVE.Sender(comm.py2f(), master)


class Answer(NamedTuple):
    """A reply as received by a client (a tuple: cheap on the hot path)."""

    code: Reply
    seq: int
    arg: int
    aux: int
    payload: Payload | None


_new_answer = tuple.__new__
"""Makes an :class:`Answer` in C (a named tuple's own ``__new__`` is a Python function)."""


class Watcher:
    """Something that watches a long wait: asks the server now and then and reports (see :mod:`.report`)."""

    due: float
    """``time.monotonic()`` at which to ask next."""

    def ask(self, link: Link) -> int:
        """Send a question to the server; return its sequence number."""
        raise NotImplementedError

    def answered(self, answer: Answer) -> None:
        """Take the server's answer to the question (and maybe schedule :attr:`due` again)."""
        raise NotImplementedError


class _Wait:
    """What one wait is waiting for (shared by its turns as the receiver and in its box)."""

    __slots__ = ("accept", "deadline", "expired", "question", "seq", "taken", "watch", "watcher")

    def __init__(self, seq: int, deadline: float | None, watcher: Callable[[float], Watcher | None] | None) -> None:
        self.seq = seq
        self.accept: frozenset[Reply] | None = None
        self.taken: list[bool] | None = None
        """Set ``taken[0]`` true as the reply to ``seq`` leaves the box (see :meth:`Link.call`)."""
        self.deadline = deadline
        self.expired = False
        self.question = -1
        self.watcher = watcher
        self.watch: Watcher | None = None

    def start_watch(self) -> None:
        """Make the watcher, if any, once: the reply was not there at once."""
        if self.watcher is not None and self.watch is None:
            self.watch = self.watcher(time.monotonic())
            self.watcher = None

    def due(self) -> bool:
        """Whether the deadline has passed."""
        return self.deadline is not None and time.monotonic() >= self.deadline


class Box:
    """Where the replies to one thread of this rank wait for it (the thread's slot, see :mod:`mpilock.holder`)."""

    __slots__ = ("_bell", "answers")

    def __init__(self) -> None:
        """Make an empty box."""
        self.answers: dict[int, Answer] = {}
        """seq -> reply, put here by whichever thread received it."""
        self._bell = threading.Lock()
        """Locked while nobody rang: a C lock, not a ``threading.Event`` (Python code, which a signal
        handler's exception can leave with its inner lock held, blocking every thread)."""
        self._bell.acquire()

    def ring(self) -> None:
        """Wake the thread: a reply is here, or it should try to become the receiver."""
        try:  # noqa: SIM105 - contextlib.suppress is Python code a signal handler could cut
            self._bell.release()
        except RuntimeError:
            pass  # rung already

    def sleep(self, seconds: float) -> None:
        """Wait until the bell rings or ``seconds`` pass (the box is the truth; the bell only wakes)."""
        self._bell.acquire(timeout=seconds)


class _Drain(Guard):
    """Takes the reply to one request off the wire and drops it, finished whatever interrupts (see :meth:`Link.call`).

    Its ``__exit__`` is the guard's: ``_give`` is called again until one call
    completes (in C, with the native module), then the first exception that
    struck meanwhile is raised.
    """

    __slots__ = ("_link", "_seq", "_taken")

    def __init__(self, link: Link, seq: int, taken: list[bool]) -> None:
        """Drain the reply to request ``seq`` of ``link``; ``taken[0]`` says it is off the wire."""
        self._link = link
        self._seq = seq
        self._taken = taken

    def _give(self, exc: BaseException | None, token: list[Any]) -> BaseException | None:
        """Wait for the reply until it is taken (an error reply, or a close, ends it too)."""
        link, seq, taken = self._link, self._seq, self._taken
        try:
            while not taken[0]:
                link.wait(seq, taken=taken)
        except MpilockError:
            pass  # an error reply (taken), or the controller closed under us: nothing more will come
        return None


class Link:
    """One rank's connection to the lock server over the private communicator.

    Any thread may send and wait.  A send takes a lock for the few
    instructions that start it.  One waiting thread at a time is the
    *receiver*: it tests the one persistent reply receive and puts each reply
    in the box of the thread whose slot its seq names (:class:`Box`), waking
    that thread; the others wait on their box.  When the receiver's own reply
    comes it hands the role to another waiting thread, so no wait starves.
    """

    def __init__(
        self,
        comm: MPI.Intracomm,
        master: int,
        local: Callable[[], bool] | None = None,
        poke: Callable[[], object] | None = None,
        sleeper: wake.Sleeper | None = None,
    ) -> None:
        """Talk to the server on rank ``master`` of the private ``comm``.

        On the master itself, ``local`` polls its server once (returning
        whether it handled a request); waits call it between their tests.
        ``poke`` wakes the server if it sleeps (a rank of its node, see
        :mod:`.server.wake`); every send calls it.  With ``sleeper``, a wait
        past its spin sleeps on this rank's word, which the server pokes with
        each reply, instead of polling with timed sleeps.
        """
        self.comm = comm
        self.master = master
        self._local = local
        self._poke = poke
        self._sleeper = sleeper
        self._sends: wire.Pending = []
        self._send_lock = threading.Lock()
        """Held while a send starts: the send list is shared by the threads."""
        self._receiver: _Wait | None = None
        """The wait of the thread that receives replies for everyone now (the receiver role), if any.

        Taken under ``_role_lock`` and given back with plain stores: no
        function call, so no signal handler can run in between and leave the
        role taken by a wait that is over."""
        self._role_lock = threading.Lock()
        self._boxes: dict[int, Box] = {}
        """slot -> the box of that thread's replies."""
        self._waiting: dict[int, Box] = {}
        """slot -> box, of the threads waiting now (one of them takes over the receiver role)."""
        self.closed = False
        """Set by the controller's close: waits end with :class:`ClosedError`, sends are dropped."""
        self._header = wire.reply_buffer()
        self._recv = comm.Recv_init([self._header, MPI.BYTE], master, TAG_REPLY)
        """One persistent receive for the replies, started when a wait needs it."""
        self._started = False
        self._rx: list[Any] | None = None
        """The payload of the reply in ``_header`` as it arrives: ``[seq, pieces, done, status, payload, buffers]``."""
        self._kept: deque[Any] = deque(maxlen=KEEP_SENT)
        self._sender = _sender(comm, master)
        """The native module's ``Sender`` of header-only requests, if it is built for mpi4py's MPI."""

    def open_box(self, slot: int) -> Box:
        """Make the box of the thread with ``slot`` (before its first request)."""
        box = self._boxes[slot] = Box()
        return box

    def send(
        self,
        op: Op,
        seq: int,
        arg: int = 0,
        aux: int = 0,
        payload: Payload | None = None,
        area: bytes = b"",
        site: int = 0,
        mark: list[Any] | None = None,
        slot: int = 0,
    ) -> int:
        """Send request ``seq`` (with key ``area`` and acquire ``site``) without waiting; return ``seq``.

        ``seq`` carries the sending thread's slot (:meth:`mpilock.holder.Holder.next_seq`).
        The message and its payload go out whole or not at all: one ``Isend``,
        or persistent sends started by one ``Startall``.  Python runs a signal
        handler only between bytecodes, never inside a C call, so an exception
        it raises cannot split them.  With ``mark``, ``mark[slot]`` is set to
        true just before that call, with no bytecode in between where a handler
        could run: true means the request went out (see
        :class:`mpilock.controller.Lock`).  After the controller closed,
        nothing is sent.
        """
        comm, master = self.comm, self.master
        if payload is None and self._sender is not None:  # the hot path, in one C call (see _sender)
            self._sender.send(op, seq, arg, aux, site, area, mark, slot)
            if self._poke is not None:
                self._poke()
            return seq
        if payload is None:  # the same in Python: the header (and key area) alone, one Isend
            message = [HEADER.pack(op, seq, arg, aux, 0, site, len(area)) + area, MPI.BYTE]
            with self._send_lock:
                if self.closed:
                    return seq
                self._kept.append(message)  # a small message outlives a request object a signal made us drop
                if mark is not None:
                    mark[slot] = True
                sends = self._sends
                sends.append((comm.Isend(message, master, TAG_REQUEST), message))
                if len(sends) >= wire.REAP_AFTER:
                    self._sends = wire.reap(sends)
            if self._poke is not None:
                self._poke()
            return seq
        parts = wire.request_parts(comm, master, op, seq, arg, aux, payload, area, site)
        with self._send_lock:
            if self.closed:
                return seq
            if len(parts) == 1:
                message = parts[0][0]
                self._kept.append(message)
                if mark is not None:
                    mark[slot] = True
                self._sends.append((comm.Isend(message, master, TAG_REQUEST), message))
            else:
                group = [comm.Send_init(buffer, master, tag) for buffer, tag in parts]
                self._sends.append((group, parts))
                if mark is not None:
                    mark[slot] = True
                MPI.Prequest.Startall(group)
            if len(self._sends) >= wire.REAP_AFTER:
                self._sends = wire.reap(self._sends)
        if self._poke is not None:
            self._poke()
        return seq

    def wait(
        self,
        seq: int,
        accept: frozenset[Reply] | None = None,
        deadline: float | None = None,
        watcher: Callable[[float], Watcher | None] | None = None,
        taken: list[bool] | None = None,
    ) -> Answer | None:
        """Wait for the reply to ``seq`` (with a code in ``accept``) until ``deadline``.

        Other replies to this thread (left over from a withdrawn request) are
        dropped.  Returns ``None`` if ``deadline`` (``time.monotonic()``)
        passes.  An ERROR, REFUSED or DEADLOCK reply raises
        :class:`MpilockError`, :class:`LimitError` or :class:`DeadlockError`;
        a controller closed meanwhile (by another thread) :class:`ClosedError`.
        If the reply is not there at once, ``watcher(start)`` may return a
        :class:`Watcher` that questions the server while the wait lasts.

        An exception raised while this waits (a signal handler's, say) leaves
        the link usable and loses no message: the receive is marked started
        just before it is started (a Test of a receive that never started
        reads code 0, which is skipped), and marked finished only as the reply,
        payload and all, is put in its box (until then a Test of the finished
        receive reads the same header again, and the payload goes on arriving
        where it stopped, :meth:`_payload`).  A reply taken from the box is the
        caller's: if an exception loses it there, a grant is handed back by the
        caller's cancel, and a question is asked again.  With ``taken``,
        ``taken[0]`` is set true as the reply to ``seq`` leaves the box, with no
        bytecode in between where a handler could run.
        """
        slot = seq >> SLOT_SHIFT
        box = self._boxes[slot]
        answers = box.answers
        state = _Wait(seq, deadline, watcher)
        state.accept = accept
        state.taken = taken
        self._waiting[slot] = box
        try:
            while True:
                if answers:
                    answer = answers.get(seq)
                    if answer is not None and accept is not None and answer.code in accept and len(answers) == 1:
                        del answers[seq]  # the common case, _open's work inlined: taken with no call in between
                        if taken is not None:
                            taken[0] = True
                        return answer
                    answer = self._open(box, state)
                    if answer is not None:
                        return answer
                    continue
                if self.closed:
                    raise ClosedError("this WindowController was closed (by another thread) while this one waited")
                with self._role_lock:
                    if self._receiver is None:
                        self._receiver = state
                if self._receiver is state:
                    done = self._receive_for(box, state)
                    self._receiver = None
                    if len(self._waiting) > 1:
                        self._hand_over(slot)
                    if done:
                        if state.expired:
                            return None
                        continue
                else:
                    box.sleep(HANDOVER_WAIT)
                    state.start_watch()
                    watch = state.watch
                    if watch is not None and state.question < 0 and time.monotonic() >= watch.due:
                        state.question = watch.ask(self)
                if state.due():
                    return None
        finally:  # stores only: no call where a handler could cut this short
            if self._receiver is state:
                self._receiver = None
            del self._waiting[slot]

    def _open(self, box: Box, state: _Wait) -> Answer | None:
        """Take this thread's replies from its box: its answer, the watcher's, or stale ones (dropped)."""
        answers = box.answers
        for seq in list(answers):
            answer = answers[seq]
            del answers[seq]  # taken: no bytecode between reading and deleting where a handler runs
            if seq == state.seq:
                if state.taken is not None:
                    state.taken[0] = True
                refusal = _REFUSALS.get(answer.code)
                if refusal is not None:
                    error, prefix = refusal
                    raise error(prefix + joined(answer.payload).decode(errors="replace"))
                if state.accept is None or answer.code in state.accept:
                    return answer
            elif seq == state.question and state.watch is not None:
                state.question = -1
                state.watch.answered(answer)
        return None

    def _hand_over(self, slot: int) -> None:
        """After giving up the receiver role: wake another waiting thread so that it takes it."""
        for other, box in list(self._waiting.items()):
            if other != slot:
                box.ring()
                return

    def _receive_for(self, box: Box, state: _Wait) -> bool:
        """As the receiver: test for replies until one is in ``box`` or the wait's deadline passes.

        Returns true when the wait should look at its box (or has expired:
        ``state.expired``).  Replies to other threads go to their boxes.
        """
        backoff: Backoff | None = None
        recv = self._recv
        sleeper = self._sleeper
        while True:
            if self.closed:
                return True
            if not self._started:
                self._header[:8] = _NO_CODE  # what a Test reads if an exception skips the Start below
                self._started = True
                recv.Start()
            if recv.Test():
                if sleeper is not None:
                    sleeper.done()
                delivered = self._take()  # puts it in its box and marks the receive finished as it returns
                if delivered is box:
                    return True
                if delivered is not None:
                    delivered.ring()
                if backoff is not None:
                    backoff.reset()
                continue
            if state.deadline is not None or state.watch is not None:
                now = time.monotonic()
                if state.deadline is not None and now >= state.deadline:
                    if sleeper is not None:
                        sleeper.done()
                    state.expired = True
                    return True
                watch = state.watch
                if watch is not None and state.question < 0 and now >= watch.due:
                    state.question = watch.ask(self)
            if PAUSED.is_set():  # MPI_Finalize has begun and no server thread runs: serve this rank's channels
                if drive():
                    continue
            elif self._local is not None and self._local():
                continue  # served a request here (perhaps ours): test again at once
            if backoff is None:  # created only when the reply is not there at once
                backoff = Backoff(spin=CLIENT_SPIN_SECONDS)
                state.start_watch()
            if sleeper is not None and not PAUSED.is_set() and not backoff.spinning():
                # Asleep on this rank's word until the server pokes it with a reply (or the next deadline).
                until = state.deadline if state.deadline is not None else math.inf
                if state.watch is not None:
                    until = min(until, state.watch.due)
                if sleeper.sleep(until - time.monotonic()):
                    backoff.reset()  # poked: the reply is on its way; test hot until it shows
                continue
            backoff.pause()

    def wait_for(self, event: Latch) -> None:
        """Block until ``event`` is set, serving this rank's channels meanwhile if no server thread does."""
        while not event.is_set():
            if PAUSED.is_set():
                drive()
                event.wait(DRIVE_INTERVAL)
            else:
                event.wait()

    def call(
        self, op: Op, seq: int, arg: int = 0, aux: int = 0, payload: Payload | None = None, area: bytes = b""
    ) -> Answer:
        """Send request ``seq`` and wait for its reply.

        For a request the server answers at once (:data:`ANSWERED_AT_ONCE`),
        an exception that cuts this after the request went out does not leave
        the reply behind: it is taken in whole, and dropped, before the
        exception goes on (further exceptions meanwhile are dropped too).
        Left unreceived, a large payload can stall every later message to
        this rank, the application's own included, until a wait of this link
        takes it (MPICH over TCP stops reading the connection).  That takes
        as long as the transfer: the server sent the reply already.
        """
        if op not in ANSWERED_AT_ONCE:
            answer = self.wait(self.send(op, seq, arg, aux, payload, area=area))
            assert answer is not None  # no deadline
            return answer
        sent, taken = [False], [False]
        drain = _Drain(self, seq, taken)  # made before anything is sent: an exception in the making sends nothing
        try:
            self.send(op, seq, arg, aux, payload, area=area, mark=sent)
            answer = self.wait(seq, taken=taken)
        except MpilockError:
            raise  # the server's answer was an error: taken, nothing to drain
        except BaseException:
            if sent[0] and not taken[0]:
                try:  # noqa: SIM105 - contextlib.suppress is Python code a signal handler could cut
                    drain.__exit__(None, None, None)  # a C call when the native module is built: nothing cuts it
                except BaseException:
                    pass  # an exception that struck while draining: the first one goes on
            raise
        assert answer is not None  # no deadline
        return answer

    def _take(self) -> Box | None:
        """Put the reply in the header buffer, payload and all, in its thread's box; return the box.

        The receive is marked finished as the reply is put in the box.  A reply
        to a thread this link has no box for is dropped.
        """
        code, seq, arg, aux, nbytes, _, _ = HEADER.unpack_from(self._header)
        if not code:
            self._started = False
            return None
        payload = self._payload(seq, nbytes) if nbytes else None
        answer = _new_answer(Answer, (_REPLIES[code], seq, arg, aux, payload))  # no Python __new__ frame
        box = self._boxes.get(seq >> SLOT_SHIFT)
        self._rx = None  # from here on no bytecode where a handler could run: the reply is delivered whole
        if box is not None:
            box.answers[seq] = answer
        self._started = False
        return box

    def _payload(self, seq: int, nbytes: int) -> Payload:
        """Receive the payload of reply ``seq`` (``nbytes`` as its header says); resumable.

        An exception that cuts this short leaves the progress in ``_rx``: the
        next call goes on with the message it had not yet received.  Each
        message is one ``Recv`` into a buffer kept in ``_rx``, and a status
        whose source is set to :data:`_NOBODY` before and read after tells
        whether a ``Recv`` cut short by an exception had completed.
        """
        kept = self._rx
        if kept is None or kept[0] != seq:
            status = MPI.Status()
            status.source = _NOBODY
            kept = [seq, None, 0, status, None, None]
            self._rx = kept
        rx: list[Any] = kept
        if rx[4] is None:
            if nbytes > 0:
                if rx[1] is None:
                    rx[1] = [([bytearray(nbytes), MPI.BYTE], TAG_REPLY_PAYLOAD)]
                self._receive(rx)
                rx[4] = bytes(rx[1][0][0][0])
            elif self.master == self.comm.Get_rank():
                local = frames.local_queue(self.comm, TAG_REPLY)
                handed: Frames = local[0]
                rx[4] = handed  # taking it and noting it taken: no bytecode in between where a handler runs
                del local[0]
                rx[4] = frames.own(handed)
            else:
                if rx[1] is None:
                    rx[1] = [([array("q", bytes(8 * (1 - nbytes))), MPI.INT64_T], TAG_FRAMES)]
                self._receive(rx, 1)
                if rx[5] is None:
                    chunk, buffers = frames.buffers_of(rx[1][0][0][0], self.master)
                    pieces = [([piece, MPI.BYTE], TAG_FRAMES) for piece in frames.pieces(buffers, chunk)]
                    rx[5] = buffers
                    rx[1] = rx[1][:1] + pieces
                self._receive(rx)
                rx[4] = Frames(rx[5])
        payload: Payload = rx[4]
        return payload

    def _receive(self, rx: list[Any], upto: int | None = None) -> None:
        """Receive the messages of ``rx`` not yet received (up to message ``upto``), one blocking Recv each."""
        pieces, status, master, comm = rx[1], rx[3], self.master, self.comm
        if status.source == master:  # an exception came right after a Recv completed: count it
            rx[2] += 1
            status.source = _NOBODY
        end = len(pieces) if upto is None else upto
        while rx[2] < end:
            buffer, tag = pieces[rx[2]]
            comm.Recv(buffer, master, tag, status)
            rx[2] += 1  # these two statements run without a bytecode where a handler could run
            status.source = _NOBODY

    def reap(self) -> None:
        """Complete the sends that have finished, releasing their buffers (a shared payload's, say)."""
        with self._send_lock:
            self._sends = wire.reap(self._sends)
        if self._sender is not None:
            self._sender.reap()

    def finish(self) -> None:
        """Complete every send still in flight (before the communicator is freed); end every other wait."""
        with self._send_lock:
            self.closed = True
            if self._sender is not None:
                self._sender.finish()
            wire.wait_all(self._sends)
            self._sends.clear()
            self._kept.clear()
        for box in list(self._waiting.values()):
            box.ring()
        while True:  # the last receiver has left the receive (it sees ``closed`` within a sleep's cap)
            with self._role_lock:
                if self._receiver is None:
                    self._receiver = _Wait(0, None, None)
                    break
            time.sleep(0.001)
        if self._started:  # a reply nobody waits for any more (never after a CLOSE reply)
            self._recv.Cancel()
            self._recv.Wait()
            self._started = False
        self._recv.Free()
