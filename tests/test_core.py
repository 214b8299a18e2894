"""The lock manager core in one process: no MPI, every rule of DESIGN.md."""

import pytest

from mpilock.server import keys as keyspace
from mpilock.server.core import LockCore, ProtocolError, Send
from mpilock.server.protocol import SLOT_SHIFT, FenceStatus, Flag, Op, Reply


def granted(replies: list[Send]) -> list[int]:
    return [s.rank for s in replies if s.code == Reply.GRANTED]


def writer(core: LockCore, key: bytes = b"") -> tuple[int, int] | None:
    """(rank, seq) of the write lock's holder."""
    state = core.state(key)
    if state is None or state.write_hold is None:
        return None
    return state.writer, state.write_hold[0]


def readers(core: LockCore, key: bytes = b"") -> set[int]:
    state = core.state(key)
    return set() if state is None else set(state.readers)


def test_readers_are_granted_together():
    core = LockCore(4)
    assert granted(core.handle(0, Op.READ, 1)) == [0]
    assert granted(core.handle(1, Op.READ, 1)) == [1]
    assert readers(core) == {0, 1}


def test_writer_waits_for_readers_and_excludes_everyone():
    core = LockCore(3)
    core.handle(0, Op.READ, 1)
    assert core.handle(1, Op.WRITE, 1) == []
    assert granted(core.handle(0, Op.RELEASE, 2)) == [1]
    assert writer(core) == (1, 1)
    assert core.handle(2, Op.READ, 1) == []
    assert core.handle(0, Op.WRITE, 3) == []


def test_writer_priority_over_later_readers():
    core = LockCore(4)
    core.handle(0, Op.READ, 1)
    core.handle(1, Op.WRITE, 1)  # queued behind the reader
    assert core.handle(2, Op.READ, 1) == []  # a new reader must wait for the queued writer
    out = core.handle(0, Op.RELEASE, 2)
    assert granted(out) == [1]
    out = core.handle(1, Op.RELEASE, 2)
    assert granted(out) == [2]


def test_writers_in_arrival_order_then_all_readers_at_once():
    core = LockCore(5)
    core.handle(0, Op.WRITE, 1)
    core.handle(3, Op.WRITE, 1)
    core.handle(1, Op.READ, 1)
    core.handle(2, Op.WRITE, 1)
    core.handle(4, Op.READ, 1)
    order = []
    holder = 0
    for _ in range(3):
        out = core.handle(holder, Op.RELEASE, 9)
        order.append(granted(out))
        holder = order[-1][0]
    assert order == [[3], [2], [1, 4]]


def test_try_request_is_denied_without_queueing():
    core = LockCore(2)
    core.handle(0, Op.WRITE, 1)
    out = core.handle(1, Op.READ, 5, Flag.TRY)
    assert out == [Send(1, Reply.DENIED, 5)]
    assert not core.is_waiting(1)
    assert granted(core.handle(1, Op.WRITE, 6, Flag.TRY)) == []
    core.handle(0, Op.RELEASE, 2)
    assert granted(core.handle(1, Op.READ, 7, Flag.TRY)) == [1]


def test_cancel_withdraws_queued_writer_and_unblocks_readers():
    core = LockCore(3)
    core.handle(0, Op.READ, 1)
    core.handle(1, Op.WRITE, 4)
    assert core.handle(2, Op.READ, 1) == []
    out = core.handle(1, Op.CANCEL, 4)
    assert Send(1, Reply.CANCELLED, 4) in out
    assert granted(out) == [2]  # the withdrawn writer no longer blocks readers


def test_cancel_after_grant_hands_the_lock_back():
    core = LockCore(2)
    assert granted(core.handle(0, Op.WRITE, 3)) == [0]
    core.handle(1, Op.WRITE, 1)
    out = core.handle(0, Op.CANCEL, 3)  # the grant raced the timeout
    assert out[0] == Send(0, Reply.CANCELLED, 3)
    assert granted(out) == [1]
    assert writer(core) == (1, 1)


def test_stale_cancel_is_harmless():
    core = LockCore(2)
    core.handle(0, Op.READ, 1)
    core.handle(0, Op.RELEASE, 2)
    assert core.handle(0, Op.CANCEL, 1) == [Send(0, Reply.CANCELLED, 1)]
    assert not core.holds(0)


def test_protocol_errors():
    core = LockCore(2)
    with pytest.raises(ProtocolError):
        core.handle(0, Op.RELEASE, 1)
    core.handle(0, Op.READ, 1)
    with pytest.raises(ProtocolError):
        core.handle(0, Op.WRITE, 2)
    with pytest.raises(ProtocolError):
        core.handle(5, Op.READ, 1)
    with pytest.raises(ValueError):
        LockCore(0)


def test_fence_waiters_are_woken_with_the_outcome():
    core = LockCore(3)
    assert granted(core.handle(0, Op.FENCE_BEGIN, 1, 0)) == [0]
    assert core.handle(1, Op.FENCE_WAIT, 1, 0) == []
    out = core.handle(0, Op.FENCE_END, 2, 0, FenceStatus.OK_PAYLOAD, b"xyz")
    assert out == []  # rank 2 has not arrived yet: the fence ends like a barrier
    late = core.handle(2, Op.FENCE_WAIT, 1, 0)
    assert sorted((s.rank, s.code, s.aux) for s in late) == [
        (r, Reply.FENCE_DONE, FenceStatus.OK_PAYLOAD) for r in range(3)
    ]
    assert core.handle(2, Op.COLLECT, 2, 0)[0].payload == b"xyz"
    core.handle(0, Op.RELEASE, 3)
    assert writer(core) is None


def test_rank_leaving_with_its_own_error_only_reports_arrival():
    core = LockCore(2)
    core.handle(0, Op.FENCE_BEGIN, 1, 0)
    assert core.handle(1, Op.FENCE_WAIT, 4, 0, 1) == []  # no reply expected
    out = core.handle(0, Op.FENCE_END, 2, 0, FenceStatus.OK_PAYLOAD, b"p")
    assert [(s.rank, s.code) for s in out] == [(0, Reply.FENCE_DONE)]
    assert core.fences.records == {}


def test_failed_fence_sends_the_error_text_to_waiters():
    core = LockCore(2)
    core.handle(1, Op.FENCE_BEGIN, 1, 0)
    core.handle(0, Op.FENCE_WAIT, 1, 0)
    out = core.handle(1, Op.FENCE_END, 2, 0, FenceStatus.FAILED, b"KeyError: 'x'")
    with pytest.raises(ProtocolError):
        core.handle(1, Op.FENCE_END, 2, 0, FenceStatus.OK_EMPTY)
    waiter = next(s for s in out if s.rank == 0)
    assert waiter.aux == FenceStatus.FAILED and waiter.payload == b"KeyError: 'x'"
    assert core.fences.records == {}  # nobody can collect a failed fence


def test_payload_kept_for_a_collect_asked_again_until_every_rank_moved_on():
    core = LockCore(3)
    core.handle(0, Op.FENCE_BEGIN, 1, 0)
    core.handle(0, Op.FENCE_END, 2, 0, FenceStatus.OK_PAYLOAD, b"p" * 100)
    core.handle(0, Op.RELEASE, 3)
    for rank in (1, 2):
        core.handle(rank, Op.FENCE_WAIT, 1, 0)
    assert core.fences.stored_bytes() == 100
    core.handle(0, Op.FENCE_WAIT, 1, 1)  # the writer moving on changes nothing
    for rank in (1, 2):
        core.handle(rank, Op.COLLECT, 2, 0)
    assert core.fences.stored_bytes() == 100  # a collect() cut short by a signal may ask again
    again = core.handle(1, Op.COLLECT, 4, 0)
    assert [(s.code, s.payload) for s in again] == [(Reply.PAYLOAD, b"p" * 100)]
    core.handle(1, Op.FENCE_BEGIN, 5, 1)  # rank 1 enters the next fence: done with fence 0
    assert core.fences.stored_bytes() == 100
    core.handle(2, Op.FENCE_WAIT, 6, 1, 1)
    assert core.fences.stored_bytes() == 0
    gone = core.handle(2, Op.COLLECT, 7, 0)
    assert [s.code for s in gone] == [Reply.ERROR]


def test_uncollected_payloads_do_not_pile_up():
    size, megabyte = 4, b"x" * 1_000_000
    core = LockCore(size)
    peak = 0
    for fence in range(200):
        core.handle(0, Op.FENCE_BEGIN, 1, fence)
        core.handle(0, Op.FENCE_END, 2, fence, FenceStatus.OK_PAYLOAD, megabyte)
        core.handle(0, Op.RELEASE, 3)
        done = []
        for rank in range(1, size):
            done += core.handle(rank, Op.FENCE_WAIT, 1, fence)
        assert (0, Reply.FENCE_DONE) in [(s.rank, s.code) for s in done]
        peak = max(peak, core.fences.stored_bytes())
    assert peak <= 2 * len(megabyte)


def test_collect_of_a_forgotten_fence_is_an_error_reply():
    core = LockCore(2)
    out = core.handle(1, Op.COLLECT, 7, 3)
    assert out[0].code == Reply.ERROR and b"fence 3" in (out[0].payload or b"")


def test_close_waits_for_every_rank_and_frees_locks():
    core = LockCore(3)
    core.handle(1, Op.READ, 1)
    core.handle(2, Op.WRITE, 1)
    assert core.handle(0, Op.CLOSE, 1) == []
    out = core.handle(1, Op.CLOSE, 2)  # rank 1 still held its read: released
    assert granted(out) == [2]
    out = core.handle(2, Op.CLOSE, 2)
    assert sorted(s.rank for s in out if s.code == Reply.CLOSED) == [0, 1, 2]
    assert core.closed
    with pytest.raises(ProtocolError):
        core.handle(0, Op.READ, 3)


def test_frame_payloads_count_whole_and_are_never_given_away_by_a_collect():
    from mpilock.server.frames import Frames

    core = LockCore(3)
    payload = Frames([b"stream", bytes(1000), bytearray(500)])
    core.handle(0, Op.FENCE_BEGIN, 1, 0)
    core.handle(0, Op.FENCE_END, 2, 0, FenceStatus.OK_PAYLOAD, payload)
    core.handle(0, Op.RELEASE, 3)
    for rank in (1, 2):
        core.handle(rank, Op.FENCE_WAIT, 1, 0)
    assert core.fences.stored_bytes() == 6 + 1000 + 500
    for rank in (2, 1, 1):
        sent = core.handle(rank, Op.COLLECT, 2, 0)
        assert sent[0].payload is payload and not payload.owned  # kept: a receiver here copies it
    assert core.fences.stored_bytes() == 1506


def test_uncollected_frame_payloads_do_not_pile_up_and_are_not_given_away():
    from mpilock.server.frames import Frames

    size, sent = 3, []
    core = LockCore(size)
    peak = 0
    for fence in range(20):
        sent.append(Frames([b"s", bytes(100_000)]))
        core.handle(1, Op.FENCE_BEGIN, 1, fence)
        core.handle(1, Op.FENCE_END, 2, fence, FenceStatus.OK_PAYLOAD, sent[-1])
        core.handle(1, Op.RELEASE, 3)
        for rank in (0, 2):
            core.handle(rank, Op.FENCE_WAIT, 1, fence)
        peak = max(peak, core.fences.stored_bytes())
    assert 100_001 <= peak <= 2 * 100_001
    assert not any(f.owned for f in sent)  # dropped without a collect: nobody was handed them


# -- several threads of one rank are separate holders (issue 18); both cores ---------------------------------
def _cores() -> list[str]:
    from mpilock.server.native_core import available

    return ["python", "native"] if available() else ["python"]


@pytest.fixture(params=_cores())
def make_core(request):
    """Build a Python or a native core of ``size`` ranks."""
    if request.param == "python":
        return LockCore
    from mpilock.server.native_core import NativeLockCore

    return NativeLockCore


def s(slot: int, n: int) -> int:
    """The seq of request ``n`` of thread ``slot``."""
    return slot << SLOT_SHIFT | n


def codes(replies: list[Send]) -> list[tuple[int, Reply, int]]:
    return [(r.rank, r.code, r.seq) for r in replies]


def test_two_threads_of_a_rank_exclude_each_other_on_write(make_core):
    core = make_core(2)
    assert codes(core.handle(0, Op.WRITE, s(1, 1))) == [(0, Reply.GRANTED, s(1, 1))]
    assert core.handle(0, Op.WRITE, s(2, 1)) == []  # another thread of rank 0 waits
    assert core.handle(0, Op.READ, s(0, 1)) == []  # and so does the rank's first thread
    out = core.handle(0, Op.RELEASE, s(1, 2))
    assert codes(out) == [(0, Reply.GRANTED, s(2, 1))]  # writers in arrival order, reply routed by seq
    assert codes(core.handle(0, Op.RELEASE, s(2, 2))) == [(0, Reply.GRANTED, s(0, 1))]


def test_reads_of_two_threads_share(make_core):
    core = make_core(1)
    assert codes(core.handle(0, Op.READ, s(1, 1))) == [(0, Reply.GRANTED, s(1, 1))]
    assert codes(core.handle(0, Op.READ, s(2, 1))) == [(0, Reply.GRANTED, s(2, 1))]
    assert core.handle(0, Op.WRITE, s(3, 1)) == []
    assert core.handle(0, Op.RELEASE, s(1, 2)) == []
    assert codes(core.handle(0, Op.RELEASE, s(2, 2))) == [(0, Reply.GRANTED, s(3, 1))]


def test_a_queued_writer_thread_blocks_a_new_reader_thread_of_the_same_rank(make_core):
    core = make_core(2)
    core.handle(1, Op.READ, s(0, 1))
    assert core.handle(0, Op.WRITE, s(1, 1)) == []  # queued behind rank 1's read
    assert core.handle(0, Op.READ, s(2, 1)) == []  # writer priority, even within a rank
    assert codes(core.handle(1, Op.RELEASE, s(0, 2))) == [(0, Reply.GRANTED, s(1, 1))]
    assert codes(core.handle(0, Op.RELEASE, s(1, 2))) == [(0, Reply.GRANTED, s(2, 1))]


def test_a_cancel_of_one_thread_leaves_another_threads_grant_alone(make_core):
    core = make_core(1)
    core.handle(0, Op.READ, s(2, 1))  # thread 2 reads
    core.handle(0, Op.READ, s(3, 1))
    assert core.handle(0, Op.WRITE, s(1, 1)) == []  # thread 1 waits for write
    assert codes(core.handle(0, Op.CANCEL, s(1, 1))) == [(0, Reply.CANCELLED, s(1, 1))]
    state = core.keys[b""]
    assert len(state.readers) == 2 and not state.writers  # both reads stay
    # a cancel racing a grant: thread 2's cancel of its granted read hands back only its own read
    assert codes(core.handle(0, Op.CANCEL, s(2, 1))) == [(0, Reply.CANCELLED, s(2, 1))]
    assert len(core.keys[b""].readers) == 1


def test_a_deadlock_between_two_threads_of_a_rank_is_refused_and_names_both(make_core):
    core = make_core(1)
    core.handle(0, Op.HELLO, s(1, 1), 0, 11, b"loader")
    core.handle(0, Op.HELLO, s(2, 1), 0, 12, b"writer")
    core.handle(0, Op.WRITE, s(1, 2), keys=(b"sa",))
    core.handle(0, Op.WRITE, s(2, 2), keys=(b"sb",))
    assert core.handle(0, Op.WRITE, s(1, 3), keys=(b"sb",)) == []  # loader waits for writer
    (reply,) = core.handle(0, Op.WRITE, s(2, 3), keys=(b"sa",))  # writer would wait for loader: a cycle
    assert (reply.rank, reply.code, reply.seq) == (0, Reply.DEADLOCK, s(2, 3))
    text = (reply.payload or b"").decode()
    assert text.startswith("deadlock: rank 0 / writer holds write 'b'"), text
    assert "rank 0 / loader holds write 'a'" in text and "(rank 0 / writer's)" in text


def test_an_unnamed_thread_is_named_by_its_slot_and_the_table_names_threads(make_core):
    core = make_core(2)
    core.handle(0, Op.HELLO, s(0, 1), 0, 10, b"MainThread")
    core.handle(0, Op.READ, s(0, 2))
    core.handle(0, Op.READ, s(3, 1))
    core.handle(1, Op.WRITE, s(0, 1))
    (entry,) = core.table(0.0)
    assert [(h["rank"], h["thread"], h["slot"]) for h in entry["holders"]] == [(0, "MainThread", 0), (0, None, 3)]
    assert [(w["rank"], w["thread"], w["slot"]) for w in entry["waiters"]] == [(1, None, 0)]
    from mpilock.table import LockTable

    text = str(LockTable(core.table(0.0)))  # type: ignore[arg-type]
    assert "rank 0 / thread 3" in text and "rank 0 / MainThread" not in text


def test_a_bounded_key_admits_its_limit_of_threads(make_core):
    key = keyspace.encode_bounded("fs")
    core = make_core(2)
    assert codes(core.handle(0, Op.BOUNDED, s(1, 1), 0, 2, keys=(key,))) == [(0, Reply.GRANTED, s(1, 1))]
    assert codes(core.handle(0, Op.BOUNDED, s(2, 1), 0, 2, keys=(key,))) == [(0, Reply.GRANTED, s(2, 1))]
    assert core.handle(0, Op.BOUNDED, s(3, 1), 0, 2, keys=(key,)) == []
    assert core.handle(1, Op.BOUNDED, s(0, 1), 0, 2, keys=(key,)) == []
    assert codes(core.handle(0, Op.RELEASE, s(2, 2), keys=(key,))) == [(0, Reply.GRANTED, s(3, 1))]


def test_closing_a_rank_releases_every_thread_and_grants_the_next_rank(make_core):
    core = make_core(2)
    core.handle(0, Op.READ, s(0, 1))
    core.handle(0, Op.READ, s(1, 1))
    assert core.handle(1, Op.WRITE, s(0, 1)) == []
    assert core.handle(0, Op.READ, s(2, 1)) == []  # queued behind the writer: dropped by the close, no reply
    out = core.handle(0, Op.CLOSE, s(2, 2))  # any thread closes for the rank
    assert codes(out) == [(1, Reply.GRANTED, s(0, 1))]
    assert codes(core.handle(1, Op.CLOSE, s(0, 2))) == [(0, Reply.CLOSED, s(2, 2)), (1, Reply.CLOSED, s(0, 2))]
    with pytest.raises(ProtocolError):
        core.handle(1, Op.READ, s(0, 3))
