"""Lock semantics with real MPI processes, at every rank count."""

import time

import pytest
from mpi4py import MPI
from mpitools import Intervals, mpi, overlaps, wait_all_inside

import mpilock

COMM = MPI.COMM_WORLD


@mpi()
def test_writers_never_overlap_anything(ctrl, mpi_ranks):
    spans = Intervals()
    for i in range(15):
        if (i + ctrl.rank) % 3 == 0:
            with ctrl.write(), spans.hold("write", 0.002):
                pass
        else:
            with ctrl.read(), spans.hold("read", 0.002):
                pass
    everything = spans.gather(COMM)
    assert len(everything) == 15 * COMM.size
    assert overlaps(everything) == []


@mpi()
def test_readers_run_in_parallel(ctrl, mpi_ranks):
    with ctrl.read():
        # Every rank must be inside its read lock at the same time to pass this barrier.
        assert wait_all_inside(COMM), "readers were not admitted together"


@mpi(min_ranks=3)
def test_queued_writer_goes_before_a_later_reader(ctrl, mpi_ranks):
    times = {}
    if ctrl.rank == 0:
        with ctrl.read():
            COMM.barrier()  # rank 0 reads; rank 1 may now queue its write
            COMM.recv(source=2, tag=7)  # rank 2 saw the writer queued and asks to read
            time.sleep(0.2)
    elif ctrl.rank == 1:
        COMM.barrier()
        with ctrl.write():
            start = time.monotonic()
            time.sleep(0.05)
            end = time.monotonic()  # inside the lock: after the release is sent, the reader may be in already
        times["write"] = (start, end)
    elif ctrl.rank == 2:
        COMM.barrier()
        # Wait until the writer is queued: a try-read is then denied (writer priority).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with ctrl.read(timeout=0):
                    pass
            except mpilock.LockTimeout:
                break
            time.sleep(0.005)
        else:
            pytest.fail("the writer never got queued")
        COMM.send(None, dest=0, tag=7)
        with ctrl.read():
            times["read"] = (time.monotonic(), None)
    else:
        COMM.barrier()
    merged = {k: v for d in COMM.allgather(times) for k, v in d.items()}
    assert merged["write"][1] <= merged["read"][0], merged


@mpi()
def test_nested_locks_are_local_and_promotion_excludes_others(ctrl, mpi_ranks):
    spans = Intervals()
    for _ in range(5):
        with ctrl.read():
            with ctrl.read(), spans.hold("read", 0.001):
                pass
            with ctrl.write(), spans.hold("write", 0.002):  # promoted
                with ctrl.read(), ctrl.write():  # local inside the write
                    pass
            with spans.hold("read", 0.001):
                pass  # the read lock is back after the promoted write
        with ctrl.write():
            with ctrl.write(), ctrl.read(), spans.hold("write", 0.001):
                pass
    assert overlaps(spans.gather(COMM)) == []


@mpi()
def test_exception_inside_block_releases_the_lock(ctrl, mpi_ranks):
    for lock in (ctrl.read, ctrl.write):
        with pytest.raises(ZeroDivisionError):
            with lock():
                1 / 0  # noqa: B018
    COMM.barrier()
    with ctrl.write(timeout=10):  # would time out if any rank leaked its lock
        pass


@mpi()
def test_properties(ctrl, mpi_ranks):
    assert ctrl.rank == COMM.rank
    assert ctrl.master == 0
    assert ctrl.size == COMM.size
    assert not ctrl.closed
    assert "open" in repr(ctrl)


@mpi()
def test_master_on_last_rank_and_context_manager(mpi_ranks):
    with mpilock.sync(master=COMM.size - 1) as ctrl:
        assert ctrl.master == COMM.size - 1
        spans = Intervals()
        for _ in range(5):
            with ctrl.write(), spans.hold("write", 0.001):
                pass
        assert overlaps(spans.gather(COMM)) == []
    assert ctrl.closed
    with pytest.raises(mpilock.ClosedError):
        with ctrl.read():
            pass
