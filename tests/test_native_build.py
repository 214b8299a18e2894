"""The native module built at first use (server/native_build.py), and the WARNING where none can run.

Each test builds with the real ``mpicc`` of this venv into its own cache
(``XDG_CACHE_HOME``), in fresh processes: this process has loaded the
installed module already.  The install paths that rely on the build at first
use (``pip install '.[mpich]'`` from a clean tree, the sdist with the extra)
are run from fresh venvs by .ci/check-dist.
"""

import contextlib
import fcntl
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import launch
import pytest

pytestmark = pytest.mark.skipif(launch.INSIDE_MPI_JOB, reason="launches its own processes")

BUILD_AND_SAY = """
    import sys
    from mpi4py import MPI
    from mpilock.server import native_build
    path, built = native_build.ensure(MPI.Get_library_version())
    module = native_build.load()
    same = module.library_version().strip() == MPI.Get_library_version().strip()
    print(built, path, module.compiled_against()[0].replace(" ", "_"), same)
"""


def start(code: str, cache: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**launch.environment(), "XDG_CACHE_HOME": str(cache), **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[str, str]:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out, err


def test_the_first_use_builds_the_module_for_mpi4pys_mpi_and_the_next_loads_it(tmp_path):
    first, _ = finish(start(BUILD_AND_SAY, tmp_path))
    built, path, family, same = first.split()
    assert built == "True"
    assert Path(path).parent == tmp_path / "mpilock"
    assert same == "True", "the cached module calls another MPI library than mpi4py"
    assert family in ("MPICH", "Open_MPI")
    second, _ = finish(start(BUILD_AND_SAY, tmp_path))
    assert second.split()[:2] == ["False", path]
    assert [p.name for p in (tmp_path / "mpilock").iterdir() if p.name.startswith(".build-")] == []


def test_the_ranks_of_a_node_build_it_once_and_all_load_it(tmp_path):
    processes = [start(BUILD_AND_SAY, tmp_path) for _ in range(3)]
    lines = [finish(p)[0].split() for p in processes]
    assert sorted(line[0] for line in lines) == ["False", "False", "True"], lines
    assert len({line[1] for line in lines}) == 1
    assert all(line[3] == "True" for line in lines)


def test_the_cache_key_changes_with_the_mpi_library():
    from mpilock.server import native_build

    assert native_build.key("MPICH Version: 4.2.0") != native_build.key("Open MPI v5.0.11")
    assert native_build.key("MPICH Version: 4.2.0") == native_build.key("MPICH Version: 4.2.0\n")


@pytest.mark.parametrize(
    ("mpicc", "says"),
    [
        ("/bin/false", "the MPI compiler wrapper /bin/false could not compile it (exit 1)"),
        ("/nonexistent/mpicc", "the MPI compiler wrapper /nonexistent/mpicc could not run"),
    ],
)
def test_a_failed_build_says_why_and_leaves_no_module(tmp_path, mpicc, says):
    result = finish(
        start(
            """
            from mpi4py import MPI
            from mpilock.server import native_build
            try:
                native_build.ensure(MPI.Get_library_version())
            except native_build.BuildError as err:
                print(err)
            """,
            tmp_path,
            MPICC=mpicc,
        )
    )[0]
    assert says in result
    assert not [p for p in (tmp_path / "mpilock").iterdir() if p.suffix == ".so" or p.name.startswith(".build-")]


SYNC_TWICE = """
    import sys
    sys.modules["mpilock.server._native"] = None  # as if none had been built or could be
    import mpilock
    for _ in range(2):
        ctrl = mpilock.sync()
        with ctrl.write():
            pass
        ctrl.close()
    from mpilock import native
    print(native.LOOP)
"""


def test_the_python_loop_warns_once_at_the_first_sync_with_the_reason_and_the_fix(tmp_path):
    out, err = finish(start(SYNC_TWICE, tmp_path))
    assert out.split() == ["python"]
    warnings = [line for line in err.splitlines() if "pure-Python lock server loop serves this job" in line]
    assert len(warnings) == 1, err
    assert "the native module is not built or does not load" in warnings[0]
    assert f"run once: MPICC=/path/to/mpicc {sys.executable} -m mpilock.native" in warnings[0]


def test_mpilock_native_0_asks_for_the_python_loop_and_gets_no_warning(tmp_path):
    out, err = finish(start(SYNC_TWICE, tmp_path, MPILOCK_NATIVE="0"))
    assert out.split() == ["python"]
    assert "pure-Python lock server loop serves" not in err


@contextlib.contextmanager
def holding_the_lock(cache: Path) -> Iterator[Path]:
    """Hold the cache key's lock as a rank that builds would; yield the cache's module directory."""
    from mpi4py import MPI

    from mpilock.server import native_build

    directory = cache / "mpilock"
    directory.mkdir(parents=True)
    with open(directory / f"{native_build.key(MPI.Get_library_version())}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield directory


def waits(process: subprocess.Popen[str]) -> bool:
    time.sleep(3)
    return process.poll() is None


def test_a_rank_that_waited_loads_the_module_the_holder_built(tmp_path):
    built = Path(finish(start(BUILD_AND_SAY, tmp_path / "elsewhere"))[0].split()[1])
    with holding_the_lock(tmp_path / "shared") as directory:
        waiter = start(BUILD_AND_SAY, tmp_path / "shared", MPICC="/bin/false")  # it would fail if it compiled
        assert waits(waiter), waiter.communicate()
        os.link(built, directory / built.name)  # what the holder's build renames into place
    out, _ = finish(waiter)
    assert out.split()[0] == "False" and out.split()[3] == "True"


def test_a_rank_that_waited_for_a_failed_build_reports_its_error_instead_of_compiling_again(tmp_path):
    failure = "the MPI compiler wrapper mpicc could not compile it (exit 1): the holder's error"
    with holding_the_lock(tmp_path / "shared") as directory:
        waiter = start(
            """
            from mpi4py import MPI
            from mpilock.server import native_build
            try:
                native_build.ensure(MPI.Get_library_version())
            except native_build.BuildError as err:
                print("failed:", err)
            """,
            tmp_path / "shared",
        )
        assert waits(waiter), waiter.communicate()
        next(directory.glob("*.lock")).with_suffix(".error").write_text(failure)
    out, _ = finish(waiter)
    assert out.strip() == f"failed: {failure}"
    assert not list(directory.glob("*.so"))
