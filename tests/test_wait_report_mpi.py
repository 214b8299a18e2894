"""Long-wait reports, in a job of its own: ``MPILOCK_WAIT_REPORT`` is read when mpilock is imported.

The test launches ``mpiexec -n 2`` with a low threshold.  Rank 1 waits once
briefly (rank 0 lets go as soon as it sees rank 1 queued: no report) and once
long: rank 0 holds the lock until rank 1 has logged three reports, which a
logging handler on rank 1 tells rank 0 by message.  So the number of reports
is known without any timing; their spacing is checked from the waits they
state, which can only be later than due, never earlier.
"""

import re
import sys
import textwrap
from pathlib import Path

import launch
import pytest

pytestmark = [pytest.mark.mpiexec, pytest.mark.skipif(launch.INSIDE_MPI_JOB, reason="launches its own mpiexec")]

THRESHOLD = 0.3
REPORTS = 3

JOB = """
import logging, sys, time
from mpi4py import MPI
import mpilock

COMM = MPI.COMM_WORLD
REPORTS = {reports}


class Tell(logging.Handler):
    # Tells rank 0 that this rank logged a report, so that it holds the lock until the last one.
    def emit(self, record):
        COMM.send(record.getMessage().startswith(f"rank {{COMM.rank}} has waited"), dest=0, tag=9)


logging.basicConfig(stream=sys.stderr, format=f"REPORT from rank {{COMM.rank}}: %(levelname)s %(name)s %(message)s")
if COMM.rank == 1:
    logging.getLogger("mpilock").addHandler(Tell())
ctrl = mpilock.sync()


def wait_until_queued(name):
    while not any(w["rank"] == 1 for e in ctrl.locks() if e["key"] == name for w in e["waiters"]):
        time.sleep(0.001)


if ctrl.rank == 0:
    with ctrl.write("quick"):
        COMM.barrier()
        wait_until_queued("'quick'")  # rank 1 waits only as long as this takes
    with ctrl.write("slow"):  # site: holder
        COMM.barrier()
        wait_until_queued("'slow'")
        assert all(COMM.recv(source=1, tag=9) for _ in range(REPORTS))
elif ctrl.rank == 1:
    COMM.barrier()
    with ctrl.write("quick"):
        print("got quick", flush=True)
    COMM.barrier()
    with ctrl.write("slow"):  # site: waiter
        print("got slow", flush=True)
ctrl.close()
"""


def line_of(script: Path, marker: str) -> str:
    lines = [n for n, text in enumerate(script.read_text().splitlines(), 1) if text.endswith(f"# site: {marker}")]
    assert len(lines) == 1
    return f"{script.name}:{lines[0]}"


def test_a_long_wait_is_reported_at_growing_intervals_and_a_short_one_not_at_all(tmp_path):
    script = tmp_path / "wait_report.py"
    script.write_text(textwrap.dedent(JOB).format(reports=REPORTS))
    command = [*launch.mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", str(script)]
    result = launch.run(command, 90, cwd=tmp_path, env={"MPILOCK_WAIT_REPORT": str(THRESHOLD)})
    assert result is not None, "the job hung"
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, output
    assert "got quick" in result.stdout and "got slow" in result.stdout, output

    reports = re.split(r"^(?=REPORT from rank)", result.stderr, flags=re.MULTILINE)
    reports = [r for r in reports if r.startswith("REPORT")]
    assert len(reports) == REPORTS, output  # none for the short wait, none from rank 0, no flood
    holder, waiter = line_of(script, "holder"), line_of(script, "waiter")
    for number, report in enumerate(reports):
        assert report.startswith("REPORT from rank 1: WARNING mpilock rank 1 has waited"), report
        assert f"for write 'slow' (asked at {waiter})" in report, report
        assert "'quick'" not in report
        rows = [line.split() for line in report.splitlines()[3:]]
        assert rows[0][:4] == ["'slow'", "holds", "rank", "0"] and rows[0][4] == "write", report
        assert rows[0][-1] == holder, report  # the holder's rank, mode and acquire site
        assert rows[1][:4] == ["queued", "#1", "rank", "1"] and rows[1][-1] == waiter, report
        waited = float(re.search(r"has waited ([\d.]+) s", report).group(1))
        # Report k is due after THRESHOLD * 2**k of waiting (0.3, 0.6, 1.2 s): a growing interval.
        assert waited >= THRESHOLD * 2**number - 0.05, (number, waited, report)
