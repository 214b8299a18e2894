"""The benchmark's phases of keyed locks run and print their rows (a smoke test: the figures are the bench's job)."""

import re
import sys

import launch
import pytest

pytestmark = [pytest.mark.mpiexec, pytest.mark.skipif(launch.INSIDE_MPI_JOB, reason="launches its own mpiexec")]


def test_keyed_phases_print_their_rows():
    command = [
        *launch.mpiexec(),
        "-n",
        "2",
        sys.executable,
        "-m",
        "mpi4py",
        "-m",
        "mpilock.bench",
        "--only",
        "keyed",
        "sites",
        "own-keys",
        "bounded",
        "million",
        "--scale",
        "0.01",
    ]
    result = launch.run(command, 120)
    assert result is not None, "the benchmark hung"
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for row in (
        "uncontended write() acquire+release, rank 1",
        "write(key), a key seen before",
        "write(key), a fresh key each time",
        "acquire-site capture, uncontended write(key)",
        "the same loop, sites on vs off",
        "own-key write(key) throughput, 2 ranks",
        "one key shared by all 2 ranks",
        "bounded(key, 2) throughput, 2 ranks",
        "bounded(key, 2) wait p99, 2 ranks",
        "10,000 distinct keys, each locked once",
        "master: RSS growth",
    ):
        assert row in out, (row, out)
    # one loop: value, target 0, result; both loops (where the native one runs): value and result per loop, target
    one_loop = r"master: keys in use afterwards\s+0 keys\s+0\s+PASS\s"
    both_loops = r"master: keys in use afterwards(\s+0 keys\s+PASS)+\s+0\s"
    assert re.search(one_loop, out) or re.search(both_loops, out), out
