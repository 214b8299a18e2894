"""single_write fences: guard, share, collect, rank= and handle=."""

import numpy as np
from mpi4py import MPI
from mpitools import mpi

COMM = MPI.COMM_WORLD


@mpi()
def test_share_a_lambda_and_a_numpy_array(ctrl, mpi_ranks):
    ran = []
    with ctrl.single_write() as fence:
        fence.guard()
        ran.append(ctrl.rank)
        fence.share({"f": lambda x: x * 3, "a": np.arange(10.0)})
    shared = fence.collect()
    assert shared["f"](2) == 6
    np.testing.assert_array_equal(shared["a"], np.arange(10.0))
    assert sum(COMM.allgather(len(ran))) == 1
    assert ran == ([0] if ctrl.rank == 0 else [])


@mpi()
def test_single_write_on_every_rank(ctrl, mpi_ranks):
    for writer in range(COMM.size):
        with ctrl.single_write(rank=writer) as fence:
            fence.guard()
            assert ctrl.rank == writer
            fence.share(f"from {writer}")
        assert fence.collect() == f"from {writer}"


@mpi()
def test_nobody_leaves_before_the_writer_finished(ctrl, mpi_ranks):
    with ctrl.single_write() as fence:
        fence.guard()
        import time

        time.sleep(0.2)
        fence.share(time.monotonic())
    left = MPI.Wtime()
    finished = fence.collect()
    import time

    assert time.monotonic() >= finished
    assert left > 0


@mpi()
def test_handle_goes_to_the_writer_only(ctrl, mpi_ranks):
    handle = object()
    writer = COMM.size - 1
    with ctrl.single_write(handle=handle, rank=writer) as target:
        seen = target
    assert (seen is handle) == (ctrl.rank == writer)
    assert (seen is None) == (ctrl.rank != writer)


@mpi()
def test_collect_without_share_is_none_and_partial_collect_is_fine(ctrl, mpi_ranks):
    with ctrl.single_write() as fence:
        fence.guard()
    assert fence.collect() is None
    for i in range(3):
        with ctrl.single_write() as fence:
            fence.guard()
            fence.share(i)
        if ctrl.rank % 2 == 0:  # only some ranks collect
            assert fence.collect() == i


@mpi()
def test_uncollected_payloads_do_not_pile_up_on_the_master(ctrl, mpi_ranks):
    megabyte = np.zeros(1 << 20, dtype=np.uint8)
    peak = 0
    for i in range(40):
        with ctrl.single_write() as fence:  # written by the master, collected by nobody else
            fence.guard()
            megabyte[0] = i
            fence.share(megabyte)
        if ctrl.rank == 0:
            assert fence.collect()[0] == i
        if ctrl._channel is not None:
            peak = max(peak, ctrl._channel.core.fences.stored_bytes())
    assert peak <= 2 * (megabyte.nbytes + 1024)
