"""Fixtures for the MPI tests: a controller on COMM_WORLD, closed after the test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import leftovers
import pytest
from batch import BATCH_DIR, pytest_configure  # noqa: F401  (pytest_configure: the batching plugin, tests/batch.py)
from launch import INSIDE_MPI_JOB
from mpitools import TIMEOUT
from scope import skipped_here

FAILED = pytest.StashKey[bool]()
"""Set on an item whose test body failed on this rank."""

collect_ignore = ["compat", "batch_sample"]
"""tests/compat is a unittest suite in mpilock 1.x/2.x's style, run by test_compat_mpi.py under mpiexec."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[FAILED] = True
    if report.failed and INSIDE_MPI_JOB:
        # Kept for the outer session's timeout report: when one rank fails and the others hang, the job is
        # killed and its output lost, and this failure is what explains the hang.  (Here, not in
        # pytest_runtest_logreport: the ranks run their tests with log=False, so that hook never fires in them.)
        from mpi4py import MPI

        leftovers.failed(item.nodeid, MPI.COMM_WORLD.Get_rank(), f"{report.when}: {report.longreprtext}")
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """In a rank of an isolated job: write the stacks shortly before the test's limit (tests/leftovers.py).

    (A batch job's ranks do the same in tests/batch.py, around each of their tests.)
    """
    if not INSIDE_MPI_JOB or os.environ.get(BATCH_DIR):
        return (yield)
    from mpi4py import MPI

    marker = item.get_closest_marker("mpi")
    limit = marker.kwargs.get("timeout") if marker is not None else None
    leftovers.watch(item.nodeid, MPI.COMM_WORLD.Get_rank(), float(limit) if limit is not None else TIMEOUT)
    try:
        return (yield)
    finally:
        leftovers.unwatch()


@pytest.hookimpl(trylast=True)
def pytest_exception_interact() -> None:
    """In a rank: arm the stacks' timer again, which pytest's faulthandler plugin cancels when a test raises.

    A rank whose test failed is the one that next hangs (in its controller's close, waiting for ranks still
    in the test), and without this its stacks were never written.
    """
    if INSIDE_MPI_JOB:
        leftovers.rearm()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A test that ran past its limit: attach what its ranks left (stacks, failures); kill the ranks still running."""
    if INSIDE_MPI_JOB or not report.failed:
        return
    timeout = str(report.longrepr).startswith("Timeout")
    killed = leftovers.kill_ranks(report.nodeid) if timeout else []  # first: a live rank writes its stacks again
    stacks = leftovers.collect(report.nodeid)  # removes the files, whatever the failure
    if not timeout:
        return  # the report shows the failure itself
    if stacks or killed:
        text = stacks or "(no rank wrote its stacks)"
        if killed:
            text += f"\n--- killed the processes left running it: {killed}"
        report.sections.append(("Where the ranks were shortly before the limit (faulthandler)", text))


@pytest.fixture
def ctrl(request: pytest.FixtureRequest) -> Iterator[mpilock.WindowController]:  # noqa: F821
    """A controller on COMM_WORLD, closed after the test (collectively).

    In a batch job (tests/batch.py) a rank whose test failed leaves it open: the
    other ranks may still be inside the test (at a barrier, say), so a collective
    close would hang until the job is killed, with the failure unreported.  The
    ranks' agreement after the test then aborts the job instead.
    """
    import mpilock

    controller = mpilock.sync()
    try:
        yield controller
    finally:
        if not (os.environ.get(BATCH_DIR) and request.node.stash.get(FAILED, False)):
            controller.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``MPILOCK_TEST_SCOPE=config`` leave out the tests no configuration can change (tests/scope.py)."""
    left_out = [item for item in items if skipped_here(item.nodeid)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not skipped_here(item.nodeid)]
