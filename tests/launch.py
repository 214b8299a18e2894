"""Launching ``mpiexec`` jobs from a test: the one place that knows how.

Used by the tests that start their own jobs (examples, dead ranks, whole
processes) rather than running inside one through pytest-isolate-mpi.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

INSIDE_MPI_JOB = bool(os.environ.get("PYTEST_ISOLATE_MPI_IS_FORKED"))
"""True inside a pytest-isolate-mpi job, where these tests must not launch another."""


def environment() -> dict[str, str]:
    """This environment with the venv's bin first on PATH and no leftovers of an enclosing MPI launch."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_", "OMPI_COMM", "PMIX_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("MPIR_CVAR_ENABLE_HEAVY_YIELD", "1")  # more ranks than cores
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("UCX_LOG_LEVEL", "error")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.pop("MPILOCK_TRACE", None)
    return env


@functools.cache
def mpiexec() -> tuple[str, ...]:
    """The launcher of the MPI that mpi4py uses here, with the flags more ranks than cores need."""
    found = shutil.which("mpiexec", path=environment()["PATH"])
    if found is None:
        pytest.skip("mpiexec not found on PATH")
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
    if "Open MPI" in version.stdout + version.stderr:
        return (found, "--oversubscribe")
    return (found,)


def is_hydra() -> bool:
    """Whether the launcher is MPICH's hydra (not Open MPI's prterun)."""
    return "--oversubscribe" not in mpiexec()


def run(
    command: list[str], timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str] | None:
    """Run ``command`` in its own process group (with ``env`` added to :func:`environment`).

    On timeout kill the whole group and return None.
    """
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env={**environment(), **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return None
    return subprocess.CompletedProcess(command, process.returncode, out, err)
