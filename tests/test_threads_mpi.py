"""Any thread may lock: every thread of every rank is a holder of its own (issue 18).

Real threads on real MPI ranks share one controller per rank: threads of one
rank exclude each other like ranks do, readers of any threads share, nesting,
timeouts and deadlocks are per thread, and a worker thread may run the
collective calls.
"""

import json
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mpi4py import MPI
from mpitools import mpi, overlaps

import mpilock

COMM = MPI.COMM_WORLD
THREADS = 4


@pytest.fixture
def shared_dir():
    """A directory every rank sees (one machine): made by rank 0, removed after the test."""
    path = COMM.bcast(tempfile.mkdtemp(prefix="mpilock-threads-") if COMM.rank == 0 else None)
    yield Path(path)
    COMM.barrier()
    if COMM.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


def run_threads(count, target, *args):
    """Run ``target(index, *args)`` in ``count`` threads; re-raise the first exception any of them raised."""
    errors = []

    def body(index):
        try:
            target(index, *args)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=body, args=(i,), name=f"worker-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), f"{thread.name} is still running after 60 s"
    if errors:
        raise errors[0]


@mpi()
def test_threads_of_every_rank_exclude_each_other_with_an_exact_counter(ctrl, mpi_ranks, shared_dir):
    path = shared_dir / "counter.txt"
    if ctrl.rank == 0:
        path.write_text("0")
    COMM.barrier()
    rounds = 30
    spans = []

    def work(index):
        for _ in range(rounds):
            with ctrl.write("counter"):
                start = time.monotonic()
                value = int(path.read_text())
                path.write_text(str(value + 1))
                spans.append((f"{ctrl.rank}/{index}", "write", start, time.monotonic()))

    run_threads(THREADS, work)
    everyone = [span for part in COMM.allgather(spans) for span in part]
    COMM.barrier()
    assert int(path.read_text()) == COMM.size * THREADS * rounds  # no lost update
    assert not overlaps(everyone), overlaps(everyone)[:3]


@mpi()
def test_readers_of_several_threads_hold_at_once(ctrl, mpi_ranks):
    inside = threading.Barrier(THREADS, timeout=20)

    def read(index):
        with ctrl.read("shared"):
            inside.wait()  # every thread of this rank holds the read lock at once, or this times out

    run_threads(THREADS, read)
    with ctrl.read("shared"):
        COMM.barrier()  # every rank's main thread holds it at once too


@mpi()
def test_threads_of_one_rank_exclude_each_other_and_nest_in_their_own_locks_only(ctrl, mpi_ranks):
    held, done = threading.Event(), threading.Event()

    def holder(index):
        with ctrl.write("k"):
            with ctrl.read("k"):  # nested in its own write: local
                with ctrl.write("k"):
                    held.set()
                    assert done.wait(20)

    thread = threading.Thread(target=holder, args=(0,), name="holding")
    thread.start()
    try:
        assert held.wait(20)
        for lock in (ctrl.write("k", timeout=0.2), ctrl.read("k", timeout=0), ctrl.read("k", timeout=0.1)):
            with pytest.raises(mpilock.LockTimeout, match=r"rank \d+ / MainThread|rank \d+ "):
                with lock:
                    pytest.fail("another thread of this rank holds the write lock")
        table = ctrl.locks("k")
        assert [(h["rank"], h["thread"], h["mode"]) for h in table[0]["holders"]] == [(ctrl.rank, "holding", "write")]
    finally:
        done.set()
        thread.join(20)
    with ctrl.write("k", timeout=10):  # handed over once the thread released it
        pass
    COMM.barrier()
    assert ctrl.locks() == []


@mpi()
def test_a_timeout_of_one_thread_leaves_another_threads_hold_alone(ctrl, mpi_ranks):
    held, done = threading.Event(), threading.Event()

    def holder(index):
        with ctrl.read("x"):
            held.set()
            assert done.wait(20)

    thread = threading.Thread(target=holder, args=(0,), name="reader")
    thread.start()
    try:
        assert held.wait(20)
        with pytest.raises(mpilock.LockTimeout):
            with ctrl.write("x", timeout=0.1):
                pass
        table = ctrl.locks("x")
        assert [h["thread"] for h in table[0]["holders"] if h["rank"] == ctrl.rank] == ["reader"]
        assert not table[0]["waiters"] or all(w["rank"] != ctrl.rank for w in table[0]["waiters"])
    finally:
        done.set()
        thread.join(20)
    COMM.barrier()
    assert ctrl.locks() == []


@mpi()
def test_a_deadlock_between_two_threads_of_one_rank_is_refused(ctrl, mpi_ranks):
    both = threading.Barrier(2, timeout=20)
    outcomes = {}

    def cross(index):
        first, second = ("a", "b") if index == 0 else ("b", "a")
        with ctrl.write(f"{ctrl.rank}-{first}"):
            both.wait()
            if index == 1:
                time.sleep(0.2)  # thread 0 waits first; thread 1 closes the cycle
            try:
                with ctrl.write(f"{ctrl.rank}-{second}", timeout=15):
                    outcomes[index] = "granted"
            except mpilock.DeadlockError as error:
                outcomes[index] = str(error)

    run_threads(2, cross)
    assert outcomes[0] == "granted"
    text = outcomes[1]
    assert text.startswith("deadlock:") and f"rank {ctrl.rank} / worker-0 holds write '{ctrl.rank}-a'" in text, text
    assert f"rank {ctrl.rank} / worker-1 holds write '{ctrl.rank}-b'" in text, text
    COMM.barrier()
    assert ctrl.locks() == []


@mpi()
def test_pool_tasks_lock_per_key_files_with_exact_counts(ctrl, mpi_ranks, shared_dir):
    keys = [f"file-{i}" for i in range(3)]
    if ctrl.rank == 0:
        for key in keys:
            (shared_dir / key).write_text("0")
    COMM.barrier()
    tasks = 24

    def task(number):
        key = keys[number % len(keys)]
        with ctrl.write(key):
            path = shared_dir / key
            path.write_text(str(int(path.read_text()) + 1))

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(task, range(tasks)))
    COMM.barrier()
    counts = [int((shared_dir / key).read_text()) for key in keys]
    assert counts == [COMM.size * len(range(i, tasks, len(keys))) for i in range(len(keys))]


@mpi()
def test_a_worker_thread_reads_while_the_main_thread_holds_a_read(ctrl, mpi_ranks):
    # mpilock 2.x's job-pool pattern: the scheduler holds read() and a worker of the same rank reads too.
    with ctrl.read():
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(lambda: _read_and_return(ctrl)).result(timeout=20) == "read"
    COMM.barrier()


def _read_and_return(ctrl):
    with ctrl.read(timeout=10):
        return "read"


@mpi()
def test_a_fence_from_a_worker_thread_while_another_thread_locks(ctrl, mpi_ranks):
    stop = threading.Event()
    counts = [0]

    def busy(index):
        while not stop.is_set():
            with ctrl.write(f"busy-{ctrl.rank}"):
                counts[0] += 1

    other = threading.Thread(target=busy, args=(0,), name="busy")
    other.start()
    try:
        with ThreadPoolExecutor(1) as pool:

            def fence():
                with ctrl.single_write() as f:
                    f.guard()
                    f.share({"from": threading.current_thread().name})
                return f.collect()

            assert pool.submit(fence).result(timeout=30)["from"].startswith("ThreadPoolExecutor")
    finally:
        stop.set()
        other.join(20)
    assert counts[0] > 0


@mpi()
def test_close_from_a_worker_thread_ends_another_threads_wait(mpi_ranks):
    ctrl = mpilock.sync()
    blocked, outcome = threading.Event(), []
    if ctrl.rank == 0:
        ctrl_lock = ctrl.write("held")
        ctrl_lock.__enter__()  # the main thread holds it; the waiter below can never get it

    def wait(index):
        blocked.set()
        try:
            with ctrl.write("held"):
                outcome.append("granted")
        except mpilock.ClosedError:
            outcome.append("closed")

    waiter = None
    if ctrl.rank == 0:
        waiter = threading.Thread(target=wait, args=(0,), name="waiter")
        waiter.start()
        assert blocked.wait(20)
        time.sleep(0.2)
    with ThreadPoolExecutor(1) as pool:
        with pytest.warns(ResourceWarning) if ctrl.rank == 0 else _nothing():
            pool.submit(ctrl.close).result(timeout=30)
    if waiter is not None:
        waiter.join(20)
        assert outcome == ["closed"]
    assert ctrl.closed


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@mpi()
def test_stats_and_the_trace_name_each_thread(mpi_ranks, shared_dir):
    path = shared_dir / "trace.json"
    ctrl = mpilock.sync(trace=str(path))
    rank = ctrl.rank

    def locker(index):
        for _ in range(3 + index):
            with ctrl.write(f"t-{rank}-{index}"):
                pass

    run_threads(2, locker)
    with ctrl.read():
        pass
    COMM.barrier()
    threads = ctrl.stats()["threads"]
    mine = {(t["thread"], t["reads"], t["writes"]) for t in threads if t["rank"] == rank}
    assert mine == {("MainThread", 1, 0), ("worker-0", 0, 3), ("worker-1", 0, 4)}, threads
    assert len(threads) == 3 * mpi_ranks
    ctrl.close()  # the master writes the trace now
    if rank == 0:
        document = json.loads(path.read_text())
        names = {e["tid"]: e["args"]["name"] for e in document["traceEvents"] if e["name"] == "thread_name"}
        for r in range(mpi_ranks):
            for index in range(2):
                tids = [tid for tid, name in names.items() if name == f"rank {r} / worker-{index}"]
                assert len(tids) == 1, names
                writes = [e for e in document["traceEvents"] if e["ph"] == "X" and e["tid"] == tids[0]]
                assert sum(e["name"] == "write" for e in writes) == 3 + index
