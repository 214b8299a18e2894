"""The README's example, run as written under ``mpiexec`` (a plain test: it launches its own job)."""

import re
import sys
from pathlib import Path

import h5py
import launch
import pytest

pytestmark = pytest.mark.skipif(launch.INSIDE_MPI_JOB, reason="launches its own mpiexec")

README = Path(__file__).resolve().parent.parent / "README.md"
TIMEOUT = 120


def readme_example() -> str:
    """The first Python block after the README's "An example" heading."""
    text = README.read_text()
    section = text[text.index("\n## An example\n") :]
    match = re.search(r"^```python\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert match, "the README's example section has no Python block"
    return match.group(1)


@pytest.mark.parametrize("ranks", [2, 3])
def test_the_readme_example_runs_as_written(ranks, tmp_path):
    (tmp_path / "example.py").write_text(readme_example())
    command = [*launch.mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", "example.py"]
    # Unbuffered: a rank's print still in its buffer when MPI finalizes can be lost on the way out.
    result = launch.run(command, TIMEOUT, cwd=tmp_path, env={"PYTHONUNBUFFERED": "1"})
    if result is None:
        pytest.fail(f"the README's example timed out after {TIMEOUT} s at {ranks} ranks")
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    # Every rank read the file. The ranks' lines can interleave (print writes each argument on its own).
    assert result.stdout.count("sees") == ranks, result.stdout
    with h5py.File(tmp_path / "out.h5", "r") as f:  # every rank wrote its part under the named lock
        assert sorted(f["parts"]) == sorted(str(rank) for rank in range(ranks))
