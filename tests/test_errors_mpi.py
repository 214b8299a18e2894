"""Faults and bad input: a clear error on every affected rank, no hang, no lost lock."""

import threading
import time
import warnings

import pytest
from mpi4py import MPI
from mpitools import mpi

import mpilock
from mpilock.server.loop import SERVICE

COMM = MPI.COMM_WORLD


def lock_still_works(ctrl):
    """Every rank takes the write lock once; a leaked lock makes this time out."""
    COMM.barrier()
    with ctrl.write(timeout=20):
        pass
    with ctrl.read(timeout=20):
        pass


@mpi()
def test_writer_exception_reaches_every_rank_as_fence_error(ctrl, mpi_ranks):
    writer = COMM.size - 1
    start = time.monotonic()
    if ctrl.rank == writer:
        with pytest.raises(KeyError, match="boom"):
            with ctrl.single_write(rank=writer) as fence:
                fence.guard()
                raise KeyError("boom")
    else:
        with pytest.raises(mpilock.FenceError) as info:
            with ctrl.single_write(rank=writer) as fence:
                fence.guard()
        assert info.value.writer == writer
        assert f"rank {writer}" in str(info.value) and "KeyError" in str(info.value)
        with pytest.raises(mpilock.FenceError):
            fence.collect()
    assert time.monotonic() - start < 30
    lock_still_works(ctrl)


@mpi()
def test_unpicklable_share_fails_the_fence_everywhere(ctrl, mpi_ranks):
    if ctrl.rank == 0:
        with pytest.raises(TypeError, match="pickle"):
            with ctrl.single_write() as fence:
                fence.guard()
                fence.share(threading.Lock())
    else:
        with pytest.raises(mpilock.FenceError, match="TypeError"):
            with ctrl.single_write() as fence:
                fence.guard()
    lock_still_works(ctrl)
    with ctrl.single_write() as fence:  # the controller keeps working
        fence.guard()
        fence.share("fine")
    assert fence.collect() == "fine"


@mpi()
def test_fence_misuse_errors(ctrl, mpi_ranks):
    with ctrl.single_write() as fence:
        fence.guard()
        fence.share(1)
    with pytest.raises(mpilock.FenceError):
        fence.share(2)  # outside the block
    with ctrl.single_write() as later:
        later.guard()
    with pytest.raises(mpilock.FenceError, match="before the next single_write"):
        fence.collect()  # on every rank, the writer included
    with pytest.raises(ValueError):
        ctrl.single_write(rank=COMM.size)
    lock_still_works(ctrl)


@mpi(min_ranks=2)
def test_non_writer_holding_a_lock_gets_an_error_not_a_hang(ctrl, mpi_ranks):
    if ctrl.rank == 1:
        with ctrl.read():
            with pytest.raises(mpilock.FenceError, match="holding the controller's default lock"):
                with ctrl.single_write() as fence:
                    fence.guard()
    else:
        with ctrl.single_write() as fence:
            fence.guard()
            fence.share("done")
    lock_still_works(ctrl)


@mpi(min_ranks=2)
def test_timeouts_raise_and_withdraw(ctrl, mpi_ranks):
    if ctrl.rank == 0:
        with ctrl.write():
            COMM.barrier()
            COMM.barrier()  # everyone else timed out meanwhile
    else:
        COMM.barrier()
        start = time.monotonic()
        with pytest.raises(mpilock.LockTimeout):
            with ctrl.write(timeout=0.3):
                pass
        with pytest.raises(TimeoutError):  # LockTimeout is a TimeoutError
            with ctrl.read(timeout=0.2):
                pass
        with pytest.raises(mpilock.LockTimeout):
            with ctrl.read(timeout=0):
                pass
        elapsed = time.monotonic() - start
        assert 0.5 <= elapsed < 10, elapsed
        COMM.barrier()
    lock_still_works(ctrl)
    COMM.barrier()
    with ctrl.read(timeout=0):  # only readers now: a try succeeds
        pass


@mpi()
def test_racing_timeouts_never_leak_a_grant(ctrl, mpi_ranks):
    timeouts = 0
    for i in range(60):
        try:
            kind = ctrl.write if (i + ctrl.rank) % 2 else ctrl.read
            with kind(timeout=0.0005 * (i % 4)):
                time.sleep(0.0005)
        except mpilock.LockTimeout:
            timeouts += 1
    lock_still_works(ctrl)


@mpi()
def test_bad_arguments_raise_on_every_rank(mpi_ranks):
    with pytest.raises(ValueError, match="master"):
        mpilock.sync(master=COMM.size)
    with pytest.raises(ValueError):
        mpilock.sync(master=-1)
    with pytest.raises(TypeError):
        mpilock.sync(master="0")
    with pytest.raises(TypeError, match="intracommunicator"):
        mpilock.sync(comm=42)
    if COMM.size > 1:
        local = COMM.Split(COMM.rank % 2)
        inter = local.Create_intercomm(0, COMM, 1 - COMM.rank % 2)  # leaders: ranks 0 and 1
        with pytest.raises(TypeError, match="intracommunicator"):
            mpilock.sync(comm=inter)
        inter.Free()
        local.Free()
    if COMM.size > 1:  # a rank that disagrees makes every rank fail
        with pytest.raises(ValueError):
            mpilock.sync(master=COMM.size if COMM.rank == 1 else 0)
        with pytest.raises(ValueError, match="disagree"):
            mpilock.sync(master=1 if COMM.rank == 0 else 0)
    with mpilock.sync(comm=MPI.COMM_SELF) as own:  # a private lock per rank
        with own.write(timeout=5):
            pass
    with mpilock.sync() as ctrl:  # nothing was left half-started
        lock_still_works(ctrl)


@mpi()
def test_close_releases_held_locks_with_a_warning(mpi_ranks):
    ctrl = mpilock.sync()
    lock = ctrl.read()
    lock.__enter__()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctrl.close()
    assert any("holding" in str(w.message) for w in caught)
    ctrl.close()  # idempotent
    assert ctrl.closed
    for call in (ctrl.read, ctrl.write, ctrl.single_write, ctrl.stats):
        with pytest.raises(mpilock.ClosedError):
            with call():
                pass


@mpi()
def test_many_controllers_share_one_thread_and_leave_nothing(mpi_ranks):
    baseline = threading.active_count()
    ctrls = [mpilock.sync(master=i % COMM.size) for i in range(100)]
    servers = [t for t in threading.enumerate() if t.name == "mpilock-server"]
    assert len(servers) <= 1
    # Independent locks: holding one does not block another.
    with ctrls[0].write(), ctrls[1].write(timeout=10), ctrls[2].read(timeout=10):
        pass
    comms = [c._private for c in ctrls]
    for c in ctrls:
        c.close()
    assert SERVICE.wait_stopped(10)
    assert all(c == MPI.COMM_NULL for c in comms)
    assert threading.active_count() == baseline


@mpi()
def test_stats_report_what_the_server_saw(ctrl, mpi_ranks):
    for _ in range(3):
        with ctrl.write():
            pass
    with ctrl.read():
        pass
    COMM.barrier()
    stats = ctrl.stats()  # not collective: each rank asks the server
    counts = [(r["reads"], r["writes"]) for r in stats["ranks"]]
    assert counts == COMM.bcast(counts) == [(1, 3)] * COMM.size
    mine = stats["ranks"][ctrl.rank]
    assert (mine["writes"], mine["reads"]) == (3, 1)
    assert mine["wait_p50"] >= 0 and mine["hold_total"] >= 0
