"""A rank that dies while others wait for a lock must end the whole job, non-zero and in bounded time.

Each test launches its own ``mpiexec -n 3 python -m mpi4py SCRIPT`` (so these
tests carry the ``mpiexec`` marker, not ``mpi``: ``make test-mpi`` runs them with
the MPI implementation and transport under test) and fails if the job is still
running after ``DEADLINE`` seconds or exits 0.

* an uncaught exception: ``python -m mpi4py`` calls ``MPI_Abort`` at exit;
* ``os._exit(3)``: the process manager (MPICH's hydra, Open MPI's prterun)
  sees a rank exit without ``MPI_Finalize`` and kills the others;
* ``os._exit(0)``: the job ends too, but hydra may then report exit status 0.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import launch
import pytest

DEADLINE = float(os.environ.get("MPILOCK_DEAD_RANK_DEADLINE", "30"))
"""Seconds the job gets to notice the dead rank and end (it takes 1-3 s here)."""

pytestmark = [
    pytest.mark.mpiexec,
    pytest.mark.skipif(launch.INSIDE_MPI_JOB, reason="launches its own mpiexec"),
    pytest.mark.timeout(3 * DEADLINE + 60),  # the subprocess deadlines must fire first, with a useful report
]

PROLOGUE = """
import os, sys, time
from mpi4py import MPI
import mpilock

COMM = MPI.COMM_WORLD
HOW = sys.argv[1]
assert COMM.size == 3, COMM.size
ctrl = mpilock.sync()


def mark(event):
    # Evidence in a file: the launcher may drop the output of a job it kills.
    with open(f"{event}-{COMM.rank}", "w") as f:
        f.flush()
        os.fsync(f.fileno())
    print(f"rank {COMM.rank}: {event}", flush=True)


def die():
    mark("dies")
    if HOW == "raise":
        raise RuntimeError(f"rank {COMM.rank} dies")
    os._exit(3 if HOW == "exit3" else 0)

"""

SCENARIOS = {
    # Rank 1 dies inside its write block; ranks 0 (the server's rank) and 2 queue for the lock.
    "holder": """
        if COMM.rank == 1:
            with ctrl.write():
                COMM.barrier()
                time.sleep(0.5)
                die()
        else:
            COMM.barrier()
            with ctrl.write():
                mark("got-the-lock-after-the-holder-died")
        """,
    # Rank 0 holds the write lock waiting for a message from rank 2, rank 1 queues; rank 2 dies.
    "bystander": """
        if COMM.rank == 0:
            with ctrl.write():
                COMM.barrier()
                COMM.recv(source=2)
        elif COMM.rank == 1:
            COMM.barrier()
            with ctrl.write():
                pass
        else:
            COMM.barrier()
            time.sleep(0.5)
            die()
        """,
    # Rank 1 holds the write lock waiting for rank 0, rank 2 queues; rank 0 (the lock server) dies.
    "server": """
        if COMM.rank == 1:
            with ctrl.write():
                COMM.barrier()
                COMM.recv(source=0)
        elif COMM.rank == 2:
            COMM.barrier()
            with ctrl.write():
                pass
        else:
            COMM.barrier()
            time.sleep(0.5)
            die()
        """,
}
DYING_RANK = {"holder": 1, "bystander": 2, "server": 0}
EPILOGUE = """
mark("reached-the-end")
ctrl.close()
"""


def launch_job(script: Path, how: str) -> tuple[int | None, float, str]:
    """Run the script on 3 ranks; return (exit code or None if it hung, seconds, output)."""
    start = time.monotonic()
    command = [*launch.mpiexec(), "-n", "3", sys.executable, "-m", "mpi4py", str(script), how]
    result = launch.run(command, DEADLINE, cwd=script.parent)
    if result is None:
        return None, time.monotonic() - start, ""
    return result.returncode, time.monotonic() - start, result.stdout + result.stderr


HYDRA_ATTEMPTS = 3
"""Launches allowed for a rank killed by ``os._exit`` under MPICH's hydra.

hydra sometimes misses such a death (about 1 run in 20 here): its proxy reaps
the dead process before it handles the closed PMI socket, and then does not
kill the other ranks (a race in the launcher; compare pmodels/mpich#7057).
mpilock cannot see a rank that vanished without a word, so for this case only
a hang is retried, and the test still fails if every attempt hangs.
"""


def launch_dying(script: Path, how: str) -> tuple[int | None, float, str]:
    """:func:`launch_job`, retried after a hang only where hydra's race explains it."""
    attempts = HYDRA_ATTEMPTS if how != "raise" and launch.is_hydra() else 1
    for _ in range(attempts):
        for old in script.parent.iterdir():  # events of a hung attempt
            if old != script:
                old.unlink()
        code, seconds, output = launch_job(script, how)
        if code is not None:
            break
    return code, seconds, output


def marks(folder: Path) -> set[str]:
    """The events the ranks recorded, as "event-rank" file names."""
    return {p.name for p in folder.iterdir() if not p.name.endswith(".py")}


def write_script(tmp_path: Path, scenario: str) -> Path:
    script = tmp_path / f"{scenario}.py"
    script.write_text(PROLOGUE + textwrap.dedent(SCENARIOS[scenario]) + EPILOGUE)
    return script


@pytest.mark.parametrize("how", ["raise", "exit3"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_dead_rank_ends_the_job(tmp_path, scenario, how):
    code, seconds, output = launch_dying(write_script(tmp_path, scenario), how)
    report = f"{scenario}/{how}: exit {code} after {seconds:.1f} s\n{output[-4000:]}"
    assert code is not None, f"the job hung: killed after {DEADLINE:.0f} s\n{report}"
    assert code != 0, report
    seen = marks(tmp_path)
    report += f"\nevents: {sorted(seen)}"
    assert f"dies-{DYING_RANK[scenario]}" in seen, report
    # (The dying rank's traceback is not checked: hydra may drop its last stderr when it aborts the job.)
    if how != "raise":
        # The lock is never released, so nobody may get past it; an exception, by contrast,
        # leaves the with-block and releases the lock before mpi4py aborts.
        assert not any(e.startswith(("got-the-lock", "reached-the-end")) for e in seen), report


def test_a_rank_that_exits_zero_without_finalize_ends_the_job(tmp_path):
    # The job ends, but its exit status is not reliable: MPICH's hydra reports 0 or 9
    # depending on which of its two ways of noticing the death wins; prterun reports 1.
    code, seconds, output = launch_dying(write_script(tmp_path, "holder"), "exit0")
    report = f"holder/exit0: exit {code} after {seconds:.1f} s\n{output[-4000:]}"
    assert code is not None, f"the job hung: killed after {DEADLINE:.0f} s\n{report}"
    seen = marks(tmp_path)
    assert "dies-1" in seen, f"{report}\nevents: {sorted(seen)}"
    assert not any(e.startswith("got-the-lock") for e in seen), f"{report}\nevents: {sorted(seen)}"
