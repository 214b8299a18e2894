"""Many threads per rank (``threads``) and the interrupt ``storm``: every thread a holder of its own.

``threads`` counts the lock operations per second of 1, 2, 4 and 8 threads per
rank, on one shared key and on a key per thread; ``storm`` interrupts every
kind of lock call at random moments and counts what it leaves behind
(:mod:`mpilock.storm`).
"""

from __future__ import annotations

import threading
import time
from typing import cast

from .. import storm
from ..controller import WindowController
from .common import MASTER, WORLD, Plan, Row, quiet_barrier


def phase_threads(ctrl: WindowController, threads: int, key: str, seconds: float) -> float | None:
    """Lock operations per second of every rank's ``threads`` threads writing ``key`` ("own": one per thread).

    Each thread of each rank is a holder of its own; on the master the total rate, elsewhere ``None``.
    """
    rank = WORLD.Get_rank()
    counts = [0] * threads
    stop = threading.Event()

    def loop(index: int) -> None:
        name = f"own-{rank}-{index}" if key == "own" else key
        while not stop.is_set():
            with ctrl.write(name):
                pass
            counts[index] += 1

    workers = [threading.Thread(target=loop, args=(i,), name=f"bench-{i}") for i in range(threads)]
    quiet_barrier()
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    rate = sum(counts) / (time.perf_counter() - start)
    total = WORLD.reduce(rate, root=MASTER)
    quiet_barrier()
    return float(cast(float, total)) if rank == MASTER else None


def threads_rows(plan: Plan, ctrl: WindowController) -> list[Row]:
    """Lock operations per second of 1, 2, 4 and 8 threads per rank, on one key and on a key each (on the master)."""
    size = WORLD.Get_size()
    rows: list[Row] = []
    for key in ("shared", "own"):
        base: float | None = None
        for threads in (1, 2, 4, 8):
            rate = phase_threads(ctrl, threads, key, 0.6 * plan.scale)
            if rate is None:
                continue
            base = base or rate
            what = "one shared key" if key == "shared" else "own key per thread"
            note = f"{rate / base:.2f}x 1 thread per rank; every thread a holder of its own"
            rows.append(Row(f"threads: write(), {what}, {size} ranks x {threads}", rate, "/s", None, note=note))
    return rows


def storm_rows(plan: Plan, ctrl: WindowController) -> list[Row]:
    """Count what an interrupt storm over every kind of lock call leaves behind (findings; there should be none)."""
    size = WORLD.Get_size()
    seconds = 10.0 * plan.scale
    stormed, failures = storm.storm(ctrl, "mixed", seconds, seed=size)
    operations, interrupted, findings = storm.gather(ctrl, stormed, failures)
    note = (
        f"every lock kind, locks()/stats(), collect() of 1 MB; {operations:,} calls completed, "
        f"{interrupted:,} cut by an exception, in {seconds:g} s on {size} ranks"
    )
    return [Row("interrupt storm (50 µs-2 ms): leftovers", len(findings), "findings", None, "0", not findings, note)]
