"""What every phase of the benchmark shares: the ranks, the barriers, a table row, and running a phase on some ranks.

:func:`sample_on` is the one shape of a phase: every rank meets in a quiet
barrier, one rank takes a sample while the others serve, compute or nap, and
the samples end up on every rank.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from mpi4py import MPI

WORLD = MPI.COMM_WORLD
MASTER = 0
CLIENT = 1
TAG_FLOOR = 4242
TAG_BUSY = 4243
TAG_RAW = 4244

US = 1e-6
T = TypeVar("T")


@dataclass
class Row:
    """One line of the result table (built on rank 0 only)."""

    name: str
    value: float
    unit: str
    """``us``, ``ms``, ``s``, ``%``, ``/s``, ``MiB`` (a size in bytes) or ``keys`` (a count)."""
    ratio: float | None = None
    """The figure in floors (a time divided by the floor round trip)."""
    target: str = ""
    ok: bool | None = None
    note: str = ""


@dataclass
class Plan:
    """What one run of the benchmark measures: its phases, its scale and the floor every row is set against."""

    wanted: set[str]
    scale: float
    floor: float = 0.0
    """Seconds of the floor round trip, once measured."""
    payload_max: int = 10**9
    rows: list[Row] = field(default_factory=list)

    def n(self, count: int) -> int:
        """``count`` scaled, at least 10."""
        return max(10, int(count * self.scale))


def quiet_barrier(nap: float = 0.001) -> None:
    """Barrier on ``COMM_WORLD`` that sleeps ``nap`` seconds between tests instead of spinning."""
    request = WORLD.Ibarrier()
    while not request.Test():
        time.sleep(nap)


def hot_barrier() -> None:
    """Barrier on ``COMM_WORLD`` that busy-polls MPI progress (the MPI library's own wait)."""
    WORLD.Ibarrier().Wait()


def share(value: object, root: int) -> Any:
    """Quietly synchronise, then broadcast ``value`` from ``root`` to every rank."""
    quiet_barrier()
    return WORLD.bcast(value, root=root)


def sample_on(
    who: int,
    repeats: int,
    sample: Callable[[], T],
    others: Callable[[], object] | None = None,
    settle: Callable[[], object] | None = None,
) -> list[T]:
    """Take ``repeats`` samples on rank ``who``; return them on every rank.

    Before each sample every rank meets in a :func:`quiet_barrier`; then
    ``who`` runs ``sample`` while every other rank runs ``others`` (if given:
    echo, compute, wait in some way; by default it goes on to the next
    barrier), and after it every rank runs ``settle`` (a closing barrier, if
    the phase wants the others held until the sample is taken).
    """
    rank = WORLD.Get_rank()
    samples: list[T] = []
    for _ in range(repeats):
        quiet_barrier()
        if rank == who:
            samples.append(sample())
        elif others is not None:
            others()
        if settle is not None:
            settle()
    return cast(list[T], share(samples if rank == who else None, who))


def timed_ops(lock: Callable[[], AbstractContextManager[Any]], count: int) -> float:
    """Mean seconds of ``count`` acquire+release pairs of ``lock()``."""
    start = time.perf_counter()
    for _ in range(count):
        with lock():
            pass
    return (time.perf_counter() - start) / count


def warm_timed_ops(lock: Callable[[], AbstractContextManager[Any]], count: int) -> float:
    """:func:`timed_ops` after a tenth as many (at least 5) to warm up."""
    timed_ops(lock, max(5, count // 10))
    return timed_ops(lock, count)


def spin_compute(duration: float, chunk: float = 0.05) -> list[float]:
    """Run a pure-Python loop (never releases the GIL) for ``duration`` s; loop iterations/s per chunk."""
    rates: list[float] = []
    value = 0
    end = time.perf_counter() + duration
    while True:
        begin = time.perf_counter()
        if begin >= end:
            return rates
        done = 0
        now = begin
        while now - begin < chunk:
            for i in range(2000):
                value = (value * 31 + i) % 1000003
            done += 2000
            now = time.perf_counter()
        rates.append(done / (now - begin))


def timed_acquire(lock: Callable[[], AbstractContextManager[Any]]) -> float:
    """Seconds ``lock()`` takes to be made and acquired (it is released right after)."""
    start = time.perf_counter()
    with lock():
        return time.perf_counter() - start
