"""Fixtures for the MPI tests: a controller on COMM_WORLD, closed after the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from batch import pytest_configure  # noqa: F401  (the batching plugin: tests/batch.py)
from scope import skipped_here

collect_ignore = ["compat", "batch_sample"]
"""tests/compat is a unittest suite in mpilock 1.x/2.x's style, run by test_compat_mpi.py under mpiexec."""


@pytest.fixture
def ctrl() -> Iterator[mpilock.WindowController]:  # noqa: F821
    import mpilock

    controller = mpilock.sync()
    try:
        yield controller
    finally:
        controller.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``MPILOCK_TEST_SCOPE=config`` leave out the tests no configuration can change (tests/scope.py)."""
    left_out = [item for item in items if skipped_here(item.nodeid)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not skipped_here(item.nodeid)]
