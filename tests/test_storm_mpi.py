"""A storm of interrupts leaves no lock held, no protocol error, no abort and no lost payload (issue 25).

Each rank's ``SIGALRM`` handler raises at random 50 µs to 2 ms intervals while
it runs one kind of lock operation in a loop (:mod:`mpilock.storm`); then
every rank takes every lock in turn with a timeout, ``locks()`` must be empty
and the server must have logged no protocol error.  Each kind gets a job of
its own (the handlers strike inside the library).  Each kind alone runs at 2
ranks; all kinds at once (``mixed``) at 1 to 3.
"""

import os

import pytest
from mpitools import mpi

import mpilock
from mpilock import link, storm

SECONDS = float(os.environ.get("MPILOCK_STORM_SECONDS", "2"))


def _storm(ctrl, kind, seed, threads=0):
    # A hang shows where every rank was shortly before the job was killed (tests/leftovers.py).
    result, failures = storm.storm(ctrl, kind, SECONDS, seed=seed, threads=threads)
    operations, interrupted, everyone = storm.gather(ctrl, result, failures)
    assert not everyone, "\n".join(everyone)
    assert interrupted > 0, "the storm never struck"
    assert operations > 0, "no operation ever completed under the storm"


@pytest.mark.parametrize("kind", [k for k in storm.KINDS if k != "mixed"])
@mpi(min_ranks=2, max_ranks=2, timeout=50)
@pytest.mark.mpi_isolated
def test_a_storm_of_interrupts_leaves_nothing_behind(ctrl, mpi_ranks, kind):
    _storm(ctrl, kind, mpi_ranks)


@mpi(max_ranks=3, timeout=50)
@pytest.mark.mpi_isolated
def test_a_storm_of_every_kind_at_once_leaves_nothing_behind(ctrl, mpi_ranks):
    _storm(ctrl, "mixed", mpi_ranks)


@mpi(min_ranks=2, max_ranks=2, timeout=50)
@pytest.mark.mpi_isolated
def test_a_storm_on_the_main_thread_leaves_the_other_threads_locks_alone(ctrl, mpi_ranks):
    _storm(ctrl, "mixed", mpi_ranks, threads=2)


@mpi(min_ranks=2, max_ranks=2, timeout=50)
@pytest.mark.mpi_isolated
def test_a_storm_leaves_nothing_behind_with_requests_sent_from_python(mpi_ranks, monkeypatch):
    """The same with the pure-Python send path (what runs where the native module is not built)."""
    monkeypatch.setattr(link, "NATIVE_SENDS", False)
    ctrl = mpilock.sync()
    try:
        assert ctrl._link._sender is None
        _storm(ctrl, "mixed", mpi_ranks)
    finally:
        ctrl.close()
