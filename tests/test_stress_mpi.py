"""The short versions of the randomized stress runs (``make stress`` runs the long ones)."""

from mpi4py import MPI
from mpitools import mpi, overlaps
from stress import run


def test_sweep_finds_overlaps():
    assert overlaps([(0, "write", 0.0, 2.0), (1, "read", 1.0, 3.0)])
    assert overlaps([(0, "read", 0.0, 2.0), (1, "write", 1.0, 3.0)])
    assert overlaps([(0, "write", 0.0, 10.0), (2, "read", 1.0, 2.0), (1, "read", 3.0, 4.0)])
    assert not overlaps([(0, "read", 0.0, 2.0), (1, "read", 1.0, 3.0), (0, "write", 3.5, 4.0)])
    assert not overlaps([(0, "write", 0.0, 2.0), (0, "read", 1.0, 3.0)])  # same rank


@mpi(min_ranks=2)
def test_random_operations_never_overlap(mpi_ranks):
    figures = run(300 * MPI.COMM_WORLD.size, seed=mpi_ranks)
    assert figures["ops"] >= 300 * MPI.COMM_WORLD.size
    assert figures["spans"] > 0
    assert figures["violations"] == 0


@mpi(min_ranks=2)
def test_random_nested_keys_never_overlap_and_every_deadlock_is_broken(mpi_ranks):
    figures = run(300 * MPI.COMM_WORLD.size, seed=mpi_ranks, keyed=True)
    assert figures["ops"] >= 300 * MPI.COMM_WORLD.size
    assert figures["spans"] > 0
    assert figures["violations"] == 0
    assert figures["stuck"] == 0  # every step got its locks within 100 attempts
    assert figures["locks_left"] == 0


@mpi()
def test_random_nested_keys_over_threads_never_overlap_and_every_deadlock_is_broken(mpi_ranks):
    # 3 threads per rank, each a holder: the same checks, with threads of one rank colliding too.
    figures = run(240 * MPI.COMM_WORLD.size, seed=mpi_ranks, keyed=True, threads=3)
    assert figures["threads"] == 3
    assert figures["ops"] >= 240 * MPI.COMM_WORLD.size
    assert figures["spans"] > 0
    assert figures["violations"] == 0
    assert figures["stuck"] == 0
    assert figures["locks_left"] == 0


@mpi(min_ranks=2)
def test_random_default_lock_operations_over_threads_never_overlap(mpi_ranks):
    figures = run(200 * MPI.COMM_WORLD.size, seed=mpi_ranks, threads=3)
    assert figures["violations"] == 0 and figures["locks_left"] == 0 and figures["spans"] > 0
