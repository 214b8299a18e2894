"""Where the ranks of an MPI test were when it ran past its limit, and none of them left running.

pytest-isolate-mpi gives each ``mpi_isolated`` test an ``mpiexec`` job of its
own; when one runs past its limit it kills ``mpiexec`` and reports the timeout
without the job's output, so a hang leaves no trace of where it hung.  So in
every rank of an MPI job, each test arms :func:`faulthandler.dump_traceback_later`
to fire every :data:`EVERY` of the test's limit, into a file named after
the test and the rank in :data:`DUMPS` (:func:`watch`, :func:`unwatch`).  After
a timeout the outer session attaches those files to the failure report
(:func:`collect`) and kills any rank still running the test
(:func:`kill_ranks`: found by the test's id in its command line and the job
marker in its environment), so that it cannot eat the cores of later tests.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import os
import signal
import tempfile
from pathlib import Path
from typing import IO

DUMPS = Path(tempfile.gettempdir()) / "mpilock-test-dumps"
"""Where the ranks' stacks go: ``<test key>.<rank>.txt``."""
JOB_MARK = b"PYTEST_ISOLATE_MPI_IS_FORKED=1"
"""In the environment of every rank pytest-isolate-mpi (or tests/batch.py) starts."""
EVERY = 0.3
"""Share of a test's limit after which its ranks write their stacks, again and again: a rank that started its
test late (an isolated job's limit also counts its ranks' start-up, each collecting on its own) still writes
them before the job is killed, and two dumps tell a rank that is stuck from one that is slow."""

_NOISE = ("/_pytest/", "/pluggy/", "/pytest_isolate_mpi/", "/mpi4py/run.py", "/mpi4py/__main__.py", "<frozen runpy>")
"""Frames of the test runner, left out of the stacks shown."""

_open: list[tuple[IO[str], Path]] = []
_every: list[float] = []
"""The seconds between two dumps of the current watch."""
_failed: list[str] = []
"""The tests that failed in this process (see :func:`unwatch`)."""


def key(nodeid: str) -> str:
    """Name a test in file names."""
    return hashlib.sha1(nodeid.encode()).hexdigest()[:16]


def watch(nodeid: str, rank: int, limit: float) -> None:
    """In a rank: write every thread's stack into ``DUMPS`` while test ``nodeid`` runs, every ``EVERY * limit``."""
    DUMPS.mkdir(exist_ok=True)
    path = DUMPS / f"{key(nodeid)}.{rank}.txt"
    (DUMPS / f"{key(nodeid)}.{rank}.failed.txt").unlink(missing_ok=True)  # from an earlier run, killed
    file = path.open("w")
    _open.append((file, path))
    _every[:] = [max(limit * EVERY, 1.0)]
    faulthandler.dump_traceback_later(_every[0], repeat=True, file=file)


def rearm() -> None:
    """In a rank: arm the stacks' timer again (pytest's faulthandler plugin cancels it when a test raises)."""
    if _open and _every:
        faulthandler.dump_traceback_later(_every[0], repeat=True, file=_open[-1][0])


def failed(nodeid: str, rank: int, report: str) -> None:
    """In a rank: keep the text of a failed phase of ``nodeid`` for the outer session (a timeout loses the output)."""
    DUMPS.mkdir(exist_ok=True)
    _failed.append(nodeid)
    with (DUMPS / f"{key(nodeid)}.{rank}.failed.txt").open("a") as file:
        file.write(report + "\n")


def unwatch() -> None:
    """In a rank, after the test: disarm, and remove the file (the test ended in time).

    Not after a failure here: the other ranks may be stuck in the test, and this
    one then hangs in what follows it (its controller's close, ``MPI_Finalize``),
    so its stacks go on being written until the process ends.
    """
    if _failed:
        return
    faulthandler.cancel_dump_traceback_later()
    while _open:
        file, path = _open.pop()
        file.close()
        path.unlink(missing_ok=True)


def collect(nodeid: str) -> str:
    """In the outer session: return (and remove) the stacks and failures the ranks of ``nodeid`` wrote, rank by rank."""
    parts = []
    for path in sorted(DUMPS.glob(f"{key(nodeid)}.*.txt")) if DUMPS.is_dir() else []:
        lines = path.read_text(errors="replace").strip().splitlines()
        text = "\n".join(line for line in lines if not any(noise in line for noise in _NOISE))
        if text:
            what = "failed here first" if path.name.endswith(".failed.txt") else "stacks"
            parts.append(f"--- rank {path.name.split('.')[1]} ({what})\n{text}")
        path.unlink(missing_ok=True)
    return "\n".join(parts)


def ranks_of(nodeid: str) -> list[int]:
    """Return the pids of the processes of an MPI job still running test ``nodeid`` (never this process)."""
    wanted = nodeid.encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            pid = int(entry.name)
            if pid == os.getpid():
                continue
            if wanted in (entry / "cmdline").read_bytes().split(b"\0") and JOB_MARK in (
                entry / "environ"
            ).read_bytes().split(b"\0"):
                found.append(pid)
        except (OSError, ValueError):
            continue
    return sorted(found)


def kill_ranks(nodeid: str) -> list[int]:
    """Kill what is left of the job of ``nodeid``; return the pids killed."""
    pids = ranks_of(nodeid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids
