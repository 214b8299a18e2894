"""tests/leftovers.py: a test past its limit shows where its ranks were, and none of them is left running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import leftovers

NODEID = "tests/test_nothing_mpi.py::test_that_hangs[2]"

RANK = """
import sys, time
sys.path.insert(0, {tests!r})
import leftovers
leftovers.watch({nodeid!r}, 1, 1.0)  # stacks written 1 s from now (the shortest wait)
print("watching", flush=True)
def waiting_in_a_barrier():
    time.sleep(60)
waiting_in_a_barrier()
"""


def test_a_rank_past_the_limit_leaves_its_stacks_and_is_killed():
    env = {**os.environ, "PYTEST_ISOLATE_MPI_IS_FORKED": "1"}
    code = RANK.format(tests=str(Path(__file__).parent), nodeid=NODEID)
    rank = subprocess.Popen([sys.executable, "-c", code, NODEID], env=env, stdout=subprocess.PIPE, text=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", NODEID])  # no job mark
    try:
        assert rank.stdout is not None and rank.stdout.readline().strip() == "watching"
        written = leftovers.DUMPS / f"{leftovers.key(NODEID)}.1.txt"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (written.exists() and written.stat().st_size):
            time.sleep(0.2)
        stacks = leftovers.collect(NODEID)
        assert stacks.startswith("--- rank 1 (stacks)\n"), stacks
        assert "waiting_in_a_barrier" in stacks  # the rank's own frame, from faulthandler
        assert leftovers.collect(NODEID) == ""  # taken once
        assert leftovers.kill_ranks(NODEID) == [rank.pid]
        assert rank.wait(10) != 0  # killed
        assert bystander.poll() is None  # a process of no MPI job is left alone
        assert leftovers.kill_ranks(NODEID) == []
    finally:
        for process in (rank, bystander):
            if process.poll() is None:
                process.kill()
            process.wait()


def test_a_test_that_ends_in_time_leaves_nothing():
    leftovers.watch(NODEID, 0, 60.0)
    leftovers.unwatch()
    assert leftovers.collect(NODEID) == ""
    assert not list(leftovers.DUMPS.glob(f"{leftovers.key(NODEID)}.*"))


def test_a_failure_on_one_rank_is_kept_for_the_timeout_report_and_its_stacks_go_on():
    leftovers.watch(NODEID, 0, 60.0)
    try:
        leftovers.failed(NODEID, 0, "call: MpilockError: rank 0 found something wrong")
        leftovers.unwatch()  # the rank went on after its failure (to a close the others never reach, say)
        stacks = leftovers.DUMPS / f"{leftovers.key(NODEID)}.0.txt"
        assert stacks.exists(), "the stacks of a rank that failed must go on being written"
        report = leftovers.collect(NODEID)
        assert report == "--- rank 0 (failed here first)\ncall: MpilockError: rank 0 found something wrong", report
        assert leftovers.collect(NODEID) == ""  # taken once
    finally:
        leftovers._failed.clear()
        leftovers.unwatch()
