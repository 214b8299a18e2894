"""The idle server is woken by a request from its node instead of waiting out its sleep, and works without it.

With the wake-up on (``MPILOCK_WAKE=1``, the default) and the native module
built, a server idle past its hot window sleeps on its wake word; a request
from a rank of its node wakes it.  The sleep cap is raised to 20 s here, so a
grant that came only when the sleep ran out would take 20 s: the bound the
test asserts (2 s) is generous for a machine running other jobs, yet far
below the cap.  Where the wake-up is off or cannot be had, the server falls
back to its timed sleeps and locks work as before.
"""

from __future__ import annotations

import logging
import time

import pytest
from mpi4py import MPI
from mpitools import mpi

import mpilock
from mpilock.server import wake
from mpilock.server.native_core import NATIVE
from mpilock.server.settings import SETTINGS

COMM = MPI.COMM_WORLD
CAP = 20.0
"""The sleep cap during these tests: a missed wake-up would show as a grant this late."""
BOUND = 2.0


def wait_until_asleep(ctrl: mpilock.WindowController, seconds: float = 10.0) -> None:
    waker = ctrl._link_waker()  # type: ignore[attr-defined]
    deadline = time.monotonic() + seconds
    while not waker.asleep():
        assert time.monotonic() < deadline, "the idle server never went to sleep on its wake word"
        time.sleep(0.005)


def mates() -> list[bool]:
    """For every rank, whether it shares the master's (rank 0's) node as MPI sees it (``MPI_COMM_TYPE_SHARED``).

    Under ``MPIR_CVAR_NOLOCAL=1`` (CI's TCP part) MPICH puts every rank on a node
    of its own: then no rank can reach the master's words, as on a cluster.
    """
    node = COMM.Split_type(MPI.COMM_TYPE_SHARED)
    group, node_group = COMM.Get_group(), node.Get_group()
    try:
        mine = MPI.Group.Translate_ranks(group, [0], node_group)[0] != MPI.UNDEFINED
    finally:
        group.Free()
        node_group.Free()
        node.Free()
    return COMM.allgather(mine)


@mpi(min_ranks=2)
def test_a_request_to_a_sleeping_server_is_answered_well_before_its_sleep_cap(ctrl, mpi_ranks):
    here = mates()
    able = ctrl._link_waker() is not None
    if not SETTINGS.wake or NATIVE is None:
        assert not able  # the wake-up is off: no rank has a waker
        pytest.skip("the wake-up is off here (MPILOCK_WAKE=0 or no native module): the fallback tests cover it")
    assert able == here[ctrl.rank], "exactly the ranks of the server's node (itself included) get a waker"
    lockers = [rank for rank in range(1, COMM.size) if here[rank]]
    if not lockers:
        pytest.skip("no rank shares the server's node here (MPIR_CVAR_NOLOCAL=1): timed sleeps, as between nodes")
    wake.set_sleep_cap(CAP)
    try:
        for rank in lockers:
            COMM.barrier()
            if ctrl.rank == rank:
                for _ in range(3):
                    wait_until_asleep(ctrl)
                    start = time.monotonic()
                    with ctrl.write():
                        waited = time.monotonic() - start
                    assert waited < BOUND, f"rank {rank} waited {waited:.3f} s for a lock nobody held"
        COMM.barrier()
        if ctrl.rank == 0:
            sleeps, woken = NATIVE.wake_counts()
            assert woken >= 3 * len(lockers), (sleeps, woken)
    finally:
        wake.set_sleep_cap(SETTINGS.wake_sleep)


class Said(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@mpi()
@pytest.mark.mpi_isolated  # a process makes its wake word once: this one must not have one yet
def test_without_shared_memory_the_server_falls_back_to_timed_sleeps_and_says_so_once(mpi_ranks):
    said = Said()
    logging.getLogger("mpilock").addHandler(said)
    wake.PREFIX = "no/such-dir-"  # a real shm_open failure: a name may hold no second slash
    controllers = [mpilock.sync(), mpilock.sync()]
    try:
        for ctrl in controllers:
            assert ctrl._link_waker() is None
            for _ in range(3):
                for rank in range(COMM.size):
                    if rank == ctrl.rank:
                        time.sleep(0.02)  # the server idles past its hot window
                        start = time.monotonic()
                        with ctrl.write(timeout=10):
                            waited = time.monotonic() - start
                        # no wake-up: the idle cap (MPILOCK_NATIVE_IDLE_SLEEP) bounds the wait, not the 20 s one
                        assert waited < SETTINGS.native_idle_sleep + BOUND, waited
                    COMM.barrier()
    finally:
        for ctrl in controllers:
            ctrl.close()
        logging.getLogger("mpilock").removeHandler(said)
    fallback = [line for line in said.lines if "wake-up of the idle server off" in line]
    if COMM.rank == 0 and SETTINGS.wake and NATIVE is not None:
        assert len(fallback) == 1, said.lines  # once, though two controllers were made
        assert "no POSIX shared memory" in fallback[0], fallback
    if NATIVE is not None and SETTINGS.wake:
        assert NATIVE.wake_counts()[0] == 0  # never slept on a word it does not have


@mpi(min_ranks=2)
def test_a_waiting_client_sleeps_on_its_word_and_the_grant_wakes_it(ctrl, mpi_ranks, monkeypatch):
    # A client sleep of 20 s at a time: a grant that only a timed-out sleep noticed would come 20 s late.
    monkeypatch.setattr(wake, "CLIENT_SLEEP", CAP)
    here = mates()
    able = ctrl._link._sleeper is not None
    if not SETTINGS.wake or NATIVE is None:
        assert not able
        pytest.skip("the wake-up is off here: waiting clients poll with timed sleeps")
    assert able == (here[ctrl.rank] and ctrl.rank != 0), "the clients of the server's node, and only they, sleep"
    holder, waiter = 0, COMM.size - 1
    if not here[waiter]:
        pytest.skip("the waiting rank is not on the server's node here (MPIR_CVAR_NOLOCAL=1)")
    released = granted = 0.0
    cpu = 0.0
    if ctrl.rank == holder:
        with ctrl.write():
            COMM.barrier()
            time.sleep(1.0)  # the waiter is long past its spin, asleep on its word
            released = time.time()
    else:
        COMM.barrier()
        if ctrl.rank == waiter:
            start_cpu, start = time.process_time(), time.monotonic()
            with ctrl.write():
                granted = time.time()
            cpu = (time.process_time() - start_cpu) / (time.monotonic() - start)
    released = COMM.bcast(released, root=holder)
    granted, cpu = COMM.bcast((granted, cpu), root=waiter)
    assert granted - released < BOUND, f"granted {granted - released:.3f} s after the release"
    assert cpu < 0.2, f"the waiting rank used {cpu:.0%} of a core while it waited"  # a poller would use ~100 %
