"""Property-based tests of the lock core: random interleavings from up to 8 ranks."""

from hypothesis import given, settings
from hypothesis import strategies as st

from mpilock.server.core import LockCore
from mpilock.server.protocol import FenceStatus, Flag, Op, Reply


class Client:
    """What one rank believes, driven only by the replies it receives."""

    def __init__(self) -> None:
        self.state = "idle"  # idle | waiting | holding
        self.kind = ""
        self.seq = 0


def check_invariants(core: LockCore, clients: list[Client]) -> None:
    # never a writer with anyone else
    assert core.writer is None or not core.readers
    # no lost wake-up: nobody waits while the lock could be granted
    if core.writer is None and not core.waiting_writers:
        assert not core.waiting_readers
    if core.writer is None and not core.readers:
        assert not core.waiting_writers
    # server and clients agree on who holds and who waits
    for rank, client in enumerate(clients):
        assert core.holds(rank) == (client.state == "holding"), (rank, client.state)
        assert core.is_waiting(rank) == (client.state == "waiting"), (rank, client.state)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 8), data=st.data())
def test_random_interleavings_keep_every_invariant(size, data):
    core = LockCore(size)
    clients = [Client() for _ in range(size)]
    writer_queue: list[int] = []  # ranks of queued writers, in arrival order
    for _ in range(data.draw(st.integers(1, 120))):
        rank = data.draw(st.integers(0, size - 1))
        client = clients[rank]
        if client.state == "idle":
            write = data.draw(st.booleans())
            try_only = data.draw(st.booleans())
            client.seq += 1
            out = core.handle(rank, Op.WRITE if write else Op.READ, client.seq, Flag.TRY if try_only else 0)
            client.state, client.kind = "waiting", "write" if write else "read"
            if write and not try_only:
                writer_queue.append(rank)
        elif data.draw(st.booleans()):
            if client.state == "holding" and data.draw(st.booleans()):
                out = core.handle(rank, Op.RELEASE, 0)
                client.state = "idle"
            else:  # cancel: a timeout, possibly racing a grant already sent
                out = core.handle(rank, Op.CANCEL, client.seq)
                assert out[0].code == Reply.CANCELLED and out[0].rank == rank
                out = out[1:]
                client.state = "idle"
                if rank in writer_queue:
                    writer_queue.remove(rank)
        else:
            continue
        reads_granted = []
        for reply in out:
            target = clients[reply.rank]
            assert reply.seq == target.seq and target.state == "waiting"
            if reply.code == Reply.GRANTED:
                target.state = "holding"
                if target.kind == "write":
                    if reply.rank in writer_queue:
                        # writers are served in arrival order
                        assert writer_queue[0] == reply.rank
                        writer_queue.pop(0)
                else:
                    reads_granted.append(reply.rank)
            else:
                assert reply.code == Reply.DENIED
                target.state = "idle"
        if reads_granted:  # writer priority: no read while a writer holds or waits
            assert core.writer is None and not core.waiting_writers
        check_invariants(core, clients)
    # closing frees everything and answers every rank exactly once
    order = data.draw(st.permutations(range(size)))
    closed = []
    for rank in order:
        out = core.handle(rank, Op.CLOSE, 10**6)
        closed += [s.rank for s in out if s.code == Reply.CLOSED]
    assert sorted(closed) == list(range(size)) and core.closed
    assert core.writer is None and not core.readers


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
