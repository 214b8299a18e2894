"""Every rank locking at once (``contended``), and the throughput loop the keyed phases share.

:func:`phase_throughput` is the one shape of these phases: every rank,
master included, loops over a lock for a while, then the master pools every
rank's waits and adds up their rates.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from ..controller import WindowController
from ..trace import percentile
from .common import MASTER, WORLD, Plan, Row, quiet_barrier, timed_acquire


@dataclass
class Throughput:
    """Every rank locking in a loop: grants per second (all ranks together) and wait percentiles, medians."""

    rate: float
    wait_p50: float
    wait_p99: float


def _loop_locks(lock: Callable[[], AbstractContextManager[Any]], seconds: float) -> tuple[list[float], float]:
    """Acquire and release ``lock()`` for ``seconds``; return the acquire latencies and the time it took."""
    latencies: list[float] = []
    begin = time.monotonic()
    end = begin + seconds
    while time.monotonic() < end:
        latencies.append(timed_acquire(lock))
    return latencies, time.monotonic() - begin


def percentiles_of(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 of ``samples``."""
    return percentile(samples, 50), percentile(samples, 99)


def phase_throughput(
    locks: dict[str, Callable[[], AbstractContextManager[Any]]], rounds: int, seconds: float
) -> dict[str, Throughput]:
    """Every rank (master included) loops over each lock of ``locks`` for ``seconds`` per round, in turn.

    The locks take turns within each round, so drift hits them alike.
    Results on the master (empty elsewhere).
    """
    rank = WORLD.Get_rank()
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in locks}
    for _ in range(rounds):
        for name, lock in locks.items():
            quiet_barrier()
            latencies, elapsed = _loop_locks(lock, seconds)
            quiet_barrier()
            gathered = WORLD.gather((latencies, elapsed), root=MASTER) or []  # None off the master
            if rank == MASTER:
                pooled = [x for lats, _ in gathered for x in lats]
                rate = sum(len(lats) / span for lats, span in gathered)
                figures[name].append((rate, *percentiles_of(pooled)))
    if rank != MASTER:
        return {}
    median = statistics.median
    return {
        name: Throughput(median(f[0] for f in rows), median(f[1] for f in rows), median(f[2] for f in rows))
        for name, rows in figures.items()
    }


def contended_rows(plan: Plan, ctrl: WindowController) -> list[Row]:
    """Every rank loops over ``read()``, then over ``write()``: read latency and write throughput (on the master)."""
    read = phase_throughput({"read": ctrl.read}, 3, 0.8 * plan.scale)
    write = phase_throughput({"write": ctrl.write}, 3, 0.8 * plan.scale)
    if not read:
        return []
    size, floor = WORLD.Get_size(), plan.floor
    reads, writes = read["read"], write["write"]
    return [
        Row(
            f"contended read() latency p50, {size} ranks",
            reads.wait_p50,
            "us",
            reads.wait_p50 / floor,
            note=f"p99 {reads.wait_p99 * 1e3:.2f} ms",
        ),
        Row(
            f"contended write() throughput, {size} ranks",
            writes.rate,
            "/s",
            1 / writes.rate / floor,
            note=f"x floor = time per grant; p50 wait {writes.wait_p50 * 1e3:.2f} ms",
        ),
    ]
