"""Misuse fails loudly on the ranks it affects, before anything reaches the lock server, and nothing hangs."""

import threading

import numpy as np
import pytest
from mpi4py import MPI
from mpitools import mpi

import mpilock
from mpilock.server.loop import SERVICE

COMM = MPI.COMM_WORLD


def lock_still_works(ctrl):
    COMM.barrier()
    with ctrl.write(timeout=20):
        pass


@mpi()
def test_a_fence_refuses_a_second_with_on_every_rank(ctrl, mpi_ranks):
    fence = ctrl.single_write()
    with fence:
        fence.guard()
        fence.share("once")
    assert fence.collect() == "once"
    for _ in range(2):  # a writer re-entering must not take the write lock; the others must not hang
        with pytest.raises(mpilock.FenceError, match="entered already"):
            with fence:
                fence.guard()
    COMM.barrier()
    assert ctrl.locks() == []  # the writer's second `with` took no lock
    COMM.barrier()
    with ctrl.single_write() as again:  # a new fence works
        again.guard()
        again.share("twice")
    assert again.collect() == "twice"
    lock_still_works(ctrl)


@mpi()
def test_a_lock_entered_by_one_thread_cannot_be_exited_by_another(ctrl, mpi_ranks):
    key = f"m{ctrl.rank}"
    lock = ctrl.write(key)
    lock.__enter__()
    errors = []

    def other_thread():
        try:
            lock.__exit__(None, None, None)
        except mpilock.MpilockError as err:
            errors.append(str(err))

    thread = threading.Thread(target=other_thread, name="other")
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert len(errors) == 1 and "was not entered by this thread" in errors[0], errors
    holders = ctrl.locks(key)[0]["holders"]
    assert [(h["rank"], h["thread"]) for h in holders] == [(ctrl.rank, "MainThread")]  # still this thread's
    lock.__exit__(None, None, None)
    assert ctrl.locks(key) == []


class Unloadable:
    """Pickles fine on the writer, fails to unpickle anywhere."""

    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise RuntimeError("cannot be rebuilt here")


@mpi(min_ranks=2)
def test_a_failed_unpickle_is_reported_each_time_with_the_writer(ctrl, mpi_ranks):
    with ctrl.single_write() as fence:
        fence.guard()
        fence.share(Unloadable())
    if ctrl.rank != 0:
        for _ in range(3):  # "any number of times": the cause is never lost
            with pytest.raises(mpilock.FenceError, match=r"writer rank 0.*cannot be rebuilt here") as info:
                fence.collect()
            assert info.value.writer == 0 and isinstance(info.value.__cause__, RuntimeError)
    lock_still_works(ctrl)


@mpi(min_ranks=2)
def test_integral_types_are_ranks(mpi_ranks):
    with mpilock.sync(master=np.int64(COMM.size - 1)) as ctrl:
        assert ctrl.master == COMM.size - 1
        with ctrl.single_write(rank=np.int64(1)) as fence:
            fence.guard()
            fence.share(ctrl.rank)
        assert fence.collect() == 1
        with pytest.raises(TypeError, match="integer rank"):
            ctrl.single_write(rank=1.0)
        with pytest.raises(ValueError, match="not a rank"):
            ctrl.single_write(rank=np.int64(COMM.size))


@mpi()
def test_close_leaves_no_server_thread_behind(mpi_ranks):
    ctrl = mpilock.sync()
    with ctrl.write():
        pass
    ctrl.close()
    # no waiting, no polling: the thread is gone when close() returns
    assert not SERVICE.running
    assert not [t for t in threading.enumerate() if t.name == "mpilock-server"]


@mpi()
def test_an_unwritable_trace_fails_at_creation_on_every_rank(mpi_ranks):
    with pytest.raises(ValueError, match="trace file"):
        mpilock.sync(trace="/nonexistent/dir/t.json")
    with mpilock.sync() as ctrl:  # nothing was left half-made
        lock_still_works(ctrl)
