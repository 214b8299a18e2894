"""A storm of interrupts leaves no lock held, no protocol error, no abort and no lost payload (issue 25).

Each rank's ``SIGALRM`` handler raises at random 50 µs to 2 ms intervals while
it runs one kind of lock operation in a loop (:mod:`mpilock.storm`); then
every rank takes every lock in turn with a timeout, ``locks()`` must be empty
and the server must have logged no protocol error.  Each kind gets a job of
its own (the handlers strike inside the library).  Each kind alone runs at 2
ranks; all kinds at once (``mixed``) at 1 to 3.
"""

import faulthandler
import os

import pytest
from mpi4py import MPI
from mpitools import mpi

from mpilock import storm

SECONDS = float(os.environ.get("MPILOCK_STORM_SECONDS", "2"))


OPEN_MPI = pytest.mark.skipif(
    MPI.get_vendor()[0] == "Open MPI" or os.environ.get("MPIR_CVAR_NOLOCAL") == "1",
    reason="one storm job hung in CI under Open MPI (2026-12-07, 2 ranks, multi-key writes) and one over TCP "
    "(collect of 1 MB); reruns passed: not yet understood, so the storm runs over MPICH shared memory "
    "(both loops) until it is",
)


def _storm(ctrl, kind, seed, threads=0):
    faulthandler.dump_traceback_later(40)  # a hang shows where every rank is before the job is killed
    try:
        result, failures = storm.storm(ctrl, kind, SECONDS, seed=seed, threads=threads)
        operations, interrupted, everyone = storm.gather(ctrl, result, failures)
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert not everyone, "\n".join(everyone)
    assert interrupted > 0, "the storm never struck"
    assert operations > 0, "no operation ever completed under the storm"


@pytest.mark.parametrize("kind", [k for k in storm.KINDS if k != "mixed"])
@mpi(min_ranks=2, max_ranks=2, timeout=50)
@pytest.mark.mpi_isolated
@OPEN_MPI
def test_a_storm_of_interrupts_leaves_nothing_behind(ctrl, mpi_ranks, kind):
    _storm(ctrl, kind, mpi_ranks)


@mpi(max_ranks=3, timeout=50)
@pytest.mark.mpi_isolated
@OPEN_MPI
def test_a_storm_of_every_kind_at_once_leaves_nothing_behind(ctrl, mpi_ranks):
    _storm(ctrl, "mixed", mpi_ranks)


@mpi(min_ranks=2, max_ranks=2, timeout=50)
@pytest.mark.mpi_isolated
@OPEN_MPI
def test_a_storm_on_the_main_thread_leaves_the_other_threads_locks_alone(ctrl, mpi_ranks):
    _storm(ctrl, "mixed", mpi_ranks, threads=2)
