"""Dedicated-server mode: one rank only serves, the others lock."""

import time

import pytest
from mpi4py import MPI
from mpitools import Intervals, mpi, overlaps, wait_all_inside

import mpilock

COMM = MPI.COMM_WORLD


@mpi(min_ranks=2)
def test_dedicated_server_serves_the_other_ranks(mpi_ranks):
    server = COMM.size - 1
    with mpilock.dedicated(server=server) as ctrl:
        if ctrl is None:
            assert COMM.rank == server
        else:
            assert ctrl.size == COMM.size - 1 and ctrl.rank == COMM.rank
            assert ctrl.comm.Get_size() == COMM.size - 1
            spans = Intervals()
            for i in range(10):
                lock = ctrl.write if (i + ctrl.rank) % 2 else ctrl.read
                with lock(), spans.hold("write" if lock == ctrl.write else "read", 0.001):
                    pass
            assert overlaps(spans.gather(ctrl.comm)) == []
            with ctrl.read():
                assert wait_all_inside(ctrl.comm)
            with ctrl.single_write() as fence:  # the first client writes by default
                fence.guard()
                assert ctrl.rank == 0
                fence.share(lambda: "shared")
            assert fence.collect()() == "shared"
            stats = ctrl.stats()
            assert sum(r["writes"] for r in stats["ranks"]) >= 5
    COMM.barrier()  # everyone, the server included, got past the block


@mpi(min_ranks=2)
def test_grants_do_not_wait_for_a_busy_application(mpi_ranks):
    """The lock keeps working while every client computes in pure Python."""
    with mpilock.dedicated() as ctrl:
        if ctrl is not None:
            if ctrl.rank == 0:
                end = time.monotonic() + 0.5
                while time.monotonic() < end:
                    sum(range(1000))  # pure Python, never releases the GIL voluntarily
            for _ in range(20):
                with ctrl.write(timeout=10):
                    pass


def test_dedicated_needs_two_ranks():
    if COMM.size == 1:
        with pytest.raises(ValueError, match="at least 2"):
            with mpilock.dedicated(comm=MPI.COMM_SELF):
                pass
