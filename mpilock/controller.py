"""``WindowController`` and ``sync()``: the locks every rank holds a handle to."""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
import time
import warnings
from functools import partial
from types import TracebackType
from typing import Any, TypeVar, overload

from mpi4py import MPI

from . import lifecycle, otel
from .checks import check_args, rank_index, timeout_seconds
from .errors import ClosedError, LimitError, LockTimeout, MpilockError
from .fence import _UNSET, Fence, FencePort, PlainFence
from .guard import Guard
from .holder import Holder
from .link import Answer, Link, Watcher
from .nesting import (
    ASKED,
    DONE,
    DOWNGRADED,
    GIVEN,
    HOLDER,
    LOCAL,
    LOCK,
    OPEN,
    PRIOR,
    RELEASED,
    REREAD,
    SPANS,
    STATE,
    TAKEN,
    UNDONE,
    Step,
    Taken,
)
from .report import LongWait
from .server import keys as keyspace
from .server import wake, wire
from .server.core import MODES, READ, SLOT, WRITE
from .server.frames import Payload, joined
from .server.native import ServedChannel, Service, serve
from .server.protocol import SLOT_LIMIT, Flag, Op, Reply
from .server.settings import SETTINGS
from .table import LockTable
from .trace import Recorder
from .types import Stats

log = logging.getLogger("mpilock")

_GRANT = frozenset({Reply.GRANTED, Reply.DENIED})
_GRANTED = Reply.GRANTED
_CANCELLED = frozenset({Reply.CANCELLED})
_OPS = (Op.READ, Op.WRITE, Op.BOUNDED)
_OP_MODE = {Op.READ: "read", Op.WRITE: "write", Op.BOUNDED: "slot", Op.FENCE_BEGIN: "write"}
_TRY, _UPGRADE = int(Flag.TRY), int(Flag.UPGRADE)
_KEY_FLAGS = int(Flag.MULTI) | int(Flag.KEYS_IN_PAYLOAD)
_DEFAULT = (keyspace.DEFAULT,)
_THREAD_TOKEN = (1 << 63) - 1

H = TypeVar("H")
"""The type of a ``single_write(handle=...)`` handle."""


def _encode_keys(keys: tuple[Any, ...]) -> tuple[bytes, ...]:
    """Encode the keys of ``read(*keys)``/``write(*keys)``: none is the default lock, a list is several."""
    if not keys:
        return _DEFAULT
    if len(keys) == 1:
        key = keys[0]
        if type(key) is str:
            return (keyspace.encode(key),)
        if isinstance(key, (list, set, frozenset)):
            if not key:
                raise ValueError(
                    "an empty list of keys names no lock (read()/write() without a key is the default lock)"
                )
            keys = tuple(key)
    encoded = tuple(keyspace.encode(key) for key in keys)
    if len(set(encoded)) != len(encoded):
        names = [keyspace.describe(k) for k in encoded]
        raise ValueError(f"a key is named twice in one request: {', '.join(names)}")
    return encoded


class Lock(Guard):
    """A lock of a controller, taken for the duration of a ``with`` block.

    Returned by :meth:`WindowController.read`, :meth:`~WindowController.write`
    and :meth:`~WindowController.bounded`; the keys and the timeout were
    checked when it was made.  Any thread may enter it, even several at once:
    each is its own holder (:mod:`mpilock.holder`), and what one holds lives
    on that thread's stack, not in the lock.

    An exception that a signal handler raises anywhere in ``__enter__`` or
    ``__exit__`` leaves nothing behind: ``__enter__`` and ``__exit__`` are C
    methods (:mod:`mpilock.guard`) that undo an acquire an exception cut short
    (its request withdrawn, a raced grant handed back, a promotion's read taken
    back) or finish a release, before the exception goes on.  Each acquire keeps
    its progress in a step (:mod:`mpilock.nesting`), so that doing so again
    after being cut anywhere is safe.
    """

    __slots__ = ("_ctrl", "_keys", "_limit", "_mode", "_site", "_timeout")

    def __init__(
        self, ctrl: WindowController, keys: tuple[bytes, ...], mode: int, limit: int, timeout: float | None, site: int
    ) -> None:
        """Lock ``keys`` of ``ctrl`` in ``mode`` (read, write or slot of a key bounded to ``limit``)."""
        self._ctrl = ctrl
        self._keys = keys
        self._mode = mode
        self._limit = limit
        self._timeout = timeout
        self._site = site

    def _take(self, token: Step) -> None:
        """Acquire (or nest inside what this thread already holds), in spans if OpenTelemetry is on (:mod:`.otel`)."""
        hooks = otel.HOOKS
        if hooks is None or not hooks.enter_lock(self, token):
            self._acquire(token)

    def _acquire(self, token: Step) -> None:
        """Acquire, filling ``token`` as the step, and push it on this thread's stack."""
        ctrl = self._ctrl
        try:  # ctrl._holder(), inlined: every lock call runs this
            holder: Holder = ctrl._local.holder
        except AttributeError:
            holder = ctrl._new_holder()
        token[:] = [OPEN, [], {}, None, None, False, False, self, holder, None]  # a slice store calls nothing
        taken = ctrl._acquire(holder, self._keys, self._mode, self._limit, self._timeout, self._site, token)
        stack = holder.stack
        depth = len(stack)
        token[TAKEN] = taken
        stack[depth:] = (token,)  # pushed and marked done with no bytecode in between where a handler runs
        token[STATE] = DONE

    def _undo(self, token: Step) -> None:
        """Undo what the failed ``__enter__`` did so far (called again if cut short).

        Its acquire is withdrawn if it was under way, or released if it had
        completed (an exception after the grant, an OpenTelemetry hook's, say).
        """
        if not token:
            return
        if token[STATE] == OPEN:
            self._ctrl._undo(token)
            token[STATE] = UNDONE
        elif token[STATE] == DONE:
            self._give(None, [token])  # released, unstacked and its spans ended as by __exit__

    def _give(self, exc: BaseException | None, token: list[Any]) -> BaseException | None:
        """Release what this thread's innermost ``__enter__`` of this lock acquired, then end its span.

        Returns a misuse error to raise, if any.  ``token`` keeps the step
        being released, for a call again after an exception cut this one.
        """
        if token:
            step = token[0]
        else:
            try:
                stack = self._ctrl._local.holder.stack
            except AttributeError:  # this thread never used the controller
                stack = []
            at = len(stack) - 1
            while at >= 0 and stack[at][LOCK] is not self:
                at -= 1
            if at < 0:
                return MpilockError(f"{self!r} was not entered by this thread: __exit__ has no acquire to undo")
            step = stack[at]
            token.append(step)
        if step[STATE] == DONE:
            self._ctrl._release(step)
            stack = step[HOLDER].stack
            if stack and stack[-1] is step:  # the innermost block: _unstack(step), inlined
                del stack[-1]  # popped and marked given with no bytecode in between where a handler runs
                step[STATE] = GIVEN
            else:
                _unstack(step)
        if step[SPANS]:
            otel.exit_lock(step[SPANS], exc)
        return None

    def __repr__(self) -> str:
        """Show what is locked."""
        names = ", ".join(keyspace.describe(k) for k in self._keys)
        return f"<mpilock {MODES[self._mode]} lock of {names}>"


def _unstack(step: Step) -> None:
    """Take a released ``step`` off its thread's stack and mark it given (again after a cut: nothing)."""
    stack = step[HOLDER].stack
    at = len(stack) - 1
    while at >= 0 and stack[at] is not step:
        at -= 1
    if at >= 0:
        del stack[at]  # popped and marked given with no bytecode in between where a handler runs
        step[STATE] = GIVEN
    else:
        step[STATE] = GIVEN


class WindowController:
    """Readers-writer locks shared by all ranks of a communicator: a default lock and any number of keys.

    Many ranks may hold :meth:`read` of a key at once; :meth:`write` is
    exclusive and has priority over later readers; :meth:`bounded` admits at
    most ``n`` holders.  Lock state lives on a server thread on rank
    ``master``; every rank talks to it over a private duplicate of ``comm``.
    Creating and closing a controller are collective; locking is not.
    """

    def __init__(
        self,
        comm: MPI.Intracomm | None = None,
        master: int = 0,
        pump: bool | None = None,
        pump_interval: float = 1e-4,
        *,
        trace: str | os.PathLike[str] | None = None,
    ) -> None:
        """Create the locks on ``comm`` (default ``COMM_WORLD``) served by rank ``master``.

        ``trace`` (or the environment variable ``MPILOCK_TRACE``, read now)
        names a Chrome trace-event JSON file the master writes at close; it
        is checked now, and a later controller naming the same file writes
        ``NAME-2.EXT`` instead (:mod:`mpilock.tracefile`).  Every rank raises the same error if any rank finds a
        problem with the arguments.

        ``pump`` and ``pump_interval`` are mpilock 2.x's, accepted so that
        code written for it runs unchanged, and have no effect: 2.x's pump
        thread kept MPI progressing for one-sided operations on the master,
        and a lock server makes its own progress.  They are not checked.
        """
        user_comm, index, self._trace_path = check_args(comm, master, trace)
        private = user_comm.Dup()
        self._channel: ServedChannel | None = None
        self._service: Service | None = None
        self._recorder: Recorder | None = None
        serial = lifecycle.next_serial()  # on every rank, so deadlock reports name controllers alike
        word = None
        if private.Get_rank() == index:
            self._recorder = Recorder(private.Get_size(), keep_events=self._trace_path is not None)
            self._channel, self._service = serve(private, self._recorder, f"controller #{serial}")
            word = wake.serve_word()
        connection = wake.connect(private, index, word)
        if self._channel is not None:
            self._channel.set_wakeable(connection.everyone)
            if connection.words is not None:
                self._channel.set_client_words(connection.words)
        self._attach(private, index, user_comm, writer=index, serial=serial, connection=connection)

    @classmethod
    def _client_of(
        cls, private: MPI.Intracomm, server: int, comm: MPI.Intracomm, connection: wake.Connection
    ) -> WindowController:
        """Build a controller for the ranks of ``comm``, served by a dedicated rank of ``private``."""
        ctrl = cls.__new__(cls)
        ctrl._channel, ctrl._service, ctrl._recorder, ctrl._trace_path = None, None, None, None
        ctrl._attach(private, server, comm, writer=0, serial=lifecycle.next_serial(), connection=connection)
        return ctrl

    def _attach(
        self,
        private: MPI.Intracomm,
        server: int,
        comm: MPI.Intracomm,
        writer: int,
        serial: int,
        connection: wake.Connection,
    ) -> None:
        """Connect this rank of ``comm`` to the server on rank ``server`` of ``private``."""
        self._private = private
        """The private duplicate that carries lock traffic (freed at close)."""
        self._comm = comm
        """The user's communicator, as in mpilock 1.x/2.x (code written for them uses ``ctrl._comm``)."""
        self._master = server
        self._rank = comm.Get_rank()
        self._size = comm.Get_size()
        self._default_writer = writer
        self._waker = connection.waker
        self._link = Link(
            private,
            server,
            self._channel.help if self._channel is not None else None,
            connection.waker.poke if connection.waker is not None else None,
            # The master's own waits poll its channel (help), so it needs no sleeper; the others sleep on their word.
            wake.Sleeper(connection.words, connection.rank) if self._channel is None and connection.words else None,
        )
        self._local = threading.local()
        """``holder``: the calling thread's :class:`Holder`, made at its first use."""
        self._holders: dict[int, Holder] = {}
        """slot -> every thread's holder (for close)."""
        self._next_slot = 0
        self._slot_lock = threading.Lock()
        """Held while a new thread gets its slot, or an acquire site its number."""
        self._sites: dict[tuple[str, int], int] = {}
        self._watch = self._long_wait if SETTINGS.wait_report > 0 else None
        self._fences_started = 0
        self._closed = False
        self._serial = serial
        lifecycle.register(serial, self)
        self._new_holder()  # slot 0: the thread that made the controller (named "rank R" alone in messages)

    def _link_waker(self) -> Any:
        """Return this rank's mapping of the server's wake word, or ``None`` (for tests; see :mod:`.server.wake`)."""
        return self._waker

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
    def read(self, *keys: Any, timeout: float | None = None) -> Lock:
        """Hold the shared read lock of ``keys`` (none: the default lock) for a ``with`` block.

        Waits while a writer holds or waits for any of them; several keys
        are granted together.  A key is a ``str``, ``bytes``, an integer or a
        tuple of those; pass several keys, or one list of keys.  ``timeout``
        (seconds) raises :class:`LockTimeout` after that long, ``timeout=0``
        tries once.  Inside a lock of this rank that covers it, it is local.
        """
        self._check_use()
        return Lock(self, _encode_keys(keys), READ, 0, timeout_seconds(timeout), self._site())

    def write(self, *keys: Any, timeout: float | None = None) -> Lock:
        """Hold the exclusive write lock of ``keys`` (none: the default lock) for a ``with`` block.

        Waits for current readers and earlier writers of each key, blocking
        new readers of it meanwhile; several keys are granted together (the
        deadlock-free way to take several).  ``timeout`` as for :meth:`read`.
        Inside :meth:`write` of the same key it is local; inside :meth:`read`
        of it, it promotes (see the README).
        """
        self._check_use()
        return Lock(self, _encode_keys(keys), WRITE, 0, timeout_seconds(timeout), self._site())

    def bounded(self, key: Any, limit: int, *, timeout: float | None = None) -> Lock:
        """Hold one of the ``limit`` places of bounded key ``key`` for a ``with`` block (a counting semaphore).

        At most ``limit`` ranks hold the key at once; waiters get in in
        arrival order.  Every rank must use the same ``limit`` for a key
        (:class:`LimitError` otherwise).  Bounded keys are apart from
        read/write keys of the same name.  Nested on the same key with the
        same limit it is local; with another limit it is a
        :class:`LimitError`, before anything is sent.  ``timeout`` as for
        :meth:`read`.
        """
        self._check_use()
        if isinstance(limit, bool):
            raise TypeError(f"limit must be an integer >= 1, not {limit!r}")
        try:
            places = int(limit) if isinstance(limit, int) else int(limit.__index__())
        except (AttributeError, TypeError):
            raise TypeError(f"limit must be an integer >= 1, not {limit!r}") from None
        if places < 1:
            raise ValueError(f"limit must be >= 1, not {places}")
        encoded = (keyspace.encode_bounded(key),)
        return Lock(self, encoded, SLOT, places, timeout_seconds(timeout), self._site())

    @overload
    def single_write(self, handle: None = None, rank: int | None = None) -> PlainFence: ...
    @overload
    def single_write(self, handle: H, rank: int | None = None) -> Fence[H | None]: ...
    def single_write(self, handle: Any = None, rank: int | None = None) -> Fence[Any]:
        """Run a block on rank ``rank`` only (default the master) under the write lock; collective.

        Use ``with ctrl.single_write() as fence: fence.guard(); ...``.  Every
        other rank jumps to the end of the block at ``guard()`` and waits there
        until the writer's block has finished.  With ``handle=h`` the writer's
        ``as`` target is ``h`` and everyone else's is ``None``.

        Types: without a handle the ``as`` target is the fence itself (a
        :data:`~mpilock.fence.PlainFence`); with ``handle=h`` of type ``H`` it
        is ``H | None``.  ``handle=None`` means no handle.
        """
        self._check_use()
        writer = self._default_writer if rank is None else rank_index(rank, self._size, "single_write rank")
        number = self._fences_started
        self._fences_started += 1
        return Fence(self._fence_port(), writer, number, _UNSET if handle is None else handle, self._site())

    def locks(self, *keys: Any) -> LockTable:
        """Return the server's table of the locks in use (of ``keys`` only, if given); not collective.

        Per lock: holders with mode, hold time and acquire site; waiters with
        wait time and site, in arrival order.  ``print()`` it for a table.
        """
        if keys:
            area, flags, payload = wire.key_area(_encode_keys(keys), int(Flag.FILTER))
        else:
            area, flags, payload = b"", 0, None
        answer = self._link_call(Op.LOCKS, flags, payload=payload, area=area)
        return LockTable(pickle.loads(joined(answer.payload)))

    def stats(self) -> Stats:
        """Return per-rank and per-key lock counts, wait-time percentiles and hold times.

        Asked from the server, which computes them from what it has seen so
        far (see :meth:`mpilock.trace.Recorder.stats`); not collective.
        """
        answer = self._link_call(Op.STATS)
        result: Stats = pickle.loads(joined(answer.payload))
        return result

    # -- acquiring and releasing -------------------------------------------------------
    def _acquire(
        self,
        holder: Holder,
        keys: tuple[bytes, ...],
        mode: int,
        limit: int,
        timeout: float | None,
        site: int,
        step: Step,
    ) -> Taken:
        """Acquire ``keys`` in ``mode`` for ``holder``, noting in ``step`` what it held before and every request."""
        if self._closed:  # self._check_use(), inlined
            raise ClosedError("this WindowController is closed")
        held = holder.held
        if len(keys) == 1:
            have = held.get(keys[0])
            step[PRIOR] = {keys[0]: have}  # a display, not a comprehension: no frame on the hot path
            if have is None:
                if mode == SLOT:  # before the request: held implies its limit is noted
                    holder.limits[keys[0]] = limit
                self._request(holder, _OPS[mode], keys, 0, limit, timeout, site, 0, True, mode, None, step)
                return keys, ()
            if mode == SLOT and holder.limits.get(keys[0]) != limit:
                who = holder.describe(self._rank)
                raise LimitError(
                    f"{keyspace.describe(keys[0])} admits {holder.limits.get(keys[0])} holder(s) as {who} "
                    f"holds it; {who} asked for a limit of {limit} (every rank must use the same limit for a key)"
                )
            if have in (mode, WRITE):
                return LOCAL
        else:
            step[PRIOR] = {k: held.get(k) for k in keys}
        need = tuple(k for k in keys if k not in held)
        promote = tuple(k for k in keys if mode == WRITE and held.get(k) == READ)
        if not promote:
            if not need:
                return LOCAL
            self._request(holder, _OPS[mode], need, 0, limit, timeout, site, mode=mode, step=step)
            return need, ()
        return self._promote(holder, need, promote, timeout, site, step)

    def _promote(
        self,
        holder: Holder,
        need: tuple[bytes, ...],
        promote: tuple[bytes, ...],
        timeout: float | None,
        site: int,
        step: Step,
    ) -> Taken:
        """Write inside read: upgrade ``promote`` in place if this rank is their only reader, else release and wait.

        ``need`` are further keys of the same request that this rank does not
        hold.  If anything fails, :meth:`_undo` puts the read locks back (a
        cancel turns an upgrade back into the read it was; a read released
        for the wait is asked for again).
        """
        held = holder.held
        if self._request(holder, Op.WRITE, promote, _UPGRADE, 0, 0.0, site, fail=False, mode=WRITE, step=step):
            if need:
                self._request(holder, Op.WRITE, need, 0, 0, timeout, site, mode=WRITE, step=step)
            return need, promote
        if timeout == 0.0:  # a try never blocks: the read stays
            who = holder.describe(self._rank)
            raise LockTimeout(f"{who} could not promote its read lock to the write lock at once")
        reread = [promote, [], site, False]
        step[REREAD] = reread
        self._send(holder, Op.RELEASE, promote, reread, 3)
        any(map(held.__delitem__, promote))
        self._request(holder, Op.WRITE, need + promote, 0, 0, timeout, site, mode=WRITE, step=step)
        return need, promote

    def _undo(self, step: Step) -> None:
        """Undo an acquire that an exception cut short: withdraw its requests, take back a read, restore the table.

        Safe to call again after being cut anywhere: a request is crossed off
        only once its withdrawal is confirmed, and a cancel of a request the
        server already forgot is answered all the same.
        """
        holder: Holder = step[HOLDER]
        asked = step[ASKED]
        while asked:
            seq, request = asked[-1]
            self._withdraw(holder, seq, request)
            del asked[-1]
        reread = step[REREAD]
        if reread is not None and reread[3]:
            keys, again, site, _ = reread
            while again:  # an earlier try of this undo asked for the read already
                seq, request = again[-1]
                self._withdraw(holder, seq, request)
                del again[-1]
            self._request(holder, Op.READ, keys, 0, 0, None, site, step=[OPEN, again])
            reread[3] = False  # taken back: no bytecode between the grant's return and this store
        held = holder.held
        for key, mode in step[PRIOR].items():
            if mode is None:
                held.pop(key, None)
            else:
                held[key] = mode

    def _release(self, step: Step) -> None:
        """Release what ``step`` acquired (idempotent: each message goes once, marked just before it goes)."""
        taken = step[TAKEN]
        if taken is LOCAL or self._closed:
            return
        need, promote = taken
        holder: Holder = step[HOLDER]
        held = holder.held
        if need:
            if len(need) == 1:  # the common case, without a generator's frame
                key = need[0]
                if not step[RELEASED]:
                    if key in held:
                        self._send(holder, Op.RELEASE, need, step, RELEASED)
                    step[RELEASED] = True
                held.pop(key, None)
                holder.limits.pop(key, None)
            else:
                if not step[RELEASED]:
                    mine = tuple(k for k in need if k in held)
                    if mine:
                        self._send(holder, Op.RELEASE, mine, step, RELEASED)
                    step[RELEASED] = True
                for key in need:
                    held.pop(key, None)
                    holder.limits.pop(key, None)
        if promote:  # back to the read lock the outer block holds
            if not step[DOWNGRADED]:
                mine = tuple(k for k in promote if held.get(k) == WRITE)
                if mine:
                    self._send(holder, Op.DOWNGRADE, mine, step, DOWNGRADED)
                step[DOWNGRADED] = True
            for key in promote:
                if key in held:
                    held[key] = READ

    def _send(
        self, holder: Holder, op: Op, keys: tuple[bytes, ...], mark: list[Any] | None = None, slot: int = 0
    ) -> None:
        """Send a request that gets no reply; ``mark[slot]`` is set true just as it goes (see :meth:`Link.send`)."""
        if keys is _DEFAULT:
            area, flags, payload = b"", 0, None
        else:
            area, flags, payload = wire.key_area(keys, 0)
        holder.seq += 1  # holder.next_seq(), inlined
        self._link.send(op, holder.seq, flags, 0, payload, area, 0, mark, slot)

    def _request(
        self,
        holder: Holder,
        op: Op,
        keys: tuple[bytes, ...],
        flags: int,
        limit: int,
        timeout: float | None,
        site: int,
        arg: int = 0,
        fail: bool = True,
        mode: int | None = None,
        prior: int | None = None,
        step: Step | None = None,
    ) -> bool:
        """Ask the server for ``keys`` and wait for the grant; if not granted, ``False`` or ``LockTimeout`` (``fail``).

        A grant records ``keys`` as held in ``mode`` (if given) before this
        returns.  With ``step``, the request is noted in ``step[ASKED]`` before
        it is sent and crossed off if it ends without a grant, so that an
        exception anywhere leaves :meth:`_undo` what to withdraw.  Without
        one, an exception withdraws the request here, handing back a grant that
        raced it, and puts ``keys`` back as they were (``prior``: not held, or
        held in that mode).  ``arg`` is the fence number of FENCE_BEGIN.
        """
        if timeout == 0.0:
            flags |= _TRY
        request = wire.key_area(keys, flags) if keys is not _DEFAULT else (b"", flags, None)
        area, flags, payload = request
        holder.seq += 1  # holder.next_seq(), inlined
        seq = holder.seq
        if step is not None:
            step[ASKED].append((seq, request))
        try:  # from before the send: an exception right after it still withdraws (a CANCEL of a request
            # the server never saw is answered CANCELLED all the same)
            link = self._link
            link.send(op, seq, flags | arg, limit, payload, area, site)
            deadline = None if timeout is None or flags & _TRY else time.monotonic() + timeout
            holder.asking = (request, op, keys, site)
            answer = link.wait(seq, _GRANT, deadline, self._watch)
            if answer is not None and answer.code == _GRANTED:
                if mode is not None:
                    if len(keys) == 1:  # self._record(), inlined for one key
                        holder.held[keys[0]] = mode
                    else:
                        self._record(holder, keys, mode)
                return True
        except MpilockError:
            if step is not None:
                del step[ASKED][-1]
            raise  # the server answered with an error: it kept nothing of the request
        except BaseException:
            if step is None:
                self._withdraw(holder, seq, request)
                if mode is not None:
                    self._record(holder, keys, prior)
            raise
        if answer is None:
            self._withdraw(holder, seq, request)
        if step is not None:
            del step[ASKED][-1]  # denied, or withdrawn: nothing left to undo
        if not fail:
            return False
        names = ", ".join(keyspace.describe(k) for k in keys)
        how = "could not get" if timeout == 0.0 else f"gave up waiting after {timeout} s for"
        raise LockTimeout(f"{holder.describe(self._rank)} {how} the {_OP_MODE[op]} lock of {names}")

    def _record(self, holder: Holder, keys: tuple[bytes, ...], mode: int | None) -> None:
        """Note ``keys`` as held by ``holder`` in ``mode`` (``None``: not held)."""
        held = holder.held
        if mode is None:
            for key in keys:
                held.pop(key, None)
        elif len(keys) == 1:
            held[keys[0]] = mode
        else:
            held.update(dict.fromkeys(keys, mode))

    def _withdraw(self, holder: Holder, seq: int, request: tuple[bytes, int, bytes | None]) -> None:
        """Cancel request ``seq`` and wait until the server confirmed it (a raced grant is handed back).

        Further exceptions while waiting for the confirmation are swallowed:
        leaving before it would leave the server's state unknown.
        """
        area, flags, payload = request
        self._link.send(Op.CANCEL, seq, flags & _KEY_FLAGS, 0, payload, area=area)
        while True:
            try:
                self._link.wait(seq, _CANCELLED)
                return
            except MpilockError:
                return
            except BaseException:
                who = holder.describe(self._rank)
                log.debug("%s: interrupted again while withdrawing request %d", who, seq, exc_info=True)

    def _long_wait(self, start: float) -> Watcher | None:
        """Make a long-wait report for the request being waited for (``MPILOCK_WAIT_REPORT``).

        Every wait whose reply is not there at once makes one, so it names
        the request only when a report is due: the name costs ~10 µs
        (``os.path.relpath`` of the site), as much as the rest of a lock call.
        """
        holder = self._holder()
        if holder.asking is None:
            return None
        request, op, keys, site = holder.asking
        return LongWait(
            holder.describe(self._rank),
            partial(self._asked, op, keys, site),
            request,
            start,
            SETTINGS.wait_report,
            holder.next_seq,
        )

    def _asked(self, op: Op, keys: tuple[bytes, ...], site: int) -> str:
        """Name a request for a report: ``write 'a' (asked at sim.py:44)``."""
        where = next((_site_text(*w) for w, s in self._sites.items() if s == site), "?") if site else "?"
        return f"{_OP_MODE[op]} {', '.join(keyspace.describe(k) for k in keys)} (asked at {where})"

    def _fence_acquire(self, number: int, site: int) -> Step:
        """Take the default write lock as the writer of fence ``number`` (which also enters the fence)."""
        self._check_use()
        holder = self._holder()
        step: Step = [OPEN, [], {}, None, None, False, False, None, holder, None]
        try:
            if keyspace.DEFAULT not in holder.held:
                step[PRIOR] = {keyspace.DEFAULT: None}
                self._request(holder, Op.FENCE_BEGIN, _DEFAULT, 0, 0, None, site, arg=number, mode=WRITE, step=step)
                step[TAKEN] = (_DEFAULT, ())
            else:
                step[TAKEN] = self._acquire(holder, _DEFAULT, WRITE, 0, None, site, step)
        except BaseException:
            self._undo(step)
            raise
        step[STATE] = DONE
        return step

    def _fence_port(self) -> FencePort:
        """Bind what a fence may ask of this controller: a :class:`~.fence.FencePort` (fence.py never imports it)."""
        link = self._link

        def send(op: Op, number: int, aux: int, payload: Payload | None) -> int:
            return link.send(op, self._holder().next_seq(), number, aux, payload)

        def finish(seq: int) -> None:
            link.wait(seq)
            link.reap()  # the server has every frame by now: free their snapshot

        def held() -> dict[bytes, int]:
            return self._holder().held

        def started() -> int:
            return self._fences_started

        return FencePort(
            self._rank, self._master, started, held, self._link_call, send, finish, self._fence_acquire, self._release
        )

    def _link_call(
        self, op: Op, arg: int = 0, aux: int = 0, payload: Payload | None = None, area: bytes = b""
    ) -> Answer:
        self._check_use()
        return self._link.call(op, self._holder().next_seq(), arg, aux, payload, area)

    # -- who may use it ------------------------------------------------------------------
    def _check_use(self) -> None:
        """Raise :class:`ClosedError` if the controller is closed."""
        if self._closed:
            raise ClosedError("this WindowController is closed")

    def _holder(self) -> Holder:
        """Return the calling thread's holder, making it (and saying hello to the server) at its first use."""
        try:
            holder: Holder = self._local.holder
        except AttributeError:
            return self._new_holder()
        return holder

    def _new_holder(self) -> Holder:
        """Make the calling thread a holder: give it the next slot, a reply box, and tell the server its name."""
        with self._slot_lock:
            slot = self._next_slot
            if slot >= SLOT_LIMIT:
                raise MpilockError(f"rank {self._rank} has used this WindowController from {SLOT_LIMIT} threads")
            self._next_slot = slot + 1
        holder = Holder(slot)
        self._link.open_box(slot)
        self._holders[slot] = holder
        self._local.holder = holder
        self._link.send(
            Op.HELLO, holder.next_seq(), MPI.COMM_WORLD.Get_rank(), holder.ident & _THREAD_TOKEN, holder.name.encode()
        )
        return holder

    def _site(self, depth: int = 2) -> int:
        """Id of the ``file:line`` ``depth`` frames up (the ``with`` statement), named to the server once."""
        if not SETTINGS.sites:
            return 0
        frame = sys._getframe(depth)
        where = (frame.f_code.co_filename, frame.f_lineno)
        site = self._sites.get(where)
        if site is None:
            with self._slot_lock:
                site = self._sites.get(where)
                if site is None:
                    site = self._sites[where] = len(self._sites) + 1
                    fresh = True
                else:
                    fresh = False
            if fresh:
                self._link.send(Op.SITE, self._holder().next_seq(), site, payload=_site_text(*where).encode())
        return site

    # -- lifecycle ------------------------------------------------------------------
    def close(self) -> None:
        """Release held locks (with a warning) and shut the locks down; collective and idempotent.

        Called once per rank, from any thread.  What the other threads of the
        rank hold is released with them (one ``ResourceWarning`` names each
        thread and lock), and their waits end with :class:`ClosedError`.
        """
        if self._closed:
            return
        holder = self._holder()
        for other in list(self._holders.values()):
            if other.held:
                names = ", ".join(f"{MODES[m]} {keyspace.describe(k)}" for k, m in other.held.items())
                whose = "" if other is holder else f" (thread {other.name})"
                warnings.warn(
                    f"{other.describe(self._rank)} closed a WindowController while holding {names}{whose}; released",
                    ResourceWarning,
                    stacklevel=2,
                )
                other.held.clear()  # the server releases them when this rank closes
        self._link.call(Op.CLOSE, holder.next_seq())
        self._closed = True
        lifecycle.unregister(self._serial)
        try:
            if self._channel is not None and self._service is not None:
                self._link.wait_for(self._channel.finished)
                self._service.channel_finished()
            if self._recorder is not None and self._trace_path is not None:
                self._recorder.write_chrome_trace(self._trace_path)
        finally:
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


def _site_text(filename: str, line: int) -> str:
    """``sim.py:42``: the file relative to the working directory if it is below it, else as it is."""
    try:
        relative = os.path.relpath(filename)
    except ValueError:
        relative = filename
    return f"{filename if relative.startswith('..') else relative}:{line}"


def sync(
    comm: MPI.Intracomm | None = None,
    master: int = 0,
    pump: bool | None = None,
    pump_interval: float = 1e-4,
    *,
    trace: str | os.PathLike[str] | None = None,
) -> WindowController:
    """Create a :class:`WindowController` on ``comm`` (default ``COMM_WORLD``); collective.

    ``master`` is the rank that runs the lock server; ``trace`` names a Chrome
    trace file the master writes at close (see :class:`WindowController`).
    ``pump`` and ``pump_interval`` (mpilock 2.x's progress pump) are accepted
    and have no effect: a lock server needs no progress pump.
    """
    return WindowController(comm, master, pump, pump_interval, trace=trace)


__all__ = ["Lock", "WindowController", "sync"]
