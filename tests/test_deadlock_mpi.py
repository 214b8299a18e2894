"""Deadlock detection with real MPI processes: cycles of waits end in DeadlockError on one rank, never a hang.

Ranks interleave in a known order through handshakes: a message, or
``wait_until_queued`` (polling ``ctrl.locks()`` until a rank is queued), never
a sleep.  The request that closes a cycle is refused, so the victim is known.
Acquire sites are checked against the lines marked ``# site: NAME`` here.
"""

import random
from contextlib import ExitStack

from mpi4py import MPI
from mpitools import KeyedIntervals, mpi, overlaps, site, wait_until_queued

import mpilock

COMM = MPI.COMM_WORLD


def finish_normally(ctrl, *keys):
    """Every rank takes ``keys`` once more; a leaked lock or a hang fails (timeout), then nothing is in use."""
    COMM.barrier()
    with ctrl.write(*keys, timeout=20):
        pass
    COMM.barrier()
    assert ctrl.locks() == []


def victims(outcome):
    """The ranks whose outcome was a DeadlockError message."""
    return [rank for rank, text in enumerate(COMM.allgather(outcome)) if text.startswith("deadlock")]


@mpi(min_ranks=2)
def test_ab_ba_cycle_refuses_the_request_that_closes_it(ctrl, mpi_ranks):
    outcome = ""
    held_then: list = []
    if ctrl.rank == 0:
        with ctrl.write("a"):  # site: 0 holds a
            COMM.recv(source=1, tag=1)  # rank 1 holds b
            with ctrl.write("b"):  # site: 0 waits for b
                outcome = "got b"
    elif ctrl.rank == 1:
        with ctrl.write("b"):  # site: 1 holds b
            COMM.send(None, dest=0, tag=1)
            wait_until_queued(ctrl, "'b'", 0)
            try:
                with ctrl.write("a"):  # site: 1 waits for a
                    outcome = "got a"
            except mpilock.DeadlockError as err:
                outcome = str(err)
                held_then = ctrl.locks("a", "b")
    assert victims(outcome) == [1]  # exactly one rank: the one whose request closed the cycle
    if ctrl.rank == 0:
        assert outcome == "got b"  # the victim released b, rank 0 went on
    if ctrl.rank == 1:
        for name in ("rank 0", "rank 1", "'a'", "'b'"):
            assert name in outcome, name
        for marker in ("0 holds a", "1 holds b", "0 waits for b", "1 waits for a"):
            assert site(__file__, marker) + ")" in outcome, (marker, outcome)
        # It holds nothing new: 'a' is still rank 0's alone, and nobody else waits for it.
        table = {e["key"]: e for e in held_then}
        assert [(h["rank"], h["mode"]) for h in table["'a'"]["holders"]] == [(0, "write")]
        assert table["'a'"]["waiters"] == []
        assert [h["rank"] for h in table["'b'"]["holders"]] == [1]
    finish_normally(ctrl, "a", "b")


def two_rank_cycle(ctrl, hold0, want0, hold1, want1, name1):
    """Rank 0 holds ``hold0()`` then waits for ``want0()``; rank 1 holds ``hold1()``, then asks for ``want1()``.

    Rank 1 asks once rank 0 is queued for the lock named ``name1``; returns this rank's outcome.
    """
    outcome = ""
    if ctrl.rank == 0:
        with hold0():
            COMM.barrier()
            with want0():
                outcome = "granted"
    elif ctrl.rank == 1:
        with hold1():
            COMM.barrier()
            wait_until_queued(ctrl, name1, 0)
            try:
                with want1():
                    outcome = "granted"
            except mpilock.DeadlockError as err:
                outcome = str(err)
    else:
        COMM.barrier()
    assert victims(outcome) == [1]
    if ctrl.rank == 0:
        assert outcome == "granted"
    return outcome


@mpi(min_ranks=2)
def test_cycles_through_the_default_lock_a_bounded_key_and_readers(ctrl, mpi_ranks):
    outcome = two_rank_cycle(
        ctrl,
        lambda: ctrl.write(),
        lambda: ctrl.bounded("slots", 1),
        lambda: ctrl.bounded("slots", 1),
        lambda: ctrl.read(),
        "bounded 'slots'",
    )
    if ctrl.rank == 1:
        assert "rank 0 holds write the default lock" in outcome, outcome
        assert "rank 1 holds slot bounded 'slots'" in outcome, outcome
    outcome = two_rank_cycle(
        ctrl,
        lambda: ctrl.read("r"),
        lambda: ctrl.write("q"),
        lambda: ctrl.read("q"),
        lambda: ctrl.write("r"),
        "'q'",
    )
    if ctrl.rank == 1:
        assert "rank 0 holds read 'r'" in outcome and "rank 1 holds read 'q'" in outcome, outcome
    finish_normally(ctrl, "r", "q")


@mpi(min_ranks=3)
def test_three_rank_cycle(ctrl, mpi_ranks):
    rank = ctrl.rank
    outcome = ""
    if rank < 3:
        mine, wanted = f"k{rank}", f"k{(rank + 1) % 3}"
        with ctrl.write(mine):
            COMM.barrier()  # every rank holds its key
            if rank > 0:
                wait_until_queued(ctrl, f"'{mine}'", rank - 1)  # rank 0 asks first, then 1, then 2
            try:
                with ctrl.write(wanted):
                    outcome = f"got {wanted}"
            except mpilock.DeadlockError as err:
                outcome = str(err)
    else:
        COMM.barrier()
    assert victims(outcome) == [2]
    if rank in (0, 1):
        assert outcome == f"got k{rank + 1}"  # the cycle unwound: 1 after the victim, then 0
    if rank == 2:
        assert all(name in outcome for name in ("rank 0", "rank 1", "rank 2", "'k0'", "'k1'", "'k2'")), outcome
        assert outcome.count("holds write") == 3 and outcome.count("waits for write") == 3
    finish_normally(ctrl, "k0", "k1", "k2")


@mpi(min_ranks=2)
def test_cycle_across_two_controllers_of_one_master(ctrl, mpi_ranks):
    other = mpilock.sync()
    outcome = ""
    if ctrl.rank == 0:
        with ctrl.write("x"):
            COMM.recv(source=1, tag=1)
            with other.write("x"):  # the same name, another controller: another lock
                outcome = "got other x"
    elif ctrl.rank == 1:
        with other.write("x"):
            COMM.send(None, dest=0, tag=1)
            wait_until_queued(other, "'x'", 0)
            try:
                with ctrl.write("x"):
                    outcome = "got x"
            except mpilock.DeadlockError as err:
                outcome = str(err)
    assert victims(outcome) == [1]
    if ctrl.rank == 1:
        assert f"controller #{ctrl._serial}" in outcome and f"controller #{other._serial}" in outcome, outcome
        assert "rank 0" in outcome and "rank 1" in outcome
    COMM.barrier()
    with ctrl.write("x", timeout=20), other.write("x", timeout=20):
        pass
    other.close()


@mpi()
def test_multi_key_writes_in_random_order_never_deadlock(ctrl, mpi_ranks):
    rng = random.Random(ctrl.rank)
    spans = KeyedIntervals()
    keys = ["a", "b", "c"]
    for _ in range(30):
        chosen = rng.sample(keys, rng.choice([2, 3]))  # in random order: the server takes them all at once
        with ExitStack() as stack:
            stack.enter_context(ctrl.write(*chosen))  # a DeadlockError here fails the test
            for key in chosen:
                stack.enter_context(spans.hold(key, "write", 0.0002))
    for key, key_spans in spans.gather(COMM).items():
        assert overlaps(key_spans) == [], key
    assert ctrl.stats()["ranks"][ctrl.rank]["writes"] == 30
