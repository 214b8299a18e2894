"""Run the MPI tests of one file in one ``mpiexec`` job per rank count, not one job per test.

pytest-isolate-mpi starts a new ``mpiexec`` and a new pytest session in every
rank for every test and rank count: about 3 s of start-up each on our 2-core
machines, which was most of CI's time.  This plugin keeps its markers,
fixtures and in-rank machinery and changes only how often a job starts: the
tests of one file that run at the same rank count go to one job, which runs
them one after another.

What isolation gave is kept where it matters:

- **A failure on one rank fails the run without deadlocking the others.**  After
  each test the ranks agree, on a communicator of their own, whether every rank
  passed; if one did not (or one never arrives, stuck in the test), the job is
  aborted.  That test is reported failed; the file's later tests then run the
  old way, one job each, so no test is lost and none runs beside a broken one.
- **A hang still fails fast.**  The job reports when each test starts; a test
  running past its ``mpi`` marker's ``timeout`` has the whole job killed and is
  reported as timed out, with the job's output.
- **Tests that need a process of their own** (they change process-wide state
  that a later test would see) carry ``@pytest.mark.mpi_isolated`` and keep one
  job each.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import tempfile
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import leftovers
import pytest
from _pytest import runner
from _pytest.reports import TestReport

try:
    from pytest_isolate_mpi._constants import ENVIRONMENT_VARIABLE_TO_HIDE_INNARDS_OF_PLUGIN as FORKED
    from pytest_isolate_mpi._subsession import assemble_sub_pytest_cmd
except ImportError:  # pragma: no cover - the test group installs it
    FORKED = "PYTEST_ISOLATE_MPI_IS_FORKED"
    assemble_sub_pytest_cmd = None

BATCH_DIR = "MPILOCK_TEST_BATCH_DIR"
"""Set in a batch job's environment: the folder where its ranks leave their reports."""

STARTUP_ALLOWANCE = 60.0
"""Seconds a job may take to start its ranks and collect, on top of its first test's timeout."""

DEFAULT_TIMEOUT = 60.0
"""Seconds a test may run when its ``mpi`` marker names no ``timeout``."""

FAILED_GRACE = 2.0
"""Seconds a rank whose test failed waits for the other ranks' outcome (their reports) before aborting."""


def _ranks(item: pytest.Item) -> int:
    """The rank count ``item`` runs at; 0 for an empty parametrization (no rank count left: pytest skips it)."""
    callspec = getattr(item, "callspec", None)
    value = callspec.params.get("mpi_ranks", 1) if callspec is not None else 1
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _timeout(item: pytest.Item) -> float:
    marker = item.get_closest_marker("mpi")
    value = marker.kwargs.get("timeout") if marker is not None else None
    return float(value) if value is not None else DEFAULT_TIMEOUT


def _batchable(item: pytest.Item) -> bool:
    return (
        item.get_closest_marker("mpi") is not None
        and item.get_closest_marker("mpi_isolated") is None
        and _ranks(item) > 0
    )


class Batcher:
    """The plugin: outside the jobs it groups and launches, inside a job it runs and reports."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.inside = bool(os.environ.get(FORKED))
        self.batch_dir = os.environ.get(BATCH_DIR)
        self.results: dict[str, list[TestReport] | None] = {}
        self.launched: set[tuple[str, int]] = set()
        self.sync: Any = None

    # ---------------------------------------------------------------- outside

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Order each file's MPI tests by rank count, so one job's tests run (and print) together."""
        if self.inside:
            return
        files: dict[str, int] = {}
        for item in items:
            files.setdefault(item.path.as_posix(), len(files))
        order = {id(item): n for n, item in enumerate(items)}
        items.sort(key=lambda it: (files[it.path.as_posix()], _ranks(it) if _batchable(it) else 0, order[id(it)]))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        """Run ``item`` from its file's batch job (launched on its first test), or leave it to pytest-isolate-mpi."""
        if self.inside:
            return self._inner(item) if self.batch_dir else None
        if item.get_closest_marker("mpi") is not None and _ranks(item) == 0:
            # No rank count of RANKS reaches the test's minimum: pytest skips the empty parametrization
            # here (pytest-isolate-mpi would try to launch it with no rank count).
            runner.runtestprotocol(item, nextitem=nextitem)
            return True
        if not _batchable(item) or self.config.getoption("--no-mpi-isolation"):
            return None
        group = (item.path.as_posix(), _ranks(item))
        if group not in self.launched:
            self.launched.add(group)
            members = [it for it in item.session.items if _batchable(it) and (it.path.as_posix(), _ranks(it)) == group]
            self.results.update(self._run_job(members))
        reports = self.results.pop(item.nodeid, None)
        if reports is None:  # the job ended before this test ran: it gets a job of its own
            reports = self._run_job([item])[item.nodeid]
        assert reports is not None
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for report in reports:
            item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    def _command(self, items: list[pytest.Item]) -> list[str]:
        option = self.config.option
        executable = self.config.getini("mpi_executable") or "mpiexec"
        extra = list(self.config.getini("mpi_command_line_args") or [])
        assert assemble_sub_pytest_cmd is not None
        inner = assemble_sub_pytest_cmd(option, items[0].nodeid) + [it.nodeid for it in items[1:]]
        # One job runs many tests, so a failing one must not stop the rest inside the job
        # (the ranks agree after each test and abort together instead).
        return [executable, "-n", str(_ranks(items[0])), *extra, *inner]

    def _run_job(self, items: list[pytest.Item]) -> dict[str, list[TestReport] | None]:
        """Launch one job for ``items`` (same file, same rank count) and collect every rank's reports."""
        ranks = _ranks(items[0])
        with tempfile.TemporaryDirectory(prefix="mpilock-batch-") as folder:
            env = {**os.environ, FORKED: "1", BATCH_DIR: folder, "PYTEST_MPI_REPORTS_PATH": folder}
            with open(Path(folder) / "output", "w+") as output:
                process = subprocess.Popen(
                    self._command(items),
                    env=env,
                    cwd=self.config.rootpath,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
                try:
                    timed_out = self._watch(process, items, Path(folder))
                finally:  # an outer timeout (pytest-timeout) must not leave the job running either
                    if process.poll() is None:
                        _kill_job(process, folder)
                output.seek(0)
                text = output.read()
            found = {n: self._load(Path(folder), n, ranks) for n in range(len(items))}
            started = {n for n, _ in self._started(Path(folder))}
        results: dict[str, list[TestReport] | None] = {}
        broken = False
        for n, item in enumerate(items):
            reports = found[n]
            if broken:
                results[item.nodeid] = None  # never ran, or ran after a failure: it gets a job of its own
                continue
            if len(reports) == ranks:
                results[item.nodeid] = [r for rank in sorted(reports) for r in reports[rank]]
                broken = any(r.failed for rank in reports for r in reports[rank])
                continue
            broken = True
            if len(items) > 1 and not reports and n not in started and timed_out != n:
                results[item.nodeid] = None
                continue
            if timed_out == n:
                why = f"Timeout: {item.nodeid} ran past its limit of {_timeout(item):g} s; the job was killed."
            else:
                missing = sorted(set(range(ranks)) - set(reports))
                why = f"Ranks {missing} never finished {item.nodeid}: the job ended (exit {process.returncode})."
            ran = [r for rank in sorted(reports) for r in reports[rank]]
            failure = TestReport(
                nodeid=item.nodeid, location=item.location, outcome="failed", when="call", keywords={}, longrepr=why
            )
            failure.sections.append(("Output of the job (every rank)", text[-20000:]))
            results[item.nodeid] = [*ran, failure]
        if not broken and process.returncode not in (0, None):
            # Every test reported, yet the job failed on its way out: pin it on the last test.
            last = items[-1]
            failure = TestReport(
                nodeid=last.nodeid,
                location=last.location,
                outcome="failed",
                when="teardown",
                keywords={},
                longrepr=f"The job exited {process.returncode} after its last test.",
            )
            failure.sections.append(("Output of the job (every rank)", text[-20000:]))
            reports_of_last = results[last.nodeid]
            assert reports_of_last is not None
            reports_of_last.append(failure)
        return results

    @staticmethod
    def _started(folder: Path) -> Iterator[tuple[int, float]]:
        for path in folder.glob("start.*"):
            try:
                yield int(path.name.split(".")[1]), path.stat().st_mtime
            except (FileNotFoundError, ValueError):
                continue

    def _watch(self, process: subprocess.Popen[str], items: list[pytest.Item], folder: Path) -> int | None:
        """Wait for the job; kill it if a test runs past its timeout, and return that test's index."""
        launched = time.time()
        while process.poll() is None:
            time.sleep(0.05)
            started = dict(sorted(self._started(folder)))
            current = max(started, default=0)
            since = started.get(current, launched + STARTUP_ALLOWANCE)
            if time.time() - since > _timeout(items[current]):
                _kill_job(process, str(folder))
                return current
        return None

    @staticmethod
    def _load(folder: Path, index: int, ranks: int) -> dict[int, list[TestReport]]:
        found: dict[int, list[TestReport]] = {}
        for rank in range(ranks):
            try:
                with open(folder / f"{index}.{rank}", "rb") as file:
                    found[rank] = pickle.load(file)
            except (FileNotFoundError, EOFError, pickle.UnpicklingError):
                continue
        return found

    # ----------------------------------------------------------------- inside

    def _inner(self, item: pytest.Item) -> bool:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        if self.sync is None:
            self.sync = comm.Dup()  # the ranks' agreement never matches a test's own messages
        assert self.batch_dir is not None
        index = item.session.items.index(item)
        folder = Path(self.batch_dir)
        if comm.rank == 0:
            (folder / f"start.{index}").touch()
        # Where every rank is just before the outside kills a test that ran past its timeout: the
        # stacks go to a file per rank, which the outer session attaches to the report (tests/leftovers.py;
        # the job's own output cannot show them: pytest captures the ranks' stderr).
        leftovers.watch(item.nodeid, comm.rank, _timeout(item))
        try:
            reports = runner.runtestprotocol(item, log=False)
        finally:
            leftovers.unwatch()
        for report in reports:
            fspath, lineno, domain = report.location
            report.location = fspath, lineno, f"{domain}[rank={comm.rank}]"
            report.nodeid = f"{report.nodeid}[rank={comm.rank}]"
            report.rank = comm.rank  # type: ignore[attr-defined]
        part = folder / f"{index}.{comm.rank}.part"
        with open(part, "wb") as file:
            pickle.dump(reports, file)
        part.rename(folder / f"{index}.{comm.rank}")
        passed = array("i", [0 if any(r.failed for r in reports) else 1])
        everyone = array("i", [0])
        request = self.sync.Iallreduce(passed, everyone, op=MPI.MIN)
        # A rank that passed waits as long as the test may take for the others; one that failed waits
        # only a moment (the others may be stuck in the test, waiting for it) before ending the job.
        deadline = time.monotonic() + (_timeout(item) if passed[0] else FAILED_GRACE)
        while not request.Test():
            if time.monotonic() > deadline:
                comm.Abort(3)  # a rank never finished this test: it is stuck, so is the job
            time.sleep(0.0005)
        if not everyone[0]:
            comm.Abort(2)  # a rank failed: the others may be out of step; end the job
        return True


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Register the plugin after pytest-isolate-mpi's, so its hooks are asked first."""
    config.addinivalue_line(
        "markers", "mpi_isolated: the test needs an mpiexec job of its own (it changes process-wide state)"
    )
    config.pluginmanager.register(Batcher(config), "mpilock-batch")


def _kill_job(process: subprocess.Popen[str], folder: str) -> None:
    """Kill a job: ``mpiexec``'s process group, and every rank (MPICH's proxy starts them in a session of its own).

    The ranks are found by the job's folder in their environment (Linux ``/proc``), so none is left
    running, and eating the machine's cores, after its job was given up.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    mark = f"{BATCH_DIR}={folder}".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue
    process.wait()
