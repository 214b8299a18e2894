"""The native lock core against the Python one: the same random requests, the same replies and state after each.

Hypothesis drives :class:`mpilock.server.core.LockCore` (the reference) and
:class:`mpilock.server.native_core.NativeLockCore` (``server/_native.c``) with
one random sequence of requests from up to 8 ranks on one or two controllers
that share a wait-for graph (the ranks say hello, so a thread's locks in one
controller and its wait in the other meet): keyed, multi-key and bounded
requests, tries, upgrades, downgrades, cancels, nested holds (so that deadlocks
are refused and queues reordered), acquire sites, lock tables, protocol
errors, and closes.  After every request the replies (texts included), the
other controller's outbox, the whole state of every key (holders, hold
records, queues in order, priorities) and the events recorded for the
statistics must be identical.

Skipped only where the native module is not built; ``make test`` sets
``MPILOCK_REQUIRE_NATIVE=1`` so that CI fails instead.
"""

from __future__ import annotations

import os
import pickle

import pytest
from hypothesis import currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from mpilock.server import keys as keyspace
from mpilock.server.core import READ, SLOT, WRITE, LockCore
from mpilock.server.deadlock import WaitGraph
from mpilock.server.events import ProtocolError
from mpilock.server.native_core import NativeGraph, NativeLockCore, available
from mpilock.server.protocol import SLOT_SHIFT, Flag, Op, Reply

if not available():
    if os.environ.get("MPILOCK_REQUIRE_NATIVE") == "1":
        pytest.fail("the native module is not built (MPILOCK_REQUIRE_NATIVE=1)", pytrace=False)
    pytest.skip("the native module is not built", allow_module_level=True)

KEYS = [keyspace.DEFAULT, keyspace.encode("a"), keyspace.encode("b"), keyspace.encode(("chunk", 3))]
BOUNDED = keyspace.encode_bounded("fs")
OPS = {READ: Op.READ, WRITE: Op.WRITE, SLOT: Op.BOUNDED}
NO_REPLY = {Op.RELEASE, Op.DOWNGRADE, Op.SITE, Op.HELLO}


def request_data(r):
    return (r.rank, r.seq, r.mode, r.site, r.since, r.priority, tuple(r.keys))


def python_state(core: LockCore):
    keys = [
        (
            key,
            s.limit,
            s.writer,
            s.write_hold,
            list(s.readers.items()),
            [request_data(r) for r in s.writers],
            [request_data(r) for r in s.waiting_readers],
            s.early,
        )
        for key, s in core.keys.items()
    ]
    nodes = [node if node[0] >= 0 else (node[0], None) for node in core.nodes]
    return keys, {r: q.seq for r, q in core.waiting.items()}, list(core.held), nodes, dict(core._closing), core.closed


def native_state(core: NativeLockCore):
    keys, waiting, held, nodes, closing, closed, _ = core.snapshot()
    keys = [(k, limit, w, wh, list(map(tuple, rd)), wr, wrd, early) for k, limit, w, wh, rd, wr, wrd, early in keys]
    nodes = [tuple(node) if node[0] >= 0 else (node[0], None) for node in nodes]
    return keys, waiting, held, nodes, closing, bool(closed)


def replies(out):
    """Replies as comparable data (a pickled lock table compared as what it unpickles to)."""
    result = []
    for s in out:
        payload = s.payload
        if s.code == Reply.PAYLOAD and isinstance(payload, bytes):
            payload = pickle.loads(payload)
        result.append((s.rank, int(s.code), s.seq, s.arg, s.aux, payload))
    return result


class Pair:
    """The same controllers, one of each kind, fed the same requests; ``step`` compares everything."""

    def __init__(self, size: int, controllers: int) -> None:
        self.size = size
        graph, native_graph = WaitGraph(), NativeGraph()
        names = [f"controller #{i}" for i in range(controllers)]
        self.python = [LockCore(size, graph=graph, name=name) for name in names]
        self.native = [NativeLockCore(size, graph=native_graph, name=name, record=True) for name in names]
        self.graph, self.native_graph = graph, native_graph
        self.expected_events: list[list[tuple]] = [[] for _ in names]
        self.now = 0.0

    def step(self, index: int, rank: int, op: int, seq: int, arg: int = 0, aux: int = 0, keys=(b"",), payload=None):
        self.now += 0.25
        site = (seq % 3) if op in (Op.READ, Op.WRITE, Op.BOUNDED, Op.FENCE_BEGIN) else 0
        outcome = []
        for core in (self.python[index], self.native[index]):
            try:
                outcome.append(("ok", replies(core.handle(rank, op, seq, arg, aux, payload, keys, site, self.now))))
            except ProtocolError as err:
                outcome.append(("error", str(err)))
        assert outcome[0] == outcome[1], f"op {op!r} from rank {rank}"
        kind, result = outcome[0]
        if not currently_in_test_context():
            pass
        elif kind == "error":
            event("a protocol error")
        else:
            for code in {Reply(r[1]).name for r in result} & {"DEADLOCK", "REFUSED", "CANCELLED", "DENIED"}:
                event(f"a reply {code}")
            if self.graph.reordered():
                event("queues reordered to avoid a deadlock")
        self.expect(index, rank, op, seq, keys, outcome[0])
        for i, (python, native) in enumerate(zip(self.python, self.native, strict=True)):
            python_out, python.outbox = python.outbox, []
            native_out = native.take_outbox()
            assert replies(python_out) == replies(native_out)
            if python_out:
                self.expected_events[i].append((-1, 0, 0, (b"",), [(s.rank, int(s.code), s.seq) for s in python_out]))
            assert python_state(python) == native_state(native), f"state of controller {i} after op {op!r}"
        assert self.graph._arrivals == self.native_graph.arrivals
        for i, native in enumerate(self.native):  # the events the statistics are fed: those of the Python loop
            events = [
                (rank_, op_, seq_, keys_, [(s.rank, int(s.code), s.seq) for s in out])
                if rank_ >= 0
                else (-1, 0, 0, (b"",), [(s.rank, int(s.code), s.seq) for s in out])
                for _, rank_, op_, seq_, keys_, out in native.drain()
            ]
            assert events == self.expected_events[i]
            self.expected_events[i] = []
        return outcome[0]

    def expect(self, index: int, rank: int, op: int, seq: int, keys: tuple[bytes, ...], outcome) -> None:
        """What the Python service loop would have passed to ``Recorder.observe`` for this request."""
        if op in (Op.SITE, Op.LOCKS, Op.FENCE_END, Op.FENCE_WAIT, Op.COLLECT):
            return
        if op in (Op.FENCE_BEGIN, Op.HELLO, Op.CLOSE):
            keys = (b"",)
        if outcome[0] == "error":
            out = [] if op in NO_REPLY else [(rank, int(Reply.ERROR), seq)]
        else:
            out = [(r, code, s) for r, code, s, *_ in outcome[1]]
        self.expected_events[index].append((rank, int(op), seq, tuple(keys), out))


class Client:
    """What one rank believes of one controller, driven only by the replies it receives."""

    def __init__(self) -> None:
        self.holds: dict[bytes, int] = {}
        self.waiting: tuple[int, tuple[bytes, ...], int] | None = None


def apply(outcome, clients, index) -> None:
    if outcome[0] != "ok":
        return
    for rank, code, seq, *_ in outcome[1]:
        client = clients[index].get((rank, seq >> SLOT_SHIFT))
        if client is None:  # a CLOSED reply to a thread that made no other request
            continue
        if code == Reply.GRANTED and client.waiting is not None and client.waiting[0] == seq:
            _, keys, mode = client.waiting
            client.holds.update(dict.fromkeys(keys, mode))
            client.waiting = None
        elif code in (Reply.DENIED, Reply.DEADLOCK, Reply.REFUSED) and client.waiting and client.waiting[0] == seq:
            client.waiting = None


STEP = st.tuples(
    st.integers(0, 1),  # controller (modulo their number)
    st.integers(0, 23),  # rank (modulo the size) and thread slot (the rest, modulo the slots)
    st.sampled_from(["request"] * 6 + ["release"] * 3 + ["upgrade", "downgrade", "cancel", "site", "locks", "bad"]),
    st.sampled_from([READ, WRITE, SLOT]),
    st.integers(1, 2 ** len(KEYS) - 1),  # which keys (a bit mask)
    st.integers(0, 4).map(lambda n: n == 0),  # a try, now and then
    st.integers(1, 3),  # the limit of the bounded key (mostly agreed on)
)


def pick(mask: int, choices: list[bytes], most: int = 3) -> tuple[bytes, ...]:
    chosen = [key for i, key in enumerate(choices) if mask >> i & 1] or choices[:1]
    return tuple(chosen[:most])


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 8),
    slots=st.sampled_from([1, 1, 2, 3]),
    controllers=st.integers(1, 2),
    hellos=st.lists(st.booleans(), min_size=48, max_size=48),
    steps=st.lists(STEP, min_size=20, max_size=200),
    closing=st.randoms(),
)
def test_native_core_answers_and_keeps_state_as_the_python_core(size, slots, controllers, hellos, steps, closing):
    """Threads of ranks (``slots`` per rank, each a holder) interleave requests on both cores."""
    pair = Pair(size, controllers)
    clients = [{(r, t): Client() for r in range(size) for t in range(slots)} for _ in range(controllers)]
    counter = 0
    for index in range(controllers):  # threads that said hello are one thread across controllers
        for rank in range(size):
            for slot in range(slots):
                if hellos[(index * 8 + rank) * 3 + slot]:
                    name = f"worker-{slot}".encode() if slot % 2 else None
                    pair.step(index, rank, Op.HELLO, slot << SLOT_SHIFT, rank, 7 + slot, payload=name)
    for index, who, action, mode, mask, try_only, limit in steps:
        index %= controllers
        rank, slot = who % size, (who // size) % slots
        client = clients[index][(rank, slot)]
        counter += 1
        seq = slot << SLOT_SHIFT | counter
        zero = slot << SLOT_SHIFT  # no-reply requests: the slot, no count
        if action == "bad":  # protocol errors: the same text, the same partial effect
            held = sorted(client.holds)
            choice = mask % 4
            if choice == 0:
                keys = pick(mask, KEYS)
                pair.step(index, rank, Op.RELEASE, zero, keys=keys)
                for key in keys:
                    client.holds.pop(key, None)
            elif choice == 1 and held:
                pair.step(index, rank, Op.READ, seq, keys=(held[0],))
            elif choice == 2:
                pair.step(index, rank, Op.BOUNDED, seq, 0, 0, keys=(BOUNDED,))
            else:
                pair.step(index, rank, Op.DOWNGRADE, zero, keys=pick(mask, KEYS))
            continue
        if action == "site":
            pair.step(index, rank, Op.SITE, zero, counter % 3, payload=f"sim.py:{counter}".encode())
            continue
        if action == "locks":
            flags = int(Flag.FILTER) if mask & 1 else 0
            pair.step(index, rank, Op.LOCKS, seq, flags, keys=pick(mask, KEYS) if flags else (b"",))
            continue
        if client.waiting is not None:  # a waiting rank can only give up now and then (a timeout)
            if action in ("cancel", "release"):
                wseq, wkeys, _ = client.waiting
                outcome = pair.step(index, rank, Op.CANCEL, wseq, keys=wkeys)
                client.waiting = None
                apply(outcome, clients, index)
            continue
        if action == "cancel":  # a cancel that raced its grant hands the grant back
            mine = [k for k in client.holds if client.holds[k] != SLOT]
            if mine:
                outcome = pair.step(index, rank, Op.CANCEL, seq - 1, keys=tuple(mine))
                state = pair.python[index].keys
                holder = pair.python[index].holder(rank, slot)
                for key in mine:
                    s = state.get(key)
                    if s is None or not s.holds(holder):
                        del client.holds[key]
                    elif holder in s.readers:
                        client.holds[key] = READ
                apply(outcome, clients, index)
            continue
        if action == "release":
            if not client.holds:
                continue
            keys = pick(mask, sorted(client.holds), most=len(KEYS) + 1)
            outcome = pair.step(index, rank, Op.RELEASE, zero, keys=keys)
            for key in keys:
                del client.holds[key]
        elif action == "downgrade":
            writes = sorted(k for k, m in client.holds.items() if m == WRITE)
            if not writes:
                continue
            keys = pick(mask, writes)
            outcome = pair.step(index, rank, Op.DOWNGRADE, zero, keys=keys)
            client.holds.update(dict.fromkeys(keys, READ))
        elif action == "upgrade":
            reads = sorted(k for k, m in client.holds.items() if m == READ)
            if not reads:
                continue
            keys = pick(mask, reads)
            outcome = pair.step(index, rank, Op.WRITE, seq, int(Flag.TRY | Flag.UPGRADE), keys=keys)
            if outcome[0] == "ok" and outcome[1] and outcome[1][0][1] == Reply.GRANTED:
                client.holds.update(dict.fromkeys(keys, WRITE))
            continue
        else:
            if any(c[(rank, slot)].waiting for c in clients):  # a thread waits in one place at a time
                continue
            if mode == SLOT:
                if BOUNDED in client.holds:
                    continue
                keys = (BOUNDED,)
            else:
                free = [k for k in KEYS if k not in client.holds]
                if not free:
                    continue
                keys = pick(mask, free)
            client.waiting = (seq, keys, mode)
            flags = int(Flag.TRY) if try_only else 0
            outcome = pair.step(index, rank, OPS[mode], seq, flags, limit if mode == SLOT else 0, keys=keys)
            if outcome[0] == "error":
                client.waiting = None
        apply(outcome, clients, index)
    # every rank closes every controller, in a random order: held locks are released, waits dropped
    order = [(index, rank) for index in range(controllers) for rank in range(size)]
    closing.shuffle(order)
    for index, rank in order:  # any thread closes for its rank
        counter += 1
        pair.step(index, rank, Op.CLOSE, closing.randrange(slots) << SLOT_SHIFT | counter)
    assert all(core.closed for core in pair.native)
    pair.step(0, 0, Op.READ, counter + 1)  # after close: the same error


def test_a_deadlock_across_controllers_is_refused_with_the_same_text():
    pair = Pair(2, 2)
    for index in range(2):
        for rank in range(2):
            pair.step(index, rank, Op.HELLO, 0, rank, 1)
    pair.step(0, 0, Op.SITE, 0, 1, payload=b"sim.py:42")
    pair.step(0, 0, Op.WRITE, 1, keys=(b"sa",))
    pair.step(1, 1, Op.WRITE, 2, keys=(b"sb",))
    pair.step(1, 0, Op.WRITE, 3, keys=(b"sb",))  # rank 0 waits in controller 1
    outcome = pair.step(0, 1, Op.WRITE, 4, keys=(b"sa",))  # rank 1 would wait for rank 0: a cycle
    assert outcome[0] == "ok"
    (reply,) = outcome[1]
    assert reply[1] == Reply.DEADLOCK
    text = reply[5].decode()
    assert text.startswith("deadlock: rank 1 holds write 'b' (taken at ?) of controller #1")
    assert "rank 0 holds write 'a' (taken at sim.py:42) of controller #0" in text


def test_a_bounded_key_with_another_limit_is_refused_with_the_same_text():
    pair = Pair(3, 1)
    pair.step(0, 0, Op.BOUNDED, 1, 0, 2, keys=(BOUNDED,))
    outcome = pair.step(0, 1, Op.BOUNDED, 2, 0, 3, keys=(BOUNDED,))
    assert outcome[1][0][1] == Reply.REFUSED and b"admits 2 holder(s)" in outcome[1][0][5]


def test_members_and_unknown_ops_are_errors_alike():
    pair = Pair(3, 1)
    pair.python[0] = LockCore(3, members=[1, 2], graph=pair.graph, name="controller #0")
    pair.native[0] = NativeLockCore(3, members=[1, 2], graph=pair.native_graph, name="controller #0", record=True)
    assert pair.step(0, 0, Op.READ, 1)[0] == "error"
    assert pair.step(0, 1, 99, 2)[0] == "error"
    assert pair.step(0, 1, Op.WRITE, 3)[1][0][1] == Reply.GRANTED
