"""Fixtures for the MPI tests: a controller on COMM_WORLD, closed after the test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from batch import BATCH_DIR, pytest_configure  # noqa: F401  (pytest_configure: the batching plugin, tests/batch.py)
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
    return report


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
