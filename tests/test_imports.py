"""``import mpilock`` loads no MPI: a trace copied off the cluster plots on a laptop without one.

Each test runs a fresh interpreter.  ``no_mpi`` puts a directory first on
``PYTHONPATH`` whose ``mpi4py`` package raises ``ImportError``, as importing
mpi4py does where it (or the MPI library it needs) is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import launch
import pytest

import mpilock
from mpilock.server import Op, Reply, Send
from mpilock.server import keys as keyspace
from mpilock.trace import Recorder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAKE_ERROR = "mpi4py is not installed here (fake package of tests/test_imports.py)"


@pytest.fixture
def no_mpi(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import mpi4py`` fails."""
    fake = tmp_path / "fake" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise ImportError({FAKE_ERROR!r})\n")
    env = launch.environment()
    env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), env.get("PYTHONPATH", "")])
    return env


def python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    return result


def test_the_mpi_free_modules_import_without_mpi4py(no_mpi, tmp_path):
    result = python(
        """
        import sys
        import mpilock, mpilock.errors, mpilock.plot, mpilock.trace
        import mpilock.server.core, mpilock.server.fences
        from mpilock import FenceError, FencedSignal, LockTimeout, MpilockError, ClosedError, __version__
        from mpilock.server.core import LockCore
        LockCore(2)  # the lock manager core works, too
        assert "mpi4py" not in sys.modules and "mpi4py.MPI" not in sys.modules, sorted(sys.modules)
        print("version", __version__)
        try:
            mpilock.sync  # needs MPI: the fake must make this fail, or the test proves nothing
        except ImportError as err:
            print("sync:", err)
        """,
        no_mpi,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert f"version {mpilock.__version__}" in result.stdout
    assert f"sync: {FAKE_ERROR}" in result.stdout


def test_plot_writes_a_png_without_mpi4py(no_mpi, tmp_path):
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed (the 'plot' extra)")
    recorder = Recorder(2, keep_events=True)  # rank 0 reads from t=0 to t=2, rank 1 then writes
    recorder.observe(0.0, 0, Op.READ, 1, [Send(0, Reply.GRANTED, 1)])
    recorder.observe(1.0, 1, Op.WRITE, 1, [])
    recorder.observe(2.0, 0, Op.RELEASE, 2, [Send(1, Reply.GRANTED, 1)])
    recorder.observe(3.0, 1, Op.RELEASE, 2, [])
    key = (keyspace.encode("out/part-1.h5"),)  # and a keyed lock: its colour and the per-key summary
    recorder.observe(4.0, 1, Op.WRITE, 3, [Send(1, Reply.GRANTED, 3)], key)
    recorder.observe(5.0, 1, Op.RELEASE, 4, [], key)
    trace = tmp_path / "trace.json"
    recorder.write_chrome_trace(trace)
    png = tmp_path / "timeline.png"
    result = subprocess.run(
        [sys.executable, "-m", "mpilock.plot", str(trace), "-o", str(png)],
        env=no_mpi,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "on 2 ranks" in result.stdout
    assert "1 keys; the 1 with the most total wait" in result.stdout and "'out/part-1.h5'" in result.stdout
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_every_public_name_resolves_and_dir_lists_it(tmp_path):
    result = python(
        """
        import mpilock
        assert set(mpilock.__all__) <= set(dir(mpilock)), set(mpilock.__all__) - set(dir(mpilock))
        for name in mpilock.__all__:
            value = getattr(mpilock, name)
            assert value.__name__ == name, (name, value)
        from mpilock import Fence, WindowController, dedicated, sync  # the lazy names, the usual way
        assert sync is mpilock.sync and Fence is mpilock.fence.Fence
        try:
            mpilock.no_such_name
        except AttributeError as err:
            print("missing:", err)
        """,
        launch.environment(),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "missing: module 'mpilock' has no attribute 'no_such_name'" in result.stdout
