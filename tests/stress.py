"""Randomized multi-rank stress run: random holds, nesting and timeouts; checks overlaps.

Run ``mpiexec -n 8 python -m mpi4py tests/stress.py`` (``make stress``); the total
number of lock operations comes from ``MPILOCK_STRESS_OPS`` (default 10,000).
Exits non-zero if any write interval overlapped another rank's interval or a
lock leaked.  The short version runs inside the test suite (test_stress_mpi.py).
"""

from __future__ import annotations

import os
import random
import sys
import time

from mpi4py import MPI
from mpitools import Span, overlaps

import mpilock


class Worker:
    """One rank's random walk through reads, writes, nesting and timeouts."""

    def __init__(self, ctrl: mpilock.WindowController, seed: int) -> None:
        self.ctrl = ctrl
        self.rng = random.Random(seed)
        self.spans: list[Span] = []
        self.ops = 0
        self.timeouts = 0

    def timeout(self) -> float | None:
        return self.rng.choice([None, None, None, 0.0, 0.0005, 0.005, 0.05])

    def hold(self) -> None:
        pause = self.rng.choice([0.0, 0.0, 0.00005, 0.0002, 0.001])
        if pause:
            time.sleep(pause)

    def span(self, kind: str, start: float) -> None:
        self.spans.append((self.ctrl.rank, kind, start, time.monotonic()))

    def step(self) -> None:
        shape = self.rng.choice(["read", "write", "write", "read-read", "read-write", "write-read"])
        outer = self.ctrl.write if shape.startswith("write") else self.ctrl.read
        self.ops += 1
        try:
            with outer(timeout=self.timeout()):
                start = time.monotonic()
                self.hold()
                if "-" in shape:
                    inner = self.ctrl.write if shape.endswith("write") else self.ctrl.read
                    if shape == "read-write":  # promotion: the read is released meanwhile
                        self.span("read", start)
                    self.ops += 1
                    try:
                        with inner(timeout=self.timeout()):
                            inner_start = time.monotonic()
                            self.hold()
                            if shape == "read-write":
                                self.span("write", inner_start)
                    except mpilock.LockTimeout:
                        self.timeouts += 1
                    if shape == "read-write":
                        start = time.monotonic()  # the read is held again from here
                self.span(shape.split("-")[0] if shape != "read-write" else "read", start)
        except mpilock.LockTimeout:
            self.timeouts += 1


def run(total_ops: int, comm: MPI.Intracomm = MPI.COMM_WORLD, seed: int = 0) -> dict[str, float]:
    """Run about ``total_ops`` lock operations over ``comm``; return the figures on every rank."""
    ctrl = mpilock.sync(comm)
    worker = Worker(ctrl, seed * 1000 + comm.rank)
    comm.barrier()
    began = time.monotonic()
    while worker.ops < total_ops // comm.size:
        worker.step()
    comm.barrier()
    wall = time.monotonic() - began
    with ctrl.write(timeout=30):  # a leaked lock would make this time out
        pass
    ctrl.close()
    spans = [s for part in comm.allgather(worker.spans) for s in part]
    return {
        "ranks": comm.size,
        "ops": comm.allreduce(worker.ops),
        "timeouts": comm.allreduce(worker.timeouts),
        "spans": len(spans),
        "violations": len(overlaps(spans)),
        "wall": wall,
    }


def main() -> int:
    """Entry point for ``make stress``."""
    total = int(os.environ.get("MPILOCK_STRESS_OPS", "10000"))
    figures = run(total, seed=int(os.environ.get("MPILOCK_STRESS_SEED", "1")))
    if MPI.COMM_WORLD.rank == 0:
        print(
            f"stress: {figures['ops']} lock operations over {figures['ranks']} ranks in {figures['wall']:.1f} s "
            f"({figures['ops'] / figures['wall']:.0f} ops/s), {figures['timeouts']} timeouts, "
            f"{figures['spans']} held intervals checked, {figures['violations']} violations"
        )
    return 1 if figures["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
