"""The batching plugin (tests/batch.py) keeps what one job per test gave: failures and hangs are caught.

Runs pytest on tests/batch_sample/ (four steps at 2 ranks) and checks from the
outcome and from the steps' own log (step, rank, pid) that the steps shared one
job, that a failing or hanging step fails alone and fast, and that the steps
after it still ran, each in a job of its own.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import launch
import pytest

TESTS = Path(__file__).parent

pytestmark = [pytest.mark.mpiexec, pytest.mark.skipif(launch.INSIDE_MPI_JOB, reason="launches its own mpiexec")]


def run_sample(tmp_path: Path, scenario: str, timeout: float = 60) -> tuple[int, str, dict[int, set[int]], float]:
    """Run the sample at 2 ranks; return (pytest's exit status, its output, pids per step, seconds)."""
    shutil.copy(TESTS / "batch_sample" / "test_sample_mpi.py", tmp_path)
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nfrom batch import pytest_configure  # noqa: F401\n"
    )
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nmpi_executable = mpiexec\n"
        + ("mpi_command_line_args = --oversubscribe\n" if not launch.is_hydra() else "")
    )
    log = tmp_path / "steps.log"
    start = time.monotonic()
    result = launch.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "test_sample_mpi.py"],
        timeout=240,
        cwd=tmp_path,
        env={
            "MPILOCK_BATCH_SAMPLE": scenario,
            "MPILOCK_BATCH_SAMPLE_LOG": str(log),
            "MPILOCK_BATCH_SAMPLE_TIMEOUT": str(timeout),
            "MPILOCK_TEST_RANKS": "2",
        },
    )
    seconds = time.monotonic() - start
    assert result is not None, "the outer pytest itself hung"
    pids: dict[int, set[int]] = {}
    for line in log.read_text().split("\n") if log.exists() else []:
        if line:
            step, _rank, pid = map(int, line.split())
            pids.setdefault(step, set()).add(pid)
    return result.returncode, result.stdout + result.stderr, pids, seconds


def test_passing_steps_share_one_job(tmp_path):
    status, output, pids, _ = run_sample(tmp_path, "pass")
    assert status == 0, output
    assert "8 passed" in output, output  # 4 steps x 2 ranks
    assert pids[0] == pids[1] == pids[2] == pids[3] and len(pids[0]) == 2, pids


@pytest.mark.parametrize("scenario", ["one-rank-fails", "fails-while-others-wait"])
def test_a_failure_on_one_rank_fails_that_step_fast_and_the_rest_still_run(tmp_path, scenario):
    status, output, pids, seconds = run_sample(tmp_path, scenario)
    assert status == 1, output
    assert "FAILED test_sample_mpi.py::test_step[2-1]" in output, output
    for step in (0, 2, 3):
        assert f"PASSED test_sample_mpi.py::test_step[2-{step}]" in output, output
    assert pids[0] == pids[1], pids  # step 1 failed inside the shared job
    assert not pids[2] & pids[1] and not pids[3] & pids[2], pids  # later steps ran in jobs of their own
    assert seconds < 50, f"{seconds:.0f} s: the failing step was waited out instead of caught"


def test_a_hanging_step_times_out_and_the_rest_still_run(tmp_path):
    status, output, pids, seconds = run_sample(tmp_path, "hangs", timeout=5)
    assert status == 1, output
    assert "Timeout: test_sample_mpi.py::test_step[2-1] ran past its limit of 5 s" in output, output
    for step in (0, 2, 3):
        assert f"PASSED test_sample_mpi.py::test_step[2-{step}]" in output, output
    assert pids[0] == pids[1] and not pids[2] & pids[1], pids  # the hung job was killed; step 2 ran anew
    assert seconds < 60, seconds
