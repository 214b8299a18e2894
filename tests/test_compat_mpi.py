"""Code written for mpilock 1.x/2.x runs unchanged: tests/compat, in that project's test style, at 1 and 4 ranks.

tests/compat holds unittest classes written the way mpilock 1.x/2.x's own
tests are (``sync()`` in ``setUp``, ``ctrl._comm.Barrier()`` after
``close()``); that project ran them serially and with ``mpiexec -n 4 python
-m unittest discover -s tests``, and so does this test, each under a timeout.
pytest does not collect tests/compat itself (see conftest.py).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import launch
import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 240
DISCOVER = [sys.executable, "-m", "unittest", "discover", "-v", "-s", str(ROOT / "tests" / "compat")]

pytestmark = [
    pytest.mark.mpiexec,
    pytest.mark.skipif(launch.INSIDE_MPI_JOB, reason="launches its own mpiexec"),
    pytest.mark.timeout(TIMEOUT + 60),  # the subprocess timeout fires first, with a useful report
]


@pytest.mark.parametrize("ranks", [1, 4])
def test_unittest_discover_of_the_compat_suite(ranks, tmp_path):
    # One rank as 1.x's CI ran it: plain python, no mpiexec (MPI's singleton init).
    command = DISCOVER if ranks == 1 else [*launch.mpiexec(), "-n", str(ranks), *DISCOVER]
    result = launch.run(command, TIMEOUT, cwd=tmp_path)
    assert result is not None, f"{' '.join(command)} hung for {TIMEOUT} s"
    report = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, report
    ran = [int(n) for n in re.findall(r"^Ran (\d+) tests? in ", result.stderr, re.MULTILINE)]
    verdicts = re.findall(r"^(OK|FAILED)\b.*$", result.stderr, re.MULTILINE)
    assert len(ran) == ranks and len(set(ran)) == 1 and ran[0] >= 30, report  # every rank ran the whole suite
    assert verdicts == ["OK"] * ranks, report
    skipped = len(re.findall(r" \.\.\. skipped ", result.stderr))
    assert skipped == 0 if ranks > 1 else skipped < ran[0], report  # only multi-rank tests skip, at 1 rank
