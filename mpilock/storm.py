"""A storm of interrupts: exceptions from a signal handler at random instructions of lock operations.

Every rank installs a ``SIGALRM`` handler that re-arms ``setitimer`` at a
random 50 µs to 2 ms and raises :class:`Storm`, then runs one kind of lock
operation in a loop for a while, catching :class:`Storm` outside the
operation.  The handler raises only while an operation runs (a flag the loop
sets with a store, during which Python runs no handler), so every exception
lands inside the library or the operation's own ``with`` block, never in the
loop that counts them.

Afterwards :func:`check` proves that nothing was left behind: each rank
takes the write lock of every lock the kind used, in turn, with a timeout; no
lock is listed by ``locks()``; the server logged no protocol error.  Used by
``tests/test_storm_mpi.py`` (short runs) and ``python -m mpilock.bench
--phases storm`` (a longer one).
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .controller import WindowController
from .fence import _UNSET

KINDS = ("plain", "keys", "multi", "bounded", "nested", "promote", "queries", "collect", "mixed")
"""The kinds of operation a storm can run (``mixed`` picks one of the others at random each time)."""

SHORTEST, LONGEST = 50e-6, 2e-3
"""Range of the random intervals between two interrupts, seconds."""

SOON = 0.5
"""Timeout of :func:`check`'s later locks once one failed: leftovers are reported well within a test's limit."""

PAYLOAD_BYTES = 1 << 20
"""Size of the object a ``collect`` storm shares through a fence."""


class Storm(Exception):
    """The exception the storm's signal handler raises."""


@dataclass
class Result:
    """What one rank's storm did."""

    operations: int = 0
    """Operations that completed."""
    interrupted: int = 0
    """Operations an exception of the storm ended."""
    errors: list[str] = field(default_factory=list)
    """Unexpected exceptions (anything but :class:`Storm`), and wrong collected objects."""


class ProtocolErrors(logging.Handler):
    """Counts the server's protocol-error warnings (logger ``mpilock.server``)."""

    def __init__(self) -> None:
        """Start counting."""
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep a warning's text."""
        self.messages.append(record.getMessage())


def _operations(ctrl: WindowController, rng: random.Random, payload: Any) -> dict[str, Callable[[], object]]:
    """Return the operations of each kind (``payload``: the fence of a ``collect`` storm and its object)."""

    def plain() -> None:
        with ctrl.write():
            pass
        with ctrl.read():
            pass

    def keys() -> None:
        with ctrl.write("a"):
            pass
        with ctrl.read("b"):
            pass

    def multi() -> None:
        with ctrl.write(["a", "b"]):
            pass

    def bounded() -> None:
        with ctrl.bounded("slots", 2):
            pass

    def nested() -> None:
        with ctrl.write(), ctrl.read(), ctrl.write():
            pass

    def promote() -> None:
        with ctrl.read("p"), ctrl.write("p"):
            pass

    def queries() -> None:
        ctrl.locks()
        ctrl.stats()

    def collect() -> None:
        fence, expected = payload
        if not fence.access:  # forget what an earlier collect() kept: the server sends it again
            fence._received = None
            fence._shared = _UNSET
        got = fence.collect()
        if got != expected:
            raise AssertionError(f"collect() returned {len(got)} bytes, not the {len(expected)} shared")

    table: dict[str, Callable[[], object]] = {
        "plain": plain,
        "keys": keys,
        "multi": multi,
        "bounded": bounded,
        "nested": nested,
        "promote": promote,
        "queries": queries,
        "collect": collect,
    }
    choices = [f for name, f in table.items() if name != "collect" or payload is not None]
    table["mixed"] = lambda: rng.choice(choices)()
    return table


def share(ctrl: WindowController, seed: int = 0) -> tuple[Any, bytes]:
    """Share a :data:`PAYLOAD_BYTES` object through a fence; return ``(fence, object)``."""
    expected = random.Random(seed).randbytes(PAYLOAD_BYTES)
    with ctrl.single_write() as fence:
        fence.guard()
        fence.share(expected)
    return fence, expected


def run(ctrl: WindowController, kind: str, seconds: float, seed: int = 0, payload: Any = None) -> Result:
    """Run operations of ``kind`` for ``seconds`` under a storm of interrupts on this rank; not collective.

    ``payload`` is :func:`share`'s result, for the ``collect`` and ``mixed`` kinds.
    """
    rng = random.Random(seed * 7919 + ctrl.rank)
    operation = _operations(ctrl, rng, payload)[kind]
    result = Result()
    inside = [False]
    storming = [True]
    intervals = [rng.uniform(SHORTEST, LONGEST) for _ in range(997)]
    at = [0]

    def handler(signum: int, frame: Any) -> None:
        if not storming[0]:
            return  # the storm is over: a late alarm must not arm the timer again (see below)
        at[0] = (at[0] + 1) % len(intervals)
        signal.setitimer(signal.ITIMER_REAL, intervals[at[0]])
        if inside[0]:
            inside[0] = False
            raise Storm

    previous = signal.signal(signal.SIGALRM, handler)
    end = time.monotonic() + seconds
    signal.setitimer(signal.ITIMER_REAL, intervals[0])
    try:
        while time.monotonic() < end:
            try:
                inside[0] = True
                operation()
                inside[0] = False
                result.operations += 1
            except Storm:
                result.interrupted += 1
            except Exception as error:
                inside[0] = False
                result.errors.append(f"rank {ctrl.rank}: {type(error).__name__}: {error}")
                if len(result.errors) > 20:
                    break
    finally:
        # Over before the timer stops: an alarm that went off just before setitimer(0) runs its handler right
        # after it, and that handler re-armed the timer, so the next alarm went to the handler restored below
        # (pytest-timeout's, which raised at a random instruction of the test: once inside Event.set(),
        # leaving its lock held, and the rank hung; without one, SIGALRM's default action ends the process).
        storming[0] = False
        inside[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return result


def check(ctrl: WindowController, kind: str, timeout: float = 5.0) -> list[str]:
    """After a storm (collective): every rank takes every lock the kind uses, in turn; return what failed.

    A lock left held makes another rank's ``write(timeout=...)`` time out (the
    rank's later locks then wait :data:`SOON` only); any lock still listed by
    ``locks()`` afterwards is a leftover too.
    """
    comm = ctrl.comm
    failures: list[str] = []
    for turn in range(comm.Get_size()):
        comm.Barrier()
        if comm.Get_rank() == turn:
            for key in ((), ("a",), ("b",), ("p",)):
                lock = ctrl.write(*key, timeout=timeout if not failures else SOON)
                try:
                    with lock:
                        pass
                except Exception as error:
                    failures.append(f"rank {turn}: {lock!r}: {type(error).__name__}: {error}")
            try:
                wait = timeout if not failures else SOON
                with ctrl.bounded("slots", 2, timeout=wait), ctrl.bounded("slots", 2, timeout=0):
                    pass
            except Exception as error:
                failures.append(f"rank {turn}: bounded slots: {type(error).__name__}: {error}")
    comm.Barrier()
    left = ctrl.locks()
    if left:
        failures.append(f"rank {comm.Get_rank()}: locks() lists {left!r}")
    return failures


def storm(
    ctrl: WindowController, kind: str, seconds: float, seed: int = 0, threads: int = 0
) -> tuple[Result, list[str]]:
    """Share a payload if the kind needs one, run the storm, check; return this rank's findings (collective).

    The master also counts the server's protocol-error warnings.  With
    ``threads``, that many other threads of each rank lock meanwhile (keys
    ``a``, ``b`` and a bounded key, as holders of their own): the storm strikes
    only the main thread, and must leave theirs alone.
    """
    payload = share(ctrl, seed) if kind in ("collect", "mixed") else None
    errors = ProtocolErrors()
    logging.getLogger("mpilock.server").addHandler(errors)
    stop = threading.Event()
    others: list[str] = []

    def lock_on(index: int) -> None:
        try:
            while not stop.is_set():
                with ctrl.write("a", timeout=30), ctrl.read("b", timeout=30):
                    pass
                with ctrl.bounded("slots", 2, timeout=30):
                    pass
        except Exception as error:
            others.append(f"rank {ctrl.rank} thread {index}: {type(error).__name__}: {error}")

    lockers = [threading.Thread(target=lock_on, args=(i,), name=f"storm-{i}") for i in range(threads)]
    try:
        ctrl.comm.Barrier()
        for locker in lockers:
            locker.start()
        result = run(ctrl, kind, seconds, seed, payload)
        stop.set()
        for locker in lockers:
            locker.join()
        ctrl.comm.Barrier()
        failures = others + check(ctrl, kind)
    finally:
        stop.set()
        logging.getLogger("mpilock.server").removeHandler(errors)
    failures += [f"server: {m}" for m in errors.messages]
    return result, result.errors + failures


def gather(ctrl: WindowController, result: Result, failures: list[str]) -> tuple[int, int, list[str]]:
    """Return the total operations and interrupts of every rank, and every rank's findings (collective)."""
    everyone = ctrl.comm.allgather((result.operations, result.interrupted, failures))
    return (
        sum(o for o, _, _ in everyone),
        sum(i for _, i, _ in everyone),
        [f for _, _, fs in everyone for f in fs],
    )


__all__ = ["KINDS", "ProtocolErrors", "Result", "Storm", "check", "gather", "main", "run", "share", "storm"]


def main(argv: list[str] | None = None) -> int:
    """Run storms of the given kinds on every rank, print a table on rank 0; exit status 1 on any finding."""
    import argparse

    from .controller import sync

    parser = argparse.ArgumentParser(
        prog="python -m mpilock.storm",
        description="Interrupt lock calls at random instructions; check nothing is left.",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="storm length per kind (default 5)")
    parser.add_argument("kinds", nargs="*", default=list(KINDS), help=f"kinds to run (default all: {' '.join(KINDS)})")
    args = parser.parse_args(argv)
    ctrl = sync()
    failed = False
    for kind in args.kinds:
        result, failures = storm(ctrl, kind, args.seconds)
        operations, interrupted, findings = gather(ctrl, result, failures)
        failed = failed or bool(findings)
        if ctrl.rank == 0:
            verdict = "ok" if not findings else f"{len(findings)} FINDINGS"
            print(f"{kind:8} {operations:>9,} completed {interrupted:>7,} interrupted  {verdict}", flush=True)
            for finding in findings[:10]:
                print(f"    {finding}", flush=True)
    ctrl.close()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
