"""README promises of issue 24, each checked as stated, at every rank count a promise needs.

Trace files per controller and ``MPILOCK_TRACE`` read at each ``sync()``; the
GIL switch interval only with the pure-Python loop; a multi-key request
queued for ``b`` holds back later requests for ``b``; who may enter a fence
while holding a lock; ``collect()`` after the next fence; argument checks
(``master``, nested bounded limits, timeouts, ``Lock.__exit__``).
"""

import json
import os
import shutil
import sys
import tempfile
from decimal import Decimal

import numpy as np
import pytest
from mpi4py import MPI
from mpitools import mpi, wait_until_queued

import mpilock
from mpilock.server import native as loops
from mpilock.server.loop import SWITCH_INTERVAL

COMM = MPI.COMM_WORLD


def shared_dir():
    """A fresh directory every rank sees (made by rank 0), and its removal."""
    path = tempfile.mkdtemp(prefix="mpilock-promises-") if COMM.rank == 0 else None
    return COMM.bcast(path)


def keys_in(path):
    with open(path) as f:
        return {e["args"]["key"] for e in json.load(f)["traceEvents"] if "key" in e.get("args", {})}


@mpi()
def test_mpilock_trace_is_read_at_each_sync_and_each_controller_gets_its_own_file(mpi_ranks):
    where = shared_dir()
    trace = os.path.join(where, "t.json")
    saved = os.environ.pop("MPILOCK_TRACE", None)
    try:
        os.environ["MPILOCK_TRACE"] = trace  # set after import: read by sync(), not at import
        first, second = mpilock.sync(), mpilock.sync(master=COMM.size - 1)
        del os.environ["MPILOCK_TRACE"]
        untraced = mpilock.sync()
        with first.write("one"), second.write("two"), untraced.write("three"):
            pass
        for ctrl in (first, second, untraced):
            ctrl.close()
        COMM.barrier()
        if COMM.rank == 0:
            assert sorted(os.listdir(where)) == ["t-2.json", "t.json"]  # the second did not overwrite the first
            assert keys_in(trace) == {"'one'"}
            assert keys_in(os.path.join(where, "t-2.json")) == {"'two'"}
        COMM.barrier()
    finally:
        if saved is not None:
            os.environ["MPILOCK_TRACE"] = saved
        COMM.barrier()
        if COMM.rank == 0:
            shutil.rmtree(where)


@mpi()
def test_only_the_pure_python_loop_lowers_the_gil_switch_interval(mpi_ranks):
    mine = 0.004
    saved = sys.getswitchinterval()
    sys.setswitchinterval(mine)
    try:
        for loop in ("python", "native") if loops.LOOP == "native" else ("python",):
            loops.use(loop)
            try:
                ctrl = mpilock.sync()
            finally:
                loops.use(None)
            with ctrl.write():
                seen = sys.getswitchinterval()
            ctrl.close()
            lowered = ctrl.rank == ctrl.master and loop == "python" and SWITCH_INTERVAL > 0
            expected = min(mine, SWITCH_INTERVAL) if lowered else mine
            assert seen == pytest.approx(expected), (loop, seen)
            assert sys.getswitchinterval() == pytest.approx(mine)  # restored at close
    finally:
        sys.setswitchinterval(saved)


@mpi(min_ranks=3)
def test_a_multi_key_request_queued_for_b_holds_back_a_later_request_for_b(ctrl, mpi_ranks):
    """The README's rule, exactly: nobody holds ``b``, yet rank 2 waits behind rank 1's ``write("a", "b")``."""
    if ctrl.rank == 0:
        with ctrl.write("a"):
            COMM.barrier()
            COMM.recv(source=2)  # rank 2 has seen its request for b time out
    elif ctrl.rank == 1:
        COMM.barrier()
        with ctrl.write("a", "b", timeout=30):
            pass
    elif ctrl.rank == 2:
        COMM.barrier()
        wait_until_queued(ctrl, "'b'", 1)
        assert [e["holders"] for e in ctrl.locks("b")] == [[]]  # b is free, only queued for
        with pytest.raises(mpilock.LockTimeout):
            with ctrl.write("b", timeout=0.5):
                pass
        with pytest.raises(mpilock.LockTimeout):
            with ctrl.read("b", timeout=0):
                pass
        COMM.send("done", dest=0)
    else:
        COMM.barrier()
    COMM.barrier()
    with ctrl.write("b", timeout=20):  # once rank 1 is served, b is everybody's again
        pass


@mpi(min_ranks=2)
def test_only_a_non_writer_holding_the_default_lock_is_refused_a_fence(ctrl, mpi_ranks):
    # the writer holding read() of the default lock runs the block: its read is promoted
    # and a non-writer holding another key or a bounded place enters the fence like anyone
    if ctrl.rank == 0:
        with ctrl.read():
            with ctrl.single_write() as fence:
                fence.guard()
                fence.share(ctrl.locks())
    elif ctrl.rank == 1:
        with ctrl.write("x"), ctrl.bounded("fs", 1):
            with ctrl.single_write() as fence:
                fence.guard()
    else:
        with ctrl.single_write() as fence:
            fence.guard()
    table = {e["key"]: e for e in fence.collect()}
    assert [(h["rank"], h["mode"]) for h in table["the default lock"]["holders"]] == [(0, "write")], table
    COMM.barrier()
    # a non-writer holding the default lock (read or write) gets FenceError, the others go through
    if ctrl.rank == 1:
        with ctrl.read():
            with pytest.raises(mpilock.FenceError, match="holding the controller's default lock"):
                with ctrl.single_write() as fence:
                    fence.guard()
    else:
        with ctrl.single_write() as fence:
            fence.guard()
    COMM.barrier()
    with ctrl.write(timeout=20):
        pass


@mpi()
def test_collect_after_the_next_fence_fails_on_every_rank(ctrl, mpi_ranks):
    with ctrl.single_write() as fence:
        fence.guard()
        fence.share({"n": 1})
    assert fence.collect() == {"n": 1}  # collected once before the next fence, on every rank
    later = ctrl.single_write()
    for _ in range(2):
        with pytest.raises(mpilock.FenceError, match="before the next single_write"):
            fence.collect()  # the writer and ranks that collected before alike
    with later:
        later.guard()
    assert later.collect() is None


@mpi()
def test_a_master_that_is_not_an_integer_is_a_type_error_on_every_rank(mpi_ranks):
    for bad in ("0", 0.0, True, None):
        with pytest.raises(TypeError, match="integer rank"):
            mpilock.sync(master=bad)
    with mpilock.sync(master=np.int64(0)) as ctrl, ctrl.write(timeout=20):
        pass


@mpi()
def test_a_nested_bounded_with_another_limit_is_a_limit_error(ctrl, mpi_ranks):
    with ctrl.bounded("n", 1, timeout=30):
        with pytest.raises(mpilock.LimitError, match="admits 1 holder"):
            with ctrl.bounded("n", 2):
                pass
        with ctrl.bounded("n", 1):  # the same limit nests as before
            pass
        assert [e["limit"] for e in ctrl.locks() if e["key"] == "bounded 'n'"] == [1]
    COMM.barrier()
    with ctrl.bounded("n", 2, timeout=30):  # free again: a new limit is fine
        pass


@mpi()
def test_inputs_outside_the_contract_are_refused_before_anything_is_sent(ctrl, mpi_ranks):
    with pytest.raises(ValueError, match="NaN"):
        ctrl.write(timeout=Decimal("sNaN"))
    for bad in (np.bool_(False), np.bool_(True)):
        with pytest.raises(TypeError, match="timeout"):
            ctrl.write(timeout=bad)
    for key in (bytearray(b"k"), memoryview(b"k")):
        with pytest.raises(TypeError, match="lock key"):
            ctrl.write(key)
    lock = ctrl.write("k")
    with pytest.raises(mpilock.MpilockError, match="not entered"):
        lock.__exit__(None, None, None)
    COMM.barrier()
    assert ctrl.locks() == []  # nothing reached the server
    COMM.barrier()
    with ctrl.write(b"k", timeout=20), lock:  # bytes keys and the never-entered lock still work
        pass
