"""Every way out of a program ends the job: exit statuses, MPI_Finalize without close(), bad settings.

Each test launches its own ``mpiexec`` (marker ``mpiexec``: ``make test-mpi``
runs them with the MPI under test) and asserts the job's exit status and that
it ended within a bound, not just that nothing raised.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import launch
import pytest

DEADLINE = float(os.environ.get("MPILOCK_EXIT_DEADLINE", "40"))
"""Seconds a job gets to end (they take 1-3 s here; a hang is what this catches)."""

pytestmark = [
    pytest.mark.mpiexec,
    pytest.mark.skipif(launch.INSIDE_MPI_JOB, reason="launches its own mpiexec"),
    pytest.mark.timeout(4 * DEADLINE + 60),
]


def run_job(tmp_path: Path, body: str, ranks: int = 3, runner: tuple[str, ...] = ("-m", "mpi4py"), env=None):
    """Run ``body`` on ``ranks`` ranks; return (exit status or None if it hung, seconds, output)."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(body))
    command = [*launch.mpiexec(), "-n", str(ranks), sys.executable, *runner, str(script)]
    start = time.monotonic()
    result = launch.run(command, DEADLINE, cwd=tmp_path, env=env)
    seconds = time.monotonic() - start
    if result is None:
        return None, seconds, ""
    return result.returncode, seconds, result.stdout + result.stderr


EXIT_WHILE_OTHERS_WAIT = {
    "barrier": """
        import sys, time
        from mpi4py import MPI
        import mpilock
        comm = MPI.COMM_WORLD
        c = mpilock.sync()
        if comm.rank == 1:
            time.sleep(0.3)
            sys.exit(3)
        comm.Barrier()
        c.close()
        """,
    "single_write": """
        import sys, time
        from mpi4py import MPI
        import mpilock
        comm = MPI.COMM_WORLD
        c = mpilock.sync()
        if comm.rank == 1:
            time.sleep(0.3)
            sys.exit(3)
        with c.single_write() as fence:
            fence.guard()
        c.close()
        """,
    "write lock held": """
        import sys, time
        from mpi4py import MPI
        import mpilock
        comm = MPI.COMM_WORLD
        c = mpilock.sync()
        if comm.rank == 1:
            with c.write():
                comm.Barrier()
                time.sleep(0.3)
                sys.exit(3)
        comm.Barrier()
        with c.write():
            pass
        c.close()
        """,
}


@pytest.mark.parametrize("where", sorted(EXIT_WHILE_OTHERS_WAIT))
def test_a_nonzero_exit_on_one_rank_ends_the_job(tmp_path, where):
    code, seconds, output = run_job(tmp_path, EXIT_WHILE_OTHERS_WAIT[where])
    report = f"{where}: exit {code} after {seconds:.1f} s\n{output[-3000:]}"
    assert code is not None, f"the job hung (killed after {DEADLINE:.0f} s)\n{report}"
    assert code != 0, report
    if launch.is_hydra():  # MPICH's mpiexec passes the abort status on; Open MPI's reports its own
        assert code == 3, report


@pytest.mark.parametrize("how", ["sys.exit(0)", "return"])
def test_a_zero_exit_without_close_still_closes_collectively(tmp_path, how):
    body = f"""
        import sys, time
        from mpi4py import MPI
        import mpilock
        comm = MPI.COMM_WORLD
        def main():
            c = mpilock.sync()
            for _ in range(20):
                with c.write("k"):
                    pass
            if comm.rank == 1:
                time.sleep(0.5)  # the others are in the atexit close meanwhile
            with open(f"done-{{comm.rank}}", "w"):
                pass
            {how}
        main()
        """
    code, seconds, output = run_job(tmp_path, body)
    assert code == 0, f"exit {code} after {seconds:.1f} s\n{output[-3000:]}"
    assert sorted(p.name for p in tmp_path.glob("done-*")) == ["done-0", "done-1", "done-2"]


@pytest.mark.parametrize("runner", [("-m", "mpi4py"), ()], ids=["python -m mpi4py", "plain python"])
def test_mpi_finalize_without_close_closes_every_controller(tmp_path, runner):
    body = """
        from mpi4py import MPI
        import mpilock
        comm = MPI.COMM_WORLD
        rank = comm.rank
        a, b = mpilock.sync(), mpilock.sync(master=comm.size - 1)
        for i in range(100):
            with a.write(), b.write(i % 3):
                pass
        MPI.Finalize()
        assert a.closed and b.closed
        try:
            with a.write():
                pass
        except mpilock.ClosedError:
            print(f"rank {rank}: closed after MPI_Finalize", flush=True)
        """
    assert_every_rank_closed_at_finalize(tmp_path, body, 3, runner)  # it used to hang or crash in 3 of 5 runs


def assert_every_rank_closed_at_finalize(tmp_path, body, attempts, runner=("-m", "mpi4py")):
    """Run ``body`` ``attempts`` times: each ends with 0 and all 3 ranks print that they found it closed."""
    for attempt in range(attempts):
        code, seconds, output = run_job(tmp_path, body, runner=runner)
        report = f"attempt {attempt}: exit {code} after {seconds:.1f} s\n{output[-3000:]}"
        assert code == 0, report
        assert output.count("closed after MPI_Finalize") == 3, report
        assert "after finalizing" not in output, report


def test_mpi_finalize_that_bypasses_mpi4py_still_closes_while_another_rank_locks(tmp_path):
    """``MPI_Finalize`` reached without mpilock's ``MPI.Finalize`` wrapper: the ``MPI_COMM_SELF`` callback closes.

    MPICH stops serializing the threads' MPI calls before that callback, so it
    stops the server threads and the closing thread serves this rank's
    channels itself: rank 0 still locks ``b``, served by rank 2, while rank 2
    is closing ``a``.  The pauses keep the server threads idle at the instant
    MPICH stops serializing (a thread inside an MPI call then is the caveat
    the README states).
    """
    body = """
        from mpi4py import MPI
        from mpi4py.MPI import Finalize  # bound before mpilock is imported: not its wrapper
        import time
        import mpilock
        comm = MPI.COMM_WORLD
        rank = comm.rank
        a, b = mpilock.sync(), mpilock.sync(master=comm.size - 1)
        assert Finalize is not MPI.Finalize  # the wrapper is in place, and bypassed
        for i in range(100):
            with a.write(), b.write(i % 3):
                pass
        time.sleep(0.3)
        if rank == 0:
            time.sleep(0.5)  # the others are in MPI_Finalize
            for i in range(50):
                with b.write(i % 3):
                    pass
            time.sleep(0.3)
        Finalize()
        assert a.closed and b.closed
        try:
            with b.write():
                pass
        except mpilock.ClosedError:
            print(f"rank {rank}: closed after MPI_Finalize", flush=True)
        """
    assert_every_rank_closed_at_finalize(tmp_path, body, 2)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("MPILOCK_MAX_SLEEP", "-1"), ("MPILOCK_SPIN", "abc"), ("MPILOCK_SPIN", "2ms"), ("MPILOCK_SITES", "maybe")],
)
def test_a_malformed_setting_is_named_with_its_form_on_every_rank(tmp_path, variable, value):
    body = """
        import mpilock
        mpilock.sync()
        """
    env = {variable: value}
    code, _, output = run_job(tmp_path, body, ranks=2, env=env)
    assert code is not None and code != 0, output
    assert output.count(f"{variable}={value!r} is not valid: expected") >= 1, output
    assert "ConfigError" in output, output
