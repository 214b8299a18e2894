"""The choice of the server loop, the fallback to the pure-Python loop, and failures of the native loop."""

import os
import subprocess
import sys
import textwrap

import launch
import pytest

pytestmark = pytest.mark.skipif(launch.INSIDE_MPI_JOB, reason="launches its own processes")
REQUIRED = os.environ.get("MPILOCK_REQUIRE_NATIVE") == "1"


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = launch.run([sys.executable, "-c", textwrap.dedent(code)], timeout=60)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert result is not None, "the process hung"
    return result


LOCK_AND_SAY = """
    import mpilock
    from mpilock import native
    ctrl = mpilock.sync()
    with ctrl.write(), ctrl.read("a"):
        pass
    with ctrl.single_write() as fence:
        fence.guard()
        fence.share(7)
    assert fence.collect() == 7 and ctrl.stats()["ranks"][0]["writes"] == 2
    print(native.LOOP, type(ctrl._channel).__name__)
    ctrl.close()
    """


@pytest.mark.skipif(not REQUIRED or os.environ.get("MPILOCK_NATIVE") == "0", reason="the native loop is not required")
def test_the_native_loop_runs_where_it_was_built():
    result = run(LOCK_AND_SAY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["native", "NativeChannel"]


def test_mpilock_native_0_runs_the_python_loop():
    result = run(LOCK_AND_SAY, MPILOCK_NATIVE="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["python", "Channel"]


def test_without_the_native_module_the_python_loop_runs_and_says_why():
    result = run(
        textwrap.dedent(
            """
            import logging, sys
            logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
            sys.modules["mpilock.server._native"] = None  # as if it had not been built
            """
        )
        + textwrap.dedent(LOCK_AND_SAY)
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].split() == ["python", "Channel"]
    assert any("python lock server loop: the native module is not built or does not load" in line for line in lines)


def test_a_malformed_mpilock_native_is_a_config_error():
    result = run("import mpilock.server.settings", MPILOCK_NATIVE="maybe")
    assert result.returncode != 0
    assert "MPILOCK_NATIVE='maybe' is not valid: expected 1 or 0" in result.stderr


@pytest.mark.skipif(not REQUIRED or os.environ.get("MPILOCK_NATIVE") == "0", reason="the native loop is not required")
def test_a_failure_in_the_native_loops_python_thread_aborts_instead_of_hanging():
    # STATS goes to the Python thread; a bug there must end the job, as one in the C thread does (die()).
    result = run(
        """
        import mpilock
        from mpilock.server import native_loop
        from mpilock.server.protocol import Op

        serve = native_loop.NativeChannel.serve_message

        def broken(self, rank, request, payload, problem):
            if request[0] == Op.STATS:
                raise RuntimeError("bug in the native loop's Python side")
            serve(self, rank, request, payload, problem)  # acquire sites, say

        native_loop.NativeChannel.serve_message = broken
        ctrl = mpilock.sync()
        with ctrl.write():
            print("granted")  # from the C thread (or the master's own poll): no Python needed
        ctrl.stats()
        print("answered")
        """
    )
    assert result.returncode != 0
    assert "granted" in result.stdout and "answered" not in result.stdout
    assert "native server's Python thread crashed" in result.stderr and "aborting the MPI job" in result.stderr
