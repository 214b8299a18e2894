"""Property-based tests of the lock core: random interleavings of keyed, multi-key, bounded requests from up to 8 ranks.

Every rule is checked against an oracle written here, independently of the
core's own bookkeeping: a wait-for graph built from the state's queues (every
conflicting holder and every conflicting request ahead, not just the nearest),
searched by brute force.
"""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from mpilock.server import keys as keyspace
from mpilock.server.core import READ, SLOT, WRITE, LockCore, Request
from mpilock.server.deadlock import WaitGraph
from mpilock.server.protocol import FenceStatus, Flag, Op, Reply

KEYS = [keyspace.DEFAULT, keyspace.encode("a"), keyspace.encode("b"), keyspace.encode(("chunk", 3))]
BOUNDED = keyspace.encode_bounded("fs")
LIMIT = 2
OPS = {READ: Op.READ, WRITE: Op.WRITE, SLOT: Op.BOUNDED}


class Client:
    """What one rank believes, driven only by the replies it receives."""

    def __init__(self) -> None:
        self.holds: dict[bytes, int] = {}
        self.waiting: tuple[int, tuple[bytes, ...], int] | None = None  # (seq, keys, mode)
        self.seq = 0


# -- the oracle ----------------------------------------------------------------------------------------
def conflicts(mode: int, other: int) -> bool:
    return mode == WRITE or other == WRITE


def queued_ahead(core: LockCore, request: Request, key: bytes) -> list[Request]:
    """Queued requests on ``key`` that ``request`` must let go first (writer priority / arrival order)."""
    return [other for other in core.keys[key].writers if other.priority < request.priority]


def blocked_on(core: LockCore, request: Request, key: bytes, hard: bool = False) -> set[int]:
    """Every rank whose hold (or, unless ``hard``, queued request) keeps ``request`` from ``key`` now."""
    state = core.keys[key]
    ranks = set() if hard else {r.rank for r in queued_ahead(core, request, key)}
    if state.limit:
        if len(state.readers) >= state.limit:
            ranks |= set(state.readers)
        return ranks
    if state.writer >= 0:
        ranks.add(state.writer)
    if request.mode == WRITE:
        ranks |= set(state.readers)
    return ranks


def waits_for(core: LockCore, hard: bool = False) -> dict[int, set[int]]:
    """Who waits for whom; with ``hard``, only waits for holders (no queue positions)."""
    return {
        rank: set().union(*(blocked_on(core, request, key, hard) for key in request.keys))
        for rank, request in core.waiting.items()
    }


def has_cycle(graph: dict[int, set[int]]) -> bool:
    for start in graph:
        seen, stack = set(), [start]
        while stack:
            for target in graph.get(stack.pop(), ()):
                if target == start:
                    return True
                if target not in seen:
                    seen.add(target)
                    stack.append(target)
    return False


def reaches(graph: dict[int, set[int]], start: int, goal: int) -> bool:
    seen, stack = {start}, [start]
    while stack:
        for target in graph.get(stack.pop(), ()):
            if target == goal:
                return True
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return False


def snapshot(core: LockCore) -> object:
    """Everything about who holds and waits (to compare states)."""
    keys = {
        key: (
            state.writer,
            sorted(state.readers),
            [(r.rank, r.seq, r.priority) for r in state.writers],
            sorted((r.rank, r.seq, r.priority) for r in state.waiting_readers),  # a set: its order means nothing
        )
        for key, state in core.keys.items()
        if key == keyspace.DEFAULT or not state.idle()
    }
    return keys, sorted((rank, r.seq) for rank, r in core.waiting.items()), list(core.held)


def check_invariants(core: LockCore, clients: list[Client]) -> None:
    for key, state in core.keys.items():
        assert not (state.writer >= 0 and state.readers), f"a writer and readers hold {key!r}"
        assert not state.limit or len(state.readers) <= state.limit, f"{key!r} has too many holders"
        assert key == keyspace.DEFAULT or not state.idle(), f"idle state of {key!r} was kept"
    for rank, client in enumerate(clients):
        for key in [*KEYS, BOUNDED]:
            state = core.keys.get(key)
            if key not in client.holds:
                assert state is None or not state.holds(rank)
            elif client.holds[key] == WRITE:
                assert state is not None and state.writer == rank
            else:
                assert state is not None and rank in state.readers
        assert core.held[rank] == len(client.holds)
        assert (rank in core.waiting) == (client.waiting is not None)
    graph = waits_for(core)
    for rank, request in core.waiting.items():  # no lost wake-up: every waiter is kept by someone
        assert graph[rank], f"rank {rank} waits for {request.keys} though nothing keeps it"
    assert not has_cycle(graph), f"a deadlock was left in place: {graph}"


# -- driving it ----------------------------------------------------------------------------------------
def apply_replies(out, clients: list[Client]) -> None:
    for reply in out:
        client = clients[reply.rank]
        if reply.code == Reply.GRANTED:
            assert client.waiting is not None and reply.seq == client.waiting[0]
            _, keys, mode = client.waiting
            for key in keys:  # all-or-nothing: every key of the request at once
                client.holds[key] = mode
            client.waiting = None
        elif reply.code in (Reply.DENIED, Reply.DEADLOCK):
            assert client.waiting is not None and reply.seq == client.waiting[0]
            client.waiting = None


STEP = st.tuples(
    st.integers(0, 7),  # rank (modulo the size)
    st.sampled_from(["request", "request", "request", "release", "upgrade", "downgrade"]),
    st.sampled_from([READ, WRITE, SLOT]),
    st.integers(1, 2 ** len(KEYS) - 1),  # which keys (a bit mask)
    st.integers(0, 4).map(lambda n: n == 0),  # a try, now and then
)


def pick(mask: int, choices: list[bytes], most: int = 3) -> tuple[bytes, ...]:
    chosen = [key for i, key in enumerate(choices) if mask >> i & 1] or choices[:1]
    return tuple(chosen[:most])


@settings(max_examples=500, deadline=None)
@given(size=st.integers(1, 8), steps=st.lists(STEP, min_size=30, max_size=300), order=st.randoms())
def test_random_interleavings_keep_every_invariant(size, steps, order):
    graph = WaitGraph()
    core = LockCore(size, graph=graph)
    clients = [Client() for _ in range(size)]
    for rank, action, mode, mask, try_only in steps:
        rank %= size
        client = clients[rank]
        before = snapshot(core)
        if client.waiting is not None:  # a waiting rank can only give up (a timeout), now and then
            if action != "release":
                continue
            seq = client.waiting[0]
            out = core.handle(rank, Op.CANCEL, seq, keys=client.waiting[1])
            assert out[0].code == Reply.CANCELLED and out[0].rank == rank and out[0].seq == seq
            client.waiting = None
            out = out[1:]
        elif action == "release":
            if not client.holds:
                continue
            chosen = pick(mask, sorted(client.holds), most=len(KEYS) + 1)
            out = core.handle(rank, Op.RELEASE, 0, keys=chosen)
            for key in chosen:
                del client.holds[key]
        elif action == "downgrade":
            writes = sorted(k for k, m in client.holds.items() if m == WRITE)
            if not writes:
                continue
            chosen = pick(mask, writes)
            out = core.handle(rank, Op.DOWNGRADE, 0, keys=chosen)
            client.holds.update(dict.fromkeys(chosen, READ))
        elif action == "upgrade":
            reads = sorted(k for k, m in client.holds.items() if m == READ and k != BOUNDED)
            if not reads:
                continue
            chosen = pick(mask, reads)
            sole = all(core.keys[k].readers.keys() == {rank} and not core.keys[k].writers for k in chosen)
            client.seq += 1
            out = core.handle(rank, Op.WRITE, client.seq, Flag.TRY | Flag.UPGRADE, keys=chosen)
            assert [r.code for r in out] == [Reply.GRANTED if sole else Reply.DENIED]
            if sole:
                client.holds.update(dict.fromkeys(chosen, WRITE))
            out = []
        else:
            if mode == SLOT:
                keys = (BOUNDED,)
                if BOUNDED in client.holds:
                    continue
            else:
                free = [k for k in KEYS if k not in client.holds]
                if not free:
                    continue
                keys = pick(mask, free)
            client.seq += 1
            flags = Flag.TRY if try_only else 0
            shadow = None
            if client.holds:  # only a holder can close a cycle: the same request with the deadlock check off
                shadow = copy.deepcopy(core)
                shadow.graph.order = lambda node: None  # queued as it came, no reordering, no refusal
                shadow.handle(rank, OPS[mode], client.seq, flags, LIMIT, keys=keys)
            out = core.handle(rank, OPS[mode], client.seq, flags, LIMIT, keys=keys)
            client.waiting = (client.seq, keys, mode)
            codes = [r.code for r in out if r.rank == rank]
            if Reply.DEADLOCK in codes:  # a cycle of holders: no reordering of queues could resolve it
                assert shadow is not None and has_cycle(waits_for(shadow, hard=True)), "refused a resolvable wait"
                assert snapshot(core) == before, "the refused request left a trace"
                assert [(r.rank, r.code) for r in out] == [(rank, Reply.DEADLOCK)]
                assert "deadlock: rank" in (out[0].payload or b"").decode()
            elif shadow is not None:
                assert not has_cycle(waits_for(shadow, hard=True)), "a deadlock was not detected"
            if Reply.GRANTED in codes and not client.holds:
                # writer priority and arrival order: a rank that held nothing never goes ahead of a queued request
                for key in keys:
                    queued = before[0].get(key, (-1, [], [], []))[2]
                    assert not queued, f"rank {rank} was granted {key!r} ahead of queued {queued}"
        apply_replies(out, clients)
        check_invariants(core, clients)
    # drain: everyone releases everything; every waiter must get its turn, and the table must empty
    while True:
        holders = [r for r, c in enumerate(clients) if c.holds]
        if not holders:
            break
        rank = order.choice(holders)
        out = core.handle(rank, Op.RELEASE, 0, keys=tuple(sorted(clients[rank].holds)))
        clients[rank].holds.clear()
        apply_replies(out, clients)
        check_invariants(core, clients)
    assert not any(c.waiting for c in clients), "waiters left with nobody holding: a lost wake-up"
    assert core.lock_count() == 0 and core.keys.keys() == {keyspace.DEFAULT}
    # closing frees everything and answers every rank exactly once
    closed = []
    ranks = list(range(size))
    order.shuffle(ranks)
    for rank in ranks:
        closed += [s.rank for s in core.handle(rank, Op.CLOSE, 10**6) if s.code == Reply.CLOSED]
    assert sorted(closed) == list(range(size)) and core.closed


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 8), data=st.data())
def test_fence_payloads_stay_bounded_and_every_rank_hears_once(size, data):
    core = LockCore(size)
    fences = data.draw(st.integers(1, 25))
    writers = [data.draw(st.integers(0, size - 1)) for _ in range(fences)]
    position = [0] * size  # the fence each rank is in
    waiting = [False] * size  # sent its end/wait, no FENCE_DONE yet
    heard: dict[tuple[int, int], int] = {}
    seq = 0
    while not all(p == fences for p in position):
        ready = [r for r in range(size) if position[r] < fences and not waiting[r]]
        assert ready, "every rank is blocked: a fence deadlocked"
        rank = data.draw(st.sampled_from(ready))
        fence = position[rank]
        seq += 1
        if rank == writers[fence]:
            out = core.handle(rank, Op.FENCE_BEGIN, seq, fence)
            assert any(s.code == Reply.GRANTED and s.rank == rank for s in out)
            share = data.draw(st.sampled_from([FenceStatus.OK_EMPTY, FenceStatus.OK_PAYLOAD, FenceStatus.FAILED]))
            out += core.handle(rank, Op.FENCE_END, seq, fence, share, b"x" * 1000 if share else None)
            out += core.handle(rank, Op.RELEASE, seq)
        else:
            out = core.handle(rank, Op.FENCE_WAIT, seq, fence)
        waiting[rank] = True
        for reply in out:
            if reply.code != Reply.FENCE_DONE:
                continue
            assert waiting[reply.rank] and reply.arg == position[reply.rank]
            key = (reply.rank, reply.arg)
            heard[key] = heard.get(key, 0) + 1
            if reply.rank != writers[reply.arg] and reply.aux == FenceStatus.OK_PAYLOAD and data.draw(st.booleans()):
                got = core.handle(reply.rank, Op.COLLECT, seq, reply.arg)
                assert got[0].code == Reply.PAYLOAD and got[0].payload == b"x" * 1000
            waiting[reply.rank] = False
            position[reply.rank] += 1
        assert len(core.fences.records) <= 2
        assert core.fences.stored_bytes() <= 2 * 1000
    assert all(count == 1 for count in heard.values())
    assert len(heard) == size * fences
    assert not core.fences.waiters
