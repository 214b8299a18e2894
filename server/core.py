"""The lock manager core: a pure state machine for keyed readers-writer locks, bounded keys and fences.

No MPI here (sans-I/O, in the style of h11): :meth:`LockCore.handle` takes one
decoded request and returns the replies to send.  The MPI service loop in
:mod:`mpilock.server.loop` only moves bytes; every lock rule the server
enforces lives in this module, in :mod:`.fences` and in :mod:`.deadlock`.

A controller serves any number of locks, named by encoded keys
(:mod:`.keys`; ``b""`` is the default lock).  Rules, per key:

* any number of readers or exactly one writer, never both; a bounded key
  admits at most ``limit`` holders (of mode ``slot``);
* writer priority: while a writer holds or waits for a key, no new reader of
  that key is granted; writers are served in arrival order; with no writer
  active or waiting, every waiting reader is granted at once; a bounded key
  admits its waiters in arrival order;
* a multi-key request is granted all at once, when every one of its keys
  would grant it, and waits in the queue of each of them meanwhile;
* a cancel withdraws a queued request, or hands back a grant that raced it;
* a holder has at most one request waiting (its nesting is local) and never
  asks for a key it holds;
* a request whose wait would close a cycle of waits is refused
  (:mod:`.deadlock`), leaving the state as if it had never been made.

A *holder* is one thread of one rank: the request's ``seq`` names the
thread's slot (:data:`~.protocol.SLOT_SHIFT`), and the threads of one rank
hold, queue and exclude each other as ranks do (:mod:`.holders` numbers them).
Replies go to the holder's rank with the request's ``seq``; fences and
closing are per rank.

The state of a key is dropped as soon as nobody holds or waits for it, so the
server's memory follows the keys in use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, cast

from . import keys as keyspace
from .answers import OPS as ANSWERED
from .answers import answer
from .deadlock import Node, WaitGraph, describe_cycle
from .events import ProtocolError, Send
from .fences import FenceBook
from .holders import Holders, HolderView, holder_text
from .locks import LAST, MODES, READ, SLOT, WRITE, KeyState, Request
from .protocol import SLOT_SHIFT, Flag, Op, Reply

if TYPE_CHECKING:
    from .frames import Payload  # a type only: the core imports no MPI

__all__ = ["MODES", "READ", "SLOT", "WRITE", "KeyState", "LockCore", "ProtocolError", "Request", "Send", "lock_table"]

Handler = Callable[[int, int, int, int, "Payload | None", "tuple[bytes, ...]", int, float, list[Send]], None]
"""``handler(holder, seq, arg, aux, payload, keys, site, now, out)``: apply one request, append replies to ``out``."""

_DEFAULT_KEYS = (keyspace.DEFAULT,)
_GRANTED = Reply.GRANTED
_TRY, _UPGRADE = int(Flag.TRY), int(Flag.UPGRADE)


class LockCore:
    """State of one controller's locks, fed one request at a time."""

    def __init__(
        self, size: int, members: Iterable[int] | None = None, graph: WaitGraph | None = None, name: str = ""
    ) -> None:
        """Create the state for a communicator of ``size`` ranks.

        ``members`` are the ranks that use the lock (default: all); a
        dedicated server rank is not a member.  Cores that share a ``graph``
        (every controller served by one process) detect deadlocks across
        each other.  ``name`` names this controller in deadlock reports.
        """
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self.members = frozenset(range(size) if members is None else members)
        if not self.members or not self.members <= frozenset(range(size)):
            raise ValueError(f"members must be a non-empty subset of range({size})")
        self.name = name or f"controller {id(self):x}"
        self.keys: dict[bytes, KeyState] = {keyspace.DEFAULT: KeyState()}
        """Every key somebody holds or waits for (the default lock always)."""
        self.holders = Holders(size)
        """The (rank, thread slot) of each holder id (slot 0 of rank ``r`` is holder ``r``)."""
        self._rank = self.holders.rank
        self.waiting: dict[int, Request] = {}
        """holder -> its queued request."""
        self.held = [0] * size
        """Number of keys each holder holds."""
        self.sites: dict[tuple[int, int], str] = {}
        """(rank, site id) -> ``file:line`` of an acquire site, as the rank named it."""
        self.graph = graph if graph is not None else WaitGraph()
        self.nodes: list[Node] = [(-1 - rank, id(self)) for rank in range(size)]
        """The thread behind each holder (world rank, thread token) once it said hello."""
        self.graph.join(self)
        self.fences = FenceBook(size, self.members)
        self.outbox: list[Send] = []
        """Replies that another core's request caused here (a deadlock search reordered a queue); sent by the driver."""
        self._closing: dict[int, int] = {}
        self.closed = False
        self._handlers: dict[int, Handler] = {
            Op.READ: self._on_read,
            Op.WRITE: self._on_write,
            Op.RELEASE: self._on_release,
            Op.BOUNDED: self._on_bounded,
            Op.DOWNGRADE: self._on_downgrade,
            Op.CANCEL: self._on_cancel,
            Op.FENCE_BEGIN: self._on_fence_begin,
            Op.HELLO: self._on_hello,
            Op.CLOSE: self._on_close,
        }
        for op in ANSWERED:  # answered as the native core answers them
            self._handlers[op] = self._answering(op)

    # -- queries -----------------------------------------------------------
    def state(self, key: bytes = keyspace.DEFAULT) -> KeyState | None:
        """Return the state of ``key`` (``None`` once nobody holds or waits for it)."""
        return self.keys.get(key)

    def holds(self, holder: int, key: bytes = keyspace.DEFAULT) -> bool:
        """Whether ``holder`` (a rank's slot 0: the rank's id) holds ``key`` in any mode."""
        state = self.keys.get(key)
        return state is not None and state.holds(holder)

    def is_waiting(self, holder: int) -> bool:
        """Whether ``holder`` has a queued request."""
        return holder in self.waiting

    def holder(self, rank: int, slot: int) -> int | None:
        """Return the holder id of thread ``slot`` of ``rank`` (``None`` if it never sent a request)."""
        return self.holders.find(rank, slot)

    def who(self, holder: int) -> tuple[int, int, str | None]:
        """Return ``(rank, slot, thread name or None)`` of ``holder``."""
        return self.holders.who(holder)

    def name_of(self, holder: int) -> str:
        """Name ``holder`` in a report: ``rank 2`` (world rank if it differs), ``/ <thread>`` if slot > 0."""
        holders = self.holders
        return holder_text(
            holders.rank[holder], holders.slot[holder], self.nodes[holder][0], holder, holders.names.get(holder)
        )

    def lock_count(self) -> int:
        """Count the keys with holders or waiters (the default lock only when in use)."""
        return sum(1 for state in self.keys.values() if not state.idle())

    def site(self, rank: int, site: int) -> str:
        """Return the ``file:line`` that ``rank`` named acquire site ``site`` (``"?"`` if unknown)."""
        return self.sites.get((rank, site), "?")

    # -- the one entry point -------------------------------------------------
    def handle(
        self,
        rank: int,
        op: int,
        seq: int,
        arg: int = 0,
        aux: int = 0,
        payload: Payload | None = None,
        keys: tuple[bytes, ...] = _DEFAULT_KEYS,
        site: int = 0,
        now: float = 0.0,
    ) -> list[Send]:
        """Apply request ``op`` from ``rank`` on ``keys`` and return the replies to send.

        ``site`` is the request's acquire site id and ``now`` the server's
        clock (seconds), both only kept for reports.
        """
        if rank not in self.members:
            raise ProtocolError(f"rank {rank} is not one of the lock's {len(self.members)} member ranks")
        if self.closed:
            raise ProtocolError(f"request {op} from rank {rank} after close")
        handler = self._handlers.get(op)
        if handler is None:
            raise ProtocolError(f"unknown op {op} from rank {rank}")
        slot = seq >> SLOT_SHIFT
        if not slot:
            holder = rank
        else:
            found = self.holders.find(rank, slot)
            holder = found if found is not None else self._new_holder(rank, slot, seq)
        out: list[Send] = []
        handler(holder, seq, arg, aux, payload, keys, site, now, out)
        return out

    def _new_holder(self, rank: int, slot: int, seq: int) -> int:
        """Give thread ``slot`` of ``rank``, seen for the first time, an id and its per-holder state."""
        if seq < 0:
            raise ProtocolError(f"rank {rank} sent seq {seq}, which names no thread")
        holder = self.holders.add(rank, slot)
        self.held.append(0)
        self.nodes.append((-1 - holder, id(self)))
        self.graph.add(self, holder)
        return holder

    # -- one handler per op (a table: enum comparisons are slow on the hot path) ---
    def _on_read(
        self,
        holder: int,
        seq: int,
        arg: int,
        aux: int,
        payload: Payload | None,
        keys: tuple[bytes, ...],
        site: int,
        now: float,
        out: list[Send],
    ) -> None:
        self._request(holder, seq, keys, READ, 0, arg, site, now, out)

    def _on_write(
        self,
        holder: int,
        seq: int,
        arg: int,
        aux: int,
        payload: Payload | None,
        keys: tuple[bytes, ...],
        site: int,
        now: float,
        out: list[Send],
    ) -> None:
        if arg & _UPGRADE:
            self._upgrade(holder, seq, keys, site, now, out)
        else:
            self._request(holder, seq, keys, WRITE, 0, arg, site, now, out)

    def _on_bounded(
        self,
        holder: int,
        seq: int,
        arg: int,
        aux: int,
        payload: Payload | None,
        keys: tuple[bytes, ...],
        site: int,
        now: float,
        out: list[Send],
    ) -> None:
        if aux < 1 or len(keys) != 1 or not keyspace.is_bounded(keys[0]):
            rank = self._rank[holder]
            raise ProtocolError(f"rank {rank} asked for a bounded key with limit {aux} on {len(keys)} key(s)")
        self._request(holder, seq, keys, SLOT, aux, arg, site, now, out)

    def _on_release(
        self,
        holder: int,
        seq: int,
        arg: int,
        aux: int,
        payload: Payload | None,
        keys: tuple[bytes, ...],
        site: int,
        now: float,
        out: list[Send],
    ) -> None:
        if len(keys) == 1:  # the hot path: nobody waits for the key
            key = keys[0]
            state = self.keys.get(key)
            if state is not None and not state.writers and not state.waiting_readers:
                if state.writer == holder:
                    state.writer, state.write_hold = -1, None
                elif state.readers.pop(holder, None) is None:
                    rank = self._rank[holder]
                    raise ProtocolError(f"rank {rank} released {keyspace.describe(key)}, which it does not hold")
                self.held[holder] -= 1
                if key and state.writer < 0 and not state.readers:
                    del self.keys[key]
                return
        for key in keys:
            self._release(holder, key)
        for key in keys:
            self._schedule(key, out)

    def _on_downgrade(
        self,
        holder: int,
        seq: int,
        arg: int,
        aux: int,
        payload: Payload | None,
        keys: tuple[bytes, ...],
        site: int,
        now: float,
        out: list[Send],
    ) -> None:
        for key in keys:
            state = self.keys.get(key)
            if state is None or state.writer != holder or state.write_hold is None:
                raise ProtocolError(
                    f"rank {self._rank[holder]} downgraded {keyspace.describe(key)}, which it does not hold for write"
                )
            self._downgrade(holder, state)
        for key in keys:
            self._schedule(key, out)

    def _on_fence_begin(
        self,
        holder: int,
        seq: int,
        arg: int,
        aux: int,
        payload: Payload | None,
        keys: tuple[bytes, ...],
        site: int,
        now: float,
        out: list[Send],
    ) -> None:
        out.extend(self.fences.advance(self._rank[holder], arg))
        self._request(holder, seq, _DEFAULT_KEYS, WRITE, 0, 0, site, now, out)

    def _on_hello(
        self,
        holder: int,
        seq: int,
        arg: int,
        aux: int,
        payload: Payload | None,
        keys: tuple[bytes, ...],
        site: int,
        now: float,
        out: list[Send],
    ) -> None:
        if isinstance(payload, bytes) and payload:
            self.holders.names[holder] = payload.decode(errors="replace")
        self.graph.move(self, holder, (arg, aux))

    def _answering(self, op: int) -> Handler:
        """Return the handler of ``op`` that :func:`~.answers.answer` answers, for the holder's rank."""

        def handler(
            holder: int,
            seq: int,
            arg: int,
            aux: int,
            payload: Payload | None,
            keys: tuple[bytes, ...],
            site: int,
            now: float,
            out: list[Send],
        ) -> None:
            out.extend(answer(self, op, self._rank[holder], seq, arg, aux, payload, keys, site, now))

        return handler

    # -- acquiring ---------------------------------------------------------------
    def _request(
        self,
        holder: int,
        seq: int,
        keys: tuple[bytes, ...],
        mode: int,
        limit: int,
        flags: int,
        site: int,
        now: float,
        out: list[Send],
    ) -> None:
        if holder in self.waiting:
            raise ProtocolError(f"rank {self._rank[holder]} asked for a lock while awaiting one")
        table = self.keys
        if len(keys) == 1:  # the hot path: one key, free, nobody queued (same rules, fewer steps)
            key = keys[0]
            state = table.get(key)
            if state is None:
                state = table[key] = KeyState(limit)
            elif state.writers or state.limit != limit or state.holds(holder) or not state.free_for(mode):
                state = None
            if state is not None:
                if mode == WRITE:
                    state.writer, state.write_hold = holder, (seq, site, now, None)
                else:
                    state.readers[holder] = (seq, site, now, None)
                self.held[holder] += 1
                out.append(Send(self._rank[holder], _GRANTED, seq))
                return
        node = self.nodes[holder]
        busy = self.held[holder] > 0 or self.graph.holds_anything(node)
        states: list[KeyState] = []
        grantable = True
        for key in keys:
            state = table.get(key)
            if state is None:
                state = KeyState(limit)
            elif state.holds(holder):
                raise ProtocolError(
                    f"rank {self._rank[holder]} asked for {keyspace.describe(key)}, which it holds already"
                )
            elif state.limit != limit:
                if mode != SLOT or not state.limit:
                    raise ProtocolError(f"rank {self._rank[holder]} used {keyspace.describe(key)} in two modes")
                out.append(self._refuse_limit(holder, seq, key, state, limit))
                return
            if grantable and (state.writers or not state.free_for(mode)):
                grantable = False  # a queued request goes first (writer priority, arrival order)
            states.append(state)
        if len(keys) > 1 and len(set(keys)) != len(keys):
            raise ProtocolError(f"rank {self._rank[holder]} named a key twice in one request")
        if grantable:
            hold = (seq, site, now, None)
            for key, state in zip(keys, states, strict=True):
                table[key] = state
                if mode == WRITE:
                    state.writer, state.write_hold = holder, hold
                else:
                    state.readers[holder] = hold
            self.held[holder] += len(keys)
            out.append(Send(self._rank[holder], _GRANTED, seq))
            return
        if flags & _TRY:
            out.append(Send(self._rank[holder], Reply.DENIED, seq))
            return
        request = Request(holder, seq, keys, mode, site, now, LAST if mode == READ else self.graph.next_arrival())
        for key, state in zip(keys, states, strict=True):
            table[key] = state
            state.queue(request)
        self.waiting[holder] = request
        # Only a holder can be waited for: only then can this request close a cycle, or wait behind
        # requests that wait for it; and a new writer may wait for waiting readers that hold locks.
        if busy or (mode == WRITE and any(self._holds_locks(r) for s in states for r in s.waiting_readers)):
            cycle = self.graph.order(node)
            if cycle is not None:
                text = describe_cycle(cycle)
                self._unqueue(request)
                for key in keys:
                    self._drop_if_idle(key)
                out.append(Send(self._rank[holder], Reply.DEADLOCK, seq, payload=text.encode()))
                return
            for core, key in self.graph.reordered():  # requests moved ahead may be grantable now
                cast(LockCore, core)._schedule(key, out if core is self else core.outbox)

    def _holds_locks(self, request: Request) -> bool:
        return self.held[request.rank] > 0 or self.graph.holds_anything(self.nodes[request.rank])

    def reprioritize(self, request: Request, priority: float) -> None:
        """Give queued ``request`` a new priority (it moves in the queue of every one of its keys)."""
        states = [self.keys[key] for key in request.keys]
        for state in states:
            state.unqueue(request)
        request.priority = priority
        for state in states:
            state.queue(request)

    def _refuse_limit(self, holder: int, seq: int, key: bytes, state: KeyState, limit: int) -> Send:
        ranks = self._rank
        users = sorted({ranks[h] for h in state.readers} | {ranks[r.rank] for r in state.writers})
        rank = ranks[holder]
        text = (
            f"{keyspace.describe(key)} admits {state.limit} holder(s) as ranks {users} use it; "
            f"rank {rank} asked for a limit of {limit} (every rank must use the same limit for a key)"
        )
        return Send(rank, Reply.REFUSED, seq, payload=text.encode())

    def _upgrade(self, holder: int, seq: int, keys: tuple[bytes, ...], site: int, now: float, out: list[Send]) -> None:
        """Turn ``holder``'s read locks of ``keys`` into write locks in place if it is their only holder (a try)."""
        states = []
        for key in keys:
            state = self.keys.get(key)
            if state is None or holder not in state.readers or state.limit:
                rank = self._rank[holder]
                raise ProtocolError(f"rank {rank} upgraded {keyspace.describe(key)}, which it does not hold for read")
            states.append(state)
        if any(len(s.readers) > 1 or s.writers for s in states):
            out.append(Send(self._rank[holder], Reply.DENIED, seq))
            return
        for state in states:
            before = state.readers.pop(holder)
            state.writer, state.write_hold = holder, (seq, site, now, before)
        out.append(Send(self._rank[holder], _GRANTED, seq))

    # -- releasing ---------------------------------------------------------------
    def _release(self, holder: int, key: bytes) -> None:
        state = self.keys.get(key)
        if state is not None:
            if state.writer == holder:
                state.writer, state.write_hold = -1, None
                self.held[holder] -= 1
                return
            if state.readers.pop(holder, None) is not None:
                self.held[holder] -= 1
                return
        raise ProtocolError(f"rank {self._rank[holder]} released {keyspace.describe(key)}, which it does not hold")

    def _downgrade(self, holder: int, state: KeyState) -> None:
        hold = state.write_hold
        assert hold is not None
        state.writer, state.write_hold = -1, None
        state.readers[holder] = hold[3] if hold[3] is not None else (hold[0], hold[1], hold[2], None)

    def _on_cancel(
        self,
        holder: int,
        seq: int,
        arg: int,
        aux: int,
        payload: Payload | None,
        keys: tuple[bytes, ...],
        site: int,
        now: float,
        out: list[Send],
    ) -> None:
        request = self.waiting.get(holder)
        if request is not None and request.seq == seq:
            self._unqueue(request)
            keys = request.keys
        else:  # the grant raced the cancel: hand it back (an upgrade goes back to the read it was)
            for key in keys:
                state = self.keys.get(key)
                if state is None:
                    continue
                hold = state.write_hold if state.writer == holder else state.readers.get(holder)
                if hold is None or hold[0] != seq:
                    continue
                if hold[3] is not None:
                    self._downgrade(holder, state)
                else:
                    self._release(holder, key)
        out.append(Send(self._rank[holder], Reply.CANCELLED, seq))
        for key in keys:
            self._schedule(key, out)  # a withdrawn writer may unblock readers

    def _unqueue(self, request: Request, taken: bytes | None = None) -> None:
        """Take ``request`` out of every queue (but the waiting readers of ``taken``: the caller did)."""
        del self.waiting[request.rank]
        for key in request.keys:
            self.keys[key].unqueue(request, readers_too=key != taken)

    # -- granting waiters ----------------------------------------------------------
    def _schedule(self, key: bytes, out: list[Send]) -> None:
        """Grant whatever waiters of ``key`` can be granted now; drop the key's state if it is idle."""
        state = self.keys.get(key)
        if state is None:
            return
        writers = state.writers
        if state.limit:
            while writers and len(state.readers) < state.limit:
                self._grant_queued(writers[0], out)
        elif state.writer < 0:
            if state.waiting_readers and (state.early or not writers):
                waiting, state.waiting_readers = state.waiting_readers, []
                for request in waiting:
                    if state.ahead_of_writers(request) and (len(request.keys) == 1 or self._at_head(request)):
                        self._grant_queued(request, out, key)
                    else:
                        state.waiting_readers.append(request)
            if writers and not state.readers and self._at_head(writers[0]):
                self._grant_queued(writers[0], out)
        if key and state.idle():
            del self.keys[key]

    def _at_head(self, request: Request) -> bool:
        """Whether queued ``request`` can be granted on every one of its keys."""
        table = self.keys
        for key in request.keys:
            state = table[key]
            if request.mode == READ:
                if state.writer >= 0 or not state.ahead_of_writers(request):
                    return False
            elif state.writer >= 0 or state.readers or state.writers[0] is not request:
                return False
        return True

    def _grant_queued(self, request: Request, out: list[Send], taken: bytes | None = None) -> None:
        """Grant queued ``request`` (already out of the waiting readers of ``taken``)."""
        self._unqueue(request, taken)
        holder = request.rank
        hold = (request.seq, request.site, request.since, None)
        table = self.keys
        for key in request.keys:
            state = table[key]
            if request.mode == WRITE:
                state.writer, state.write_hold = holder, hold
            else:
                state.readers[holder] = hold
        self.held[holder] += len(request.keys)
        out.append(Send(self._rank[holder], _GRANTED, request.seq))

    def _drop_if_idle(self, key: bytes) -> None:
        state = self.keys.get(key)
        if key and state is not None and state.idle():
            del self.keys[key]

    # -- what blocks whom (for the deadlock detector) ------------------------------
    def blockers(self, holder: int, hard: bool = False) -> Iterator[tuple[int, bytes, bool]]:
        """For ``holder``'s queued request: ``(holder it waits for, key, queued)`` per direct wait.

        ``queued`` means the other one is a request queued ahead (writer
        priority or arrival order), not a lock holder.  Only the nearest request
        ahead is named: it waits in turn for the ones ahead of it, so every
        wait stays reachable with one edge per queue position.  With ``hard``,
        only the holders whose locks conflict with the request are named,
        wherever it is in the queue.
        """
        request = self.waiting.get(holder)
        if request is None:
            return
        for key in request.keys:
            state = self.keys[key]
            if not hard:
                ahead = state.ahead(request)
                if ahead is not None:
                    yield ahead.rank, key, True
                    continue
            if request.mode == READ:
                if state.writer >= 0:
                    yield state.writer, key, False
            elif request.mode == WRITE:
                if state.writer >= 0:
                    yield state.writer, key, False
                yield from ((reader, key, False) for reader in state.readers)
            elif len(state.readers) >= state.limit:
                yield from ((reader, key, False) for reader in state.readers)

    def describe_hold(self, holder: int, key: bytes, queued: bool) -> str:
        """Say what ``holder`` holds of ``key`` (``holds write 'a' (taken at sim.py:42)``), or how it is queued."""
        if queued:
            request = self.waiting[holder]
            return f"is queued ahead for {MODES[request.mode]} {keyspace.describe(key)}"
        state = self.keys[key]
        if state.writer == holder and state.write_hold is not None:
            mode, hold = WRITE, state.write_hold
        else:
            mode, hold = (SLOT if state.limit else READ), state.readers[holder]
        return f"holds {MODES[mode]} {keyspace.describe(key)} (taken at {self.site(self._rank[holder], hold[1])})"

    def describe_wait(self, holder: int, key: bytes) -> str:
        """Say what ``holder``'s queued request asks for on ``key``: ``waits for write 'b' (at sim.py:44)``."""
        request = self.waiting[holder]
        where = self.site(self._rank[holder], request.site)
        return f"waits for {MODES[request.mode]} {keyspace.describe(key)} (at {where})"

    # -- the lock table --------------------------------------------------------------
    def table(self, now: float, wanted: Iterable[bytes] | None = None) -> list[dict[str, object]]:
        """Holders and waiters of ``wanted`` keys (default: every key in use), as data (see :func:`lock_table`)."""
        return lock_table(self.keys, self.site, now, wanted, self.holders)

    # -- closing -----------------------------------------------------------------------
    def _on_close(
        self,
        holder: int,
        seq: int,
        arg: int,
        aux: int,
        payload: Payload | None,
        keys: tuple[bytes, ...],
        site: int,
        now: float,
        out: list[Send],
    ) -> None:
        rank = self._rank[holder]
        if rank in self._closing:
            raise ProtocolError(f"rank {rank} closed twice")
        # Every thread of the rank lets go: its holds, key by key (the writer, then the readers in
        # their order), then the queued request of each of its holders (they get no reply).
        ranks = self._rank
        released: list[tuple[int, bytes]] = []
        touched: list[bytes] = []
        for key, state in self.keys.items():
            mine = [h for h in state.readers if ranks[h] == rank]
            if state.writer >= 0 and ranks[state.writer] == rank:
                mine.insert(0, state.writer)
            if mine:
                released.extend((h, key) for h in mine)
                touched.append(key)
        for h, key in released:
            self._release(h, key)
        for h in self.holders.all_of(rank):
            request = self.waiting.get(h)
            if request is not None:
                self._unqueue(request)
                touched.extend(request.keys)
        for key in touched:
            self._schedule(key, out)
        self._closing[rank] = seq
        if len(self._closing) == len(self.members):
            self.closed = True
            self.graph.leave(self)
            out.extend(Send(r, Reply.CLOSED, s) for r, s in sorted(self._closing.items()))


def lock_table(
    keys: Mapping[bytes, KeyState],
    site: Callable[[int, int], str],
    now: float,
    wanted: Iterable[bytes] | None = None,
    holders: HolderView | None = None,
) -> list[dict[str, object]]:
    """Holders and waiters of ``wanted`` of ``keys`` (default: every key in use), as plain data.

    One entry per key: ``key`` (its name), ``limit`` (0 for a
    readers-writer lock), ``holders`` and ``waiters``, each a list of
    ``{"rank", "thread", "slot", "mode", "site"}`` with ``"held"`` or
    ``"waited"`` (seconds so far); waiters come in arrival order, with
    ``"keys"``: every key of their request.  ``thread`` is the name the
    holding thread gave in its hello (``None`` if none), ``slot`` its number
    on its rank (0: the rank's first thread).  ``holders`` maps the holder ids
    of ``keys`` to those (default: every id is a rank's slot 0); ``site`` is
    asked with the rank.
    """
    who = holders.who if holders is not None else _slot_zero
    chosen = keys.items() if wanted is None else ((k, keys.get(k)) for k in wanted)
    entries: list[dict[str, object]] = []
    for key, state in chosen:
        if state is None or state.idle():
            continue
        holding = [(h, MODES[SLOT if state.limit else READ], hold) for h, hold in state.readers.items()]
        if state.write_hold is not None:
            holding.insert(0, (state.writer, "write", state.write_hold))
        held = []
        for h, mode, hold in holding:
            rank, slot, thread = who(h)
            held.append(
                {
                    "rank": rank,
                    "thread": thread,
                    "slot": slot,
                    "mode": mode,
                    "held": now - hold[2],
                    "site": site(rank, hold[1]),
                }
            )
        queued = sorted([*state.writers, *state.waiting_readers], key=lambda r: r.since)
        waiters = []
        for r in queued:
            rank, slot, thread = who(r.rank)
            waiters.append(
                {
                    "rank": rank,
                    "thread": thread,
                    "slot": slot,
                    "mode": MODES[r.mode],
                    "waited": now - r.since,
                    "site": site(rank, r.site),
                    "keys": [keyspace.describe(k) for k in r.keys],
                }
            )
        entries.append({"key": keyspace.describe(key), "limit": state.limit, "holders": held, "waiters": waiters})
    return entries


def _slot_zero(holder: int) -> tuple[int, int, str | None]:
    return holder, 0, None
