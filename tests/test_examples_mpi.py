"""The examples, run for real under ``mpiexec``, and the trace they write drawn by ``python -m mpilock.plot``.

These are plain tests (no ``mpi`` marker): each one launches its own
``mpiexec -n N python -m mpi4py examples/X.py`` as a subprocess.
"""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import launch
import pytest

pytestmark = pytest.mark.skipif(launch.INSIDE_MPI_JOB, reason="launches its own mpiexec")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 120
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(command: list[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``command`` from the repository root; fail the test if it hangs."""
    result = launch.run(command, timeout, cwd=ROOT)
    if result is None:
        pytest.fail(f"{' '.join(command)} timed out after {timeout} s")
    return result


def run_example(name: str, ranks: int, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*launch.mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", str(EXAMPLES / name), *args]
    result = run(command)
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


EXPECTED = {
    "h5py_shared_file.py": (r"(\d+) rank\(s\) wrote 4 blocks each .* all \1 datasets: OK", "shared.h5"),
    "h5py_per_key.py": (
        r"(\d+) rank\(s\) appended 20 rows each to 5 files, .* at most [12] of \1 ranks .*: OK",
        "cat-0.h5",
    ),
    "seed_idiom.py": (r"(\d+) rank\(s\) read my_data and wrote datasets .*: OK", "hello.world.h5"),
    "lost_updates.py": (r"with write\(\):\s+count\s+(\d+), 0 update\(s\) lost .*: OK", "counter.json"),
    "results_table.py": (r"(\d+) rank\(s\) appended 12 rows each .* table has \d+ rows: OK", "results.sqlite"),
}


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_and_checks_itself(name, ranks, tmp_path):
    pattern, artefact = EXPECTED[name]
    result = run_example(name, ranks, str(tmp_path))
    match = re.search(pattern, result.stdout)
    assert match, result.stdout
    if name == "lost_updates.py":
        assert int(match.group(1)) == 50 * ranks
    else:
        assert int(match.group(1)) == ranks
    assert (tmp_path / artefact).exists()  # the example used the directory it was given
    assert "ERROR" not in result.stderr


def test_examples_default_to_a_temporary_directory():
    before = set(ROOT.iterdir())
    run_example("results_table.py", 2)
    assert set(ROOT.iterdir()) == before


def test_trace_of_a_real_run_is_valid_and_plots(tmp_path):
    trace = tmp_path / "trace.json"
    result = run_example("h5py_shared_file.py", 3, str(tmp_path), "--trace", str(trace))
    assert "wait p50" in result.stdout  # the stats() table
    document = json.loads(trace.read_text())
    assert document["displayTimeUnit"] == "ms"
    events = document["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {0: "rank 0", 1: "rank 1", 2: "rank 2"}
    spans = [e for e in events if e["ph"] == "X"]
    for span in spans:
        assert span["name"] in {"wait read", "wait write", "read", "write"}
        assert span["pid"] == 0 and span["tid"] in names
        assert span["ts"] >= 0 and span["dur"] >= 0
    for rank in range(3):
        mine = [s["name"] for s in spans if s["tid"] == rank]
        assert mine.count("read") == 5, mine  # 4 progress reads + the final read
        assert mine.count("write") == (5 if rank == 0 else 4), mine  # rank 0 also wrote the fence
    holds = [s for s in spans if s["name"] in ("read", "write")]
    for i, a in enumerate(holds):  # as the server saw it: a write never overlaps another hold
        for b in holds[i + 1 :]:
            if "write" in (a["name"], b["name"]):
                slack = 1e-3  # µs: end and next start come from one server timestamp, up to rounding
                assert a["ts"] + a["dur"] <= b["ts"] + slack or b["ts"] + b["dur"] <= a["ts"] + slack, (a, b)

    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed (the 'plot' extra)")
    png = tmp_path / "timeline.png"
    plotted = run([sys.executable, "-m", "mpilock.plot", str(trace), "-o", str(png)], timeout=TIMEOUT)
    assert plotted.returncode == 0, plotted.stderr
    assert "3 ranks" in plotted.stdout
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_plot_refuses_a_file_without_spans(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"traceEvents": []}))
    result = run([sys.executable, "-m", "mpilock.plot", str(empty), "-o", str(tmp_path / "x.png")], timeout=60)
    assert result.returncode == 1
    assert "no lock spans" in result.stderr
    assert not (tmp_path / "x.png").exists()
