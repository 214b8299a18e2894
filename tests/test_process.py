"""Whole-process behaviour: a lone process without mpiexec, and a too-low thread level."""

import subprocess
import sys
import textwrap

import launch
import pytest

pytestmark = pytest.mark.skipif(launch.INSIDE_MPI_JOB, reason="launches its own processes")


def run(code: str) -> subprocess.CompletedProcess[str]:
    result = launch.run([sys.executable, "-c", textwrap.dedent(code)], timeout=60)
    assert result is not None, "the process hung"
    return result


def test_single_process_without_mpiexec():
    result = run(
        """
        import mpilock
        ctrl = mpilock.sync()
        with ctrl.single_write() as fence:
            fence.guard()
            fence.share([1, 2])
        assert fence.collect() == [1, 2]
        with ctrl.read(), ctrl.write():
            pass
        with ctrl.write(timeout=0):
            pass
        print("ok", ctrl.rank, ctrl.size)
        # not closed on purpose: the atexit hook must close it without hanging
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok 0 1"


def test_thread_level_below_multiple_is_explained():
    result = run(
        """
        import mpi4py
        mpi4py.rc.thread_level = "serialized"
        import mpilock
        try:
            mpilock.sync()
        except mpilock.MpilockError as err:
            print("error:", err)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "MPI_THREAD_MULTIPLE" in result.stdout and "thread_level" in result.stdout


CRASHES = {
    "at_exit": """
        import mpilock
        from mpi4py import MPI
        ctrl = mpilock.sync()
        if ctrl.rank == 1:
            raise RuntimeError("rank 1 dies")  # its atexit close would wait for the others...
        with ctrl.write():
            pass
        MPI.COMM_WORLD.barrier()  # ...who wait here for rank 1
        ctrl.close()
        """,
    "inside_with": """
        import mpilock
        from mpi4py import MPI
        with mpilock.sync() as ctrl:  # leaving with an exception must not close (collectively)
            if ctrl.rank == 1:
                raise RuntimeError("rank 1 dies")
            MPI.COMM_WORLD.recv(source=1)
        """,
}


@pytest.mark.parametrize("case", sorted(CRASHES))
def test_uncaught_exception_without_mpi4py_runner_aborts_instead_of_hanging(tmp_path, case):
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(CRASHES[case]))
    # Plain python, not python -m mpi4py: mpilock itself must turn the crash into an abort.
    # Without it the other ranks wait for rank 1 forever, so ending at all is the proof;
    # the log line is not checked because hydra may drop the output of a job it kills.
    result = launch.run([*launch.mpiexec(), "-n", "3", sys.executable, str(script)], timeout=60)
    assert result is not None, "the job hung"
    assert result.returncode != 0, result.stderr


@pytest.mark.parametrize(
    ("where", "silence", "message"),
    [
        ("server thread", "loop.Channel.help = lambda self: False", "server thread crashed"),
        ("waiting client", "loop.serve = lambda *args: time.sleep(3600)", "failed in a waiting client thread"),
    ],
)
def test_a_failure_inside_the_server_aborts_instead_of_hanging(where, silence, message):
    # The master's own waits (in threads other than the main one) serve requests too (Channel.help): a bug
    # there must end the job like one in
    # the server thread, since the channel's receive would be left unposted and every rank would hang.
    # `silence` stops the other poller, so the request is served where the test says.
    result = run(
        f"""
        import threading
        import os
        os.environ["MPILOCK_NATIVE"] = "0"  # the Python loop's threads (tests/test_native_loop.py: the native one's)
        import time
        import mpilock
        from mpilock.server import loop
        from mpilock.server.core import LockCore

        def broken(self, rank, op, seq, arg=0, aux=0, payload=None):
            raise RuntimeError("bug in the lock core")

        {silence}
        LockCore.handle = broken

        def work():  # not the main thread: only other threads' waits serve requests
            ctrl = mpilock.sync()
            with ctrl.write():
                print("granted")

        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
        """
    )
    assert result.returncode != 0, where
    assert "granted" not in result.stdout
    assert message in result.stderr and "aborting the MPI job" in result.stderr, result.stderr
