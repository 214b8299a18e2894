"""An exception that leaves a waiting acquire withdraws the request: no grant is ever leaked.

The exception comes from a signal handler (``signal.setitimer`` with a
handler that raises), as a caught ``KeyboardInterrupt`` or pytest-timeout's
signal method would deliver it, while the rank waits for a lock another rank
holds.  Arguments are checked before anything is sent, so a bad one leaves
nothing on the server either.
"""

import contextlib
import math
import signal
import time
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from mpi4py import MPI
from mpitools import mpi

import mpilock
from mpilock import storm

COMM = MPI.COMM_WORLD

ISOLATED = pytest.mark.mpi_isolated
"""For the tests whose signal handlers strike inside the library: each gets an mpiexec job of its own.

An exception raised at an arbitrary instruction of the client can leave the
process in a state a later test would inherit (under Open MPI a test run after
them in the same job once hung); tests/batch.py gives these a fresh job."""


class Interrupted(Exception):
    pass


def interrupt_after(seconds, error=Interrupted, armed=None):
    """Raise ``error`` from a SIGALRM handler ``seconds`` from now (in this, the main thread).

    Call it inside the ``try`` that catches ``error``: on a loaded machine the
    alarm can go off before this returns.  Returns ``armed`` (made here unless
    given): set ``armed[0] = False`` (a store, during which no handler runs)
    and a late alarm raises nothing.
    """
    armed = [True] if armed is None else armed

    def handler(signum, frame):
        if armed[0]:
            raise error("interrupted by a signal")

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    return armed


def lock_still_works(ctrl, *keys):
    """Every rank takes the write lock once; a leaked grant makes this time out."""
    COMM.barrier()
    with ctrl.write(*keys, timeout=20):
        pass
    with ctrl.read(*keys, timeout=20):
        pass


@pytest.mark.parametrize(
    ("kind", "error"),
    [("write", Interrupted), ("write", KeyboardInterrupt), ("read", KeyboardInterrupt), ("multi", Interrupted)],
)
@mpi(min_ranks=2)
@ISOLATED
def test_an_exception_during_the_wait_withdraws_the_request(ctrl, mpi_ranks, kind, error):
    keys = ("a", "b") if kind == "multi" else ()
    holder = COMM.size - 1
    if ctrl.rank == holder:
        with ctrl.write(*keys):
            COMM.barrier()  # the others start waiting now
            COMM.barrier()  # every other rank has been interrupted
            time.sleep(0.1)  # released afterwards: a request that was not withdrawn would be granted now
    else:
        COMM.barrier()
        lock = ctrl.read(*keys) if kind == "read" else ctrl.write(*keys)
        try:
            with pytest.raises(error):
                interrupt_after(0.3, error)
                with lock:
                    pytest.fail("granted while another rank held the write lock")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        COMM.barrier()
    table = ctrl.locks(*keys)
    COMM.barrier()
    lock_still_works(ctrl, *keys)
    if ctrl.rank != holder:  # nobody but the holder was ever queued or granted after the interrupt
        for entry in table:
            assert all(h["rank"] == holder for h in entry["holders"]), table
            assert all(w["rank"] == holder for w in entry["waiters"]), table


@mpi(min_ranks=2)
@ISOLATED
def test_an_exception_while_the_grant_races_it_hands_the_lock_back(ctrl, mpi_ranks):
    # Interrupt just as the holder releases, many times: sometimes the grant is already on its way, and
    # sometimes the alarm strikes after the grant, in the block or in the release.
    holder = COMM.size - 1
    for attempt in range(20):
        if ctrl.rank == holder:
            with ctrl.write("k"):
                COMM.barrier()
                time.sleep(0.002 * (attempt % 5))
        else:
            COMM.barrier()
            armed = [True]
            try:
                try:
                    interrupt_after(0.001 + 0.0005 * (attempt % 7), armed=armed)  # it may strike at once
                    with ctrl.write("k"):
                        time.sleep(0.0005)
                finally:
                    armed[0] = False
            except Interrupted:
                pass
            signal.setitimer(signal.ITIMER_REAL, 0)
        COMM.barrier()
    lock_still_works(ctrl, "k")
    ctrl.locks("x")  # a round trip: the server has this rank's last release (it gets no reply) before it answers
    COMM.barrier()
    assert ctrl.locks() == []  # no grant was left behind


@mpi()
def test_timeouts_are_checked_before_anything_is_sent(ctrl, mpi_ranks):
    with pytest.raises(ValueError, match="NaN"):
        ctrl.write(timeout=math.nan)
    for bad in ("0.5", b"1", True, object()):
        with pytest.raises(TypeError, match="timeout"):
            ctrl.read(timeout=bad)
    # every real number works: Decimal, Fraction, NumPy; huge means forever, negative means try
    for rank in range(COMM.size):  # one rank at a time, so that even a try succeeds
        if rank == ctrl.rank:
            for timeout in (Decimal("0.5"), Fraction(1, 2), np.float32(0.5), np.int64(1), 10**400, -1, math.inf):
                with ctrl.write(timeout=timeout), ctrl.write("x", timeout=timeout):
                    pass
        COMM.barrier()
    # A release gets no reply: a round trip of each rank's own first makes sure the server has them all
    # (it serves each rank's requests in order), then nothing may be left queued or held.
    ctrl.locks("x")
    COMM.barrier()
    assert ctrl.locks() == []
    COMM.barrier()
    lock_still_works(ctrl)


@mpi(min_ranks=2)
def test_a_try_to_promote_never_blocks_and_keeps_the_read(ctrl, mpi_ranks):
    if ctrl.rank == 0:
        with ctrl.read():
            COMM.barrier()  # rank 1 reads too
            COMM.barrier()
            with pytest.raises(mpilock.LockTimeout):
                with ctrl.write(timeout=0):  # another reader holds the lock: denied at once
                    pass
            table = ctrl.locks()
            COMM.barrier()
    elif ctrl.rank == 1:
        with ctrl.read():
            COMM.barrier()
            COMM.barrier()
            COMM.barrier()
    else:
        COMM.barrier()
        COMM.barrier()
        COMM.barrier()
    table = COMM.bcast(table if ctrl.rank == 0 else None)
    holders = {(h["rank"], h["mode"]) for entry in table for h in entry["holders"]}
    assert holders == {(0, "read"), (1, "read")}, table  # the read stayed held, nobody got the write


@mpi()
def test_a_sole_reader_promotes_in_place(ctrl, mpi_ranks):
    if ctrl.rank == 0:
        with ctrl.read():
            with ctrl.write(timeout=0):  # the only reader: the read becomes the write at once
                assert [h["mode"] for e in ctrl.locks() for h in e["holders"]] == ["write"]
            assert [h["mode"] for e in ctrl.locks() for h in e["holders"]] == ["read"]
    COMM.barrier()
    lock_still_works(ctrl)


@pytest.mark.parametrize("what", ["collect", "locks"])
@mpi(max_ranks=3)
@ISOLATED
def test_an_exception_as_a_reply_arrives_leaves_nothing_of_it_on_the_wire(ctrl, mpi_ranks, what, monkeypatch):
    # The exception lands just as the reply's header is in and its payload is still to come (the receive tested
    # true, nothing taken yet). The call takes the rest before the exception goes on: a payload left unreceived
    # stalls the rank's other traffic over MPICH's TCP transport (a Barrier after a caught Ctrl-C hangs there).
    keys = [f"key-{i}" for i in range(2000)]  # a lock table of ~100 kB
    if what == "collect":
        fence, shared = storm.share(ctrl)  # 1 MiB, as frames
        call = fence.collect
        asks = not fence.access  # the writer's collect() asks nothing: it kept what it shared
    else:
        call, asks = ctrl.locks, True
    holding = ctrl.write(*keys) if what == "locks" and ctrl.rank == 0 else contextlib.nullcontext()
    link = ctrl._link
    take = link._take
    cut = [False]

    def cut_as_it_arrives():
        if cut[0]:
            cut[0] = False
            raise KeyboardInterrupt
        return take()

    monkeypatch.setattr(link, "_take", cut_as_it_arrives)
    with holding:
        COMM.barrier()
        if asks:
            cut[0] = True
            with pytest.raises(KeyboardInterrupt):
                call()
            assert not cut[0], "the reply never arrived"
            assert not link.comm.Iprobe(link.master), "part of the reply was left unreceived"
            assert link._rx is None and not link._started
            again = call()  # the next call gets its own reply, whole
            if what == "collect":
                assert again == shared
            else:
                assert {e["key"] for e in again} == {repr(k) for k in keys}, again
                assert all(h["rank"] == 0 for e in again for h in e["holders"]), again
        COMM.barrier()
    ctrl.locks("x")  # a round trip: the server has this rank's release (it gets no reply) before it answers
    COMM.barrier()
    assert ctrl.locks() == []
