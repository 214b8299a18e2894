"""Fixtures for the MPI tests: a controller on COMM_WORLD, closed after the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

collect_ignore = ["compat"]
"""tests/compat is a unittest suite in mpilock 1.x/2.x's style, run by test_compat_mpi.py under mpiexec."""


@pytest.fixture
def ctrl() -> Iterator[mpilock.WindowController]:  # noqa: F821
    import mpilock

    controller = mpilock.sync()
    try:
        yield controller
    finally:
        controller.close()
