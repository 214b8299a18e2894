"""Sample MPI tests for tests/test_batch.py: one job runs them; failures and hangs must be caught.

Not collected by the suite itself (tests/conftest.py ignores this folder); test_batch.py runs
pytest on it.  Which scenario runs is chosen by MPILOCK_BATCH_SAMPLE.
"""

import os
import time

import pytest
from mpi4py import MPI

COMM = MPI.COMM_WORLD
SCENARIO = os.environ.get("MPILOCK_BATCH_SAMPLE", "pass")
RANKS = [int(n) for n in os.environ.get("MPILOCK_TEST_RANKS", "2").split()]


@pytest.mark.mpi(ranks=RANKS, timeout=float(os.environ.get("MPILOCK_BATCH_SAMPLE_TIMEOUT", "60")))
@pytest.mark.parametrize("step", range(4))
def test_step(mpi_ranks, step):
    assert COMM.size == mpi_ranks
    with open(os.environ["MPILOCK_BATCH_SAMPLE_LOG"], "a") as log:
        log.write(f"{step} {COMM.rank} {os.getpid()}\n")
    if step == 1 and SCENARIO == "one-rank-fails" and COMM.rank == COMM.size - 1:
        raise AssertionError("rank fails alone")
    if step == 1 and SCENARIO == "fails-while-others-wait":
        if COMM.rank == 0:
            raise AssertionError("rank 0 fails before the barrier")
        COMM.barrier()  # the others wait here for rank 0 forever
    if step == 1 and SCENARIO == "hangs" and COMM.rank == 0:
        time.sleep(3600)
    COMM.barrier()
