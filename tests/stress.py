"""Randomized multi-rank stress runs: random holds, nesting and timeouts; checks overlaps.

Run ``mpiexec -n 8 python -m mpi4py tests/stress.py [--mode default|keyed|both]``
(``make stress`` runs both); the total number of lock operations of each mode
comes from ``MPILOCK_STRESS_OPS`` (default 10,000).

* ``default``: reads, writes, nesting and promotion of the default lock.
* ``keyed``: each step takes 2 or 3 keys of a small set in random order, in
  nested ``with`` blocks (read, write or a place of a bounded key), so ranks
  form cycles of waits: a rank refused with ``DeadlockError`` releases what it
  holds and retries after a short random pause.  Sometimes a step takes its
  keys in one multi-key ``write``.  Reports how many deadlocks were broken.

Exits non-zero if any write interval overlapped another rank's interval of the
same lock, a bounded key had more than its limit of holders, or a lock leaked
(a final write of every lock times out).  The short versions run inside the
test suite (test_stress_mpi.py).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from contextlib import ExitStack

from mpi4py import MPI
from mpitools import Span, most_at_once, overlaps

import mpilock


class Worker:
    """One rank's random walk through reads, writes, nesting and timeouts."""

    def __init__(self, ctrl: mpilock.WindowController, seed: int, who: int | None = None) -> None:
        self.ctrl = ctrl
        self.who = ctrl.rank if who is None else who
        """The holder in the recorded spans: the rank, or ``rank * 1000 + thread`` with threads."""
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
        self.spans.append((self.who, kind, start, time.monotonic()))

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


KEYS = ("k0", "k1", "k2", "k3", "k4")
"""The read/write keys of the keyed mode: few, so that ranks collide and cycles form."""
DEFAULT = "(default lock)"
"""Stands for the default lock (``read()``/``write()`` without a key) in a plan of the keyed mode."""
BOUNDED = {"io": 2, "one": 1}
"""The bounded keys of the keyed mode and their limits."""


class KeyedWorker(Worker):
    """One rank's random walk through nested keyed locks taken in random order, retrying after deadlocks."""

    def __init__(self, ctrl: mpilock.WindowController, seed: int, who: int | None = None) -> None:
        super().__init__(ctrl, seed, who)
        self.key_spans: dict[str, list[Span]] = {}
        self.deadlocks = 0
        self.retries_exhausted = 0

    def key_span(self, key: str, kind: str, start: float) -> None:
        self.key_spans.setdefault(key, []).append((self.who, kind, start, time.monotonic()))

    def plan(self) -> list[tuple[str, str]]:
        """2 or 3 distinct locks, in random order: (key, "read"/"write"/"slot")."""
        names = [*KEYS, *BOUNDED, DEFAULT]
        chosen = self.rng.sample(names, self.rng.choice([2, 3]))
        return [(key, "slot" if key in BOUNDED else self.rng.choice(["read", "write", "write"])) for key in chosen]

    def nest(self, plan: list[tuple[str, str]], timeout: float | None) -> None:
        """Take ``plan[0]``, then the rest inside it; record every hold."""
        if not plan:
            self.hold()
            return
        (key, kind), rest = plan[0], plan[1:]
        if kind == "slot":
            lock = self.ctrl.bounded(key, BOUNDED[key], timeout=timeout)
        else:
            method = self.ctrl.write if kind == "write" else self.ctrl.read
            lock = method(timeout=timeout) if key == DEFAULT else method(key, timeout=timeout)
        self.ops += 1
        with lock:
            start = time.monotonic()
            try:
                self.nest(rest, timeout)
            finally:
                self.key_span(key, kind, start)

    def together(self, keys: list[str]) -> None:
        """One multi-key write of ``keys`` (in the order given): never a deadlock."""
        self.ops += 1
        with ExitStack() as stack:
            stack.enter_context(self.ctrl.write(*keys, timeout=self.timeout()))
            start = time.monotonic()
            stack.callback(lambda: [self.key_span(key, "write", start) for key in keys])
            self.hold()

    def step(self) -> None:
        if self.rng.random() < 0.15:
            try:
                self.together(self.rng.sample(KEYS, self.rng.choice([2, 3])))
            except mpilock.LockTimeout:
                self.timeouts += 1
            return
        plan = self.plan()
        timeout = self.rng.choice([None, None, None, None, 0.0, 0.005, 0.05])
        for _ in range(100):
            try:
                self.nest(plan, timeout)
                return
            except mpilock.DeadlockError:
                self.deadlocks += 1
                time.sleep(self.rng.uniform(0.0, 0.002))  # let the other ranks of the cycle go on
            except mpilock.LockTimeout:
                self.timeouts += 1
                return
        self.retries_exhausted += 1


def run(
    total_ops: int, comm: MPI.Intracomm = MPI.COMM_WORLD, seed: int = 0, keyed: bool = False, threads: int = 0
) -> dict[str, float]:
    """Run about ``total_ops`` lock operations over ``comm``; return the figures on every rank.

    With ``threads``, each rank runs that many threads on its one controller,
    each a holder of its own (spans are told apart as ``rank * 1000 + thread``).
    """
    ctrl = mpilock.sync(comm)
    kind = KeyedWorker if keyed else Worker
    if threads:
        workers = [kind(ctrl, seed * 100_000 + comm.rank * 100 + t, comm.rank * 1000 + t) for t in range(threads)]
    else:
        workers = [kind(ctrl, seed * 1000 + comm.rank)]
    share = total_ops // (comm.size * len(workers))
    errors: list[BaseException] = []

    def drive(worker: Worker) -> None:
        try:
            while worker.ops < share:
                worker.step()
        except BaseException as error:
            errors.append(error)

    comm.barrier()
    began = time.monotonic()
    if threads:
        running = [threading.Thread(target=drive, args=(w,), name=f"stress-{i}") for i, w in enumerate(workers)]
        for thread in running:
            thread.start()
        for thread in running:
            thread.join()
    else:
        drive(workers[0])
    if errors:
        raise errors[0]
    comm.barrier()
    wall = time.monotonic() - began
    with ctrl.write(timeout=30), ctrl.write(*KEYS, timeout=30):  # a leaked lock would make this time out
        for key, limit in BOUNDED.items():
            with ctrl.bounded(key, limit, timeout=30):
                pass
    comm.barrier()
    # Releases are fire-and-forget: another rank's last one may still be on its way to the server, so
    # the table is asked until it is empty; a leaked lock keeps it non-empty and shows after the deadline.
    deadline = time.monotonic() + 10
    while (left := len(ctrl.locks())) and time.monotonic() < deadline:
        time.sleep(0.01)
    ctrl.close()
    spans = [s for part in comm.allgather([s for w in workers for s in w.spans]) for s in part]
    violations = len(overlaps(spans))
    key_spans: dict[str, list[Span]] = {}
    if keyed:
        for part in comm.allgather([w.key_spans for w in workers]):
            for spans_of in part:
                for key, mine in spans_of.items():
                    key_spans.setdefault(key, []).extend(mine)
        for key, mine in key_spans.items():
            violations += most_at_once(mine) > BOUNDED[key] if key in BOUNDED else len(overlaps(mine))
    return {
        "ranks": comm.size,
        "threads": len(workers),
        "ops": comm.allreduce(sum(w.ops for w in workers)),
        "timeouts": comm.allreduce(sum(w.timeouts for w in workers)),
        "deadlocks": comm.allreduce(sum(getattr(w, "deadlocks", 0) for w in workers)),
        "stuck": comm.allreduce(sum(getattr(w, "retries_exhausted", 0) for w in workers)),
        "spans": len(spans) + sum(len(s) for s in key_spans.values()),
        "violations": violations,
        "locks_left": left,
        "wall": wall,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``make stress``."""
    parser = argparse.ArgumentParser(description="randomized stress run of mpilock (under mpiexec)")
    parser.add_argument("--mode", choices=["default", "keyed", "both"], default="both")
    parser.add_argument("--threads", type=int, default=0, help="threads per rank, each a holder (default: none)")
    args = parser.parse_args(argv)
    total = int(os.environ.get("MPILOCK_STRESS_OPS", "10000"))
    seed = int(os.environ.get("MPILOCK_STRESS_SEED", "1"))
    failed = False
    for mode in ["default", "keyed"] if args.mode == "both" else [args.mode]:
        figures = run(total, seed=seed, keyed=mode == "keyed", threads=args.threads)
        failed = failed or bool(figures["violations"] or figures["locks_left"] or figures["stuck"])
        if MPI.COMM_WORLD.rank == 0:
            keyed = (
                f"{figures['deadlocks']} deadlocks broken, {figures['stuck']} steps that never got past them, "
                if mode == "keyed"
                else ""
            )
            print(
                f"stress ({mode}): {figures['ops']} lock operations over {figures['ranks']} ranks "
                f"x {figures['threads']} thread(s) in "
                f"{figures['wall']:.1f} s ({figures['ops'] / figures['wall']:.0f} ops/s), {figures['timeouts']} "
                f"timeouts, {keyed}{figures['spans']} held intervals checked, {figures['violations']} violations, "
                f"{figures['locks_left']} locks left",
                flush=True,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
