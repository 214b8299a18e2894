"""Locks taken alone: ``uncontended``, ``idle``, ``waiting`` and ``sporadic`` (now and then, the server idle between).

Every phase here has one rank lock while the others nap in a barrier (or, in
``sporadic``, the master computes): what a lock costs when nobody competes
for it, what an open controller costs when nobody locks, and what a waiting
rank burns.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

from ..controller import WindowController
from ..server import backoff
from ..server import native as loops
from ..trace import percentile
from .common import (
    CLIENT,
    MASTER,
    TAG_BUSY,
    TAG_RAW,
    US,
    WORLD,
    Plan,
    Row,
    quiet_barrier,
    sample_on,
    spin_compute,
    timed_acquire,
    warm_timed_ops,
)


def phase_uncontended(ctrl: WindowController, repeats: int, count: int) -> dict[str, float]:
    """``read()``/``write()`` acquire+release from rank 1 while the master's app thread naps in a poll loop.

    Also ``"master"``: ``write()`` from the master's own application thread
    (its requests go to the server thread of the same process).
    """
    out: dict[str, float] = {}
    locks: tuple[tuple[str, Callable[[], AbstractContextManager[Any]], int], ...] = (
        ("read", ctrl.read, CLIENT),
        ("write", ctrl.write, CLIENT),
        ("master", ctrl.write, MASTER),
    )
    for kind, lock, who in locks:
        # settle: an idle application thread, time.sleep(0.001) until everyone is here
        means = sample_on(who, repeats, partial(warm_timed_ops, lock, count), settle=quiet_barrier)
        out[kind] = statistics.median(means)
    return out


def phase_idle(repeats: int, seconds: float) -> float:
    """Median CPU share of one core the master process uses while a controller is open and unused."""

    def idle_share() -> float:
        cpu, wall = time.process_time(), time.monotonic()
        time.sleep(seconds)
        return (time.process_time() - cpu) / (time.monotonic() - wall)

    shares = sample_on(MASTER, 1, lambda: [idle_share() for _ in range(repeats)], settle=lambda: quiet_barrier(0.01))
    return statistics.median(shares[0])


def phase_first_grant(ctrl: WindowController, repeats: int, idle: float) -> list[float]:
    """Seconds rank 1 waits for ``write()`` after every rank has left the lock alone for ``idle`` seconds."""

    def grant() -> float:
        time.sleep(idle)
        return timed_acquire(ctrl.write)

    return sample_on(CLIENT, repeats, grant, others=lambda: time.sleep(idle))


def phase_waiting(ctrl: WindowController, seconds: float) -> list[float]:
    """CPU share of every rank that waits ``seconds`` for a read lock while the master holds the write lock."""
    rank = WORLD.Get_rank()
    quiet_barrier()
    share_: float | None = None
    if rank == MASTER:
        with ctrl.write():
            quiet_barrier()
            time.sleep(seconds)
    else:
        quiet_barrier()
        cpu, wall = time.process_time(), time.monotonic()
        with ctrl.read():
            share_ = (time.process_time() - cpu) / (time.monotonic() - wall)
    shares = WORLD.gather(share_, root=MASTER) or []  # None off the master
    quiet_barrier()
    return [s for s in shares if s is not None]


def phase_sporadic(ctrl: WindowController, locker: int, period: float, count: int, master: str) -> list[float]:
    """Seconds ``locker``'s ``write()`` waits, taken once every ``period`` s, ``count`` times.

    Meanwhile the master's application thread naps (``master="idle"``) or
    computes in pure Python (``"computing"``, never releasing the GIL but at
    forced switches); the other ranks nap.  This is how real programs lock: now
    and then, between computations, with the server idle in between.
    """
    rank = WORLD.Get_rank()

    def lock_now_and_then() -> list[float]:
        waits = []
        for _ in range(count):
            time.sleep(period)
            waits.append(timed_acquire(ctrl.write))
        WORLD.send(None, dest=MASTER if locker != MASTER else CLIENT, tag=TAG_BUSY)
        return waits

    def meanwhile() -> None:
        if rank == MASTER or (locker == MASTER and rank == CLIENT):
            done = WORLD.irecv(source=locker, tag=TAG_BUSY)
            while not done.Test():
                if master == "computing" and rank == MASTER:
                    spin_compute(0.05)
                else:
                    time.sleep(0.005)

    return sample_on(locker, 1, lock_now_and_then, others=meanwhile, settle=quiet_barrier)[0]


def phase_cold_floor(period: float, count: int) -> list[float]:
    """Seconds of a pickled round trip rank 1 -> master -> rank 1 taken once every ``period`` s.

    The floor of the sporadic rows: the master echoes from a blocking
    ``recv``, so what this measures is what a machine costs a message after
    its processes and caches idled for ``period`` (a woken CPU, cold caches),
    which no lock server can go below.
    """

    def round_trips() -> list[float]:
        waits = []
        for n in range(count):
            time.sleep(period)
            start = time.perf_counter()
            WORLD.send(n, dest=MASTER, tag=TAG_RAW)
            WORLD.recv(source=MASTER, tag=TAG_RAW)
            waits.append(time.perf_counter() - start)
        return waits

    def echo() -> None:
        if WORLD.Get_rank() == MASTER:
            for _ in range(count):
                WORLD.send(WORLD.recv(source=CLIENT, tag=TAG_RAW), dest=CLIENT, tag=TAG_RAW)

    return sample_on(CLIENT, 1, round_trips, others=echo, settle=quiet_barrier)[0]


def sporadic_rows(plan: Plan, ctrl: WindowController) -> list[Row]:
    """Return the rows of the ``sporadic`` phase: grants of locks taken now and then, a waiting rank's CPU."""
    floor = plan.floor
    rows: list[Row] = []
    count = max(10, int(40 * plan.scale))
    cases = [
        ("write() every 200 ms, rank 1, master idle", CLIENT, 0.2, "idle", (100e-6, 250e-6)),
        ("write() every 200 ms, rank 1, master computing", CLIENT, 0.2, "computing", (100e-6, 250e-6)),
        ("write() every 20 ms, rank 1, master idle", CLIENT, 0.02, "idle", (30e-6, None)),
        ("write() every 200 ms, master's own", MASTER, 0.2, "idle", (50e-6, None)),
    ]
    cold = {period: percentile(phase_cold_floor(period, count), 50) for period in (0.2, 0.02)}
    for period, value in cold.items():
        note = "master echoes from a blocking recv: what the idle machine costs a message"
        name = f"sporadic floor: round trip every {period * 1e3:g} ms, rank 1"
        rows.append(Row(name, value, "us", value / floor, note=note))
    for name, locker, period, master, (p50_target, p90_target) in cases:
        waits = phase_sporadic(ctrl, locker, period, count, master)
        p50, p90 = percentile(waits, 50), percentile(waits, 90)
        rows.append(
            Row(
                f"sporadic {name}: p50",
                p50,
                "us",
                p50 / floor,
                f"≤ {p50_target / US:g} µs",
                p50 <= p50_target,
                f"{len(waits)} locks; {p50 / cold[period]:.1f}x its floor; p90 {p90 / US:,.0f} µs, "
                f"max {max(waits) / US:,.0f} µs",
            )
        )
        if p90_target is not None:
            rows.append(
                Row(f"sporadic {name}: p90", p90, "us", p90 / floor, f"≤ {p90_target / US:g} µs", p90 <= p90_target)
            )
    waits = phase_waiting(ctrl, 1.0)
    if WORLD.Get_rank() == MASTER:
        worst = max(waits)
        note = f"median of {len(waits)} waiters, max {worst * 100:.2f} %"
        share_ = statistics.median(waits)
        rows.append(Row("CPU of a rank waiting 1 s for a held lock", share_, "%", None, "≤ 2 %", worst <= 0.02, note))
    return rows


def uncontended_rows(plan: Plan, ctrl: WindowController) -> list[Row]:
    """Uncontended ``read()`` and ``write()`` of rank 1, and ``write()`` of the master's own thread."""
    floor = plan.floor
    unc = phase_uncontended(ctrl, 7, plan.n(2000))
    rows = [
        Row(
            f"uncontended {kind}() acquire+release, rank 1",
            unc[kind],
            "us",
            unc[kind] / floor,
            "≤ 2.5x floor",
            unc[kind] <= 2.5 * floor,
            "master app thread naps 1 ms",
        )
        for kind in ("read", "write")
    ]
    value = unc["master"]
    note = "the master's own thread; its waits serve its requests"
    rows.append(
        Row(
            "uncontended write() acquire+release, master",
            value,
            "us",
            value / floor,
            "≤ 3x floor",
            value <= 3 * floor,
            note,
        )
    )
    return rows


def idle_cap() -> float:
    """Return the longest sleep of the idle server loop that serves the controllers made now."""
    if loops.chosen() == "native":
        from ..server import native_loop

        return native_loop.IDLE_SLEEP
    return backoff.LONGEST_SLEEP


def idle_rows(plan: Plan, ctrl: WindowController) -> list[Row]:
    """Measure the master's CPU with a controller open and unused, and the first grant after an idle spell."""
    idle = phase_idle(3, 1.0 * plan.scale)
    rows = [
        Row(
            "master CPU, controller open, nobody locks",
            idle,
            "%",
            None,
            "≤ 0.5 %",
            idle <= 0.005,
            "share of one core",
        )
    ]
    first = phase_first_grant(ctrl, 5, 0.5 * plan.scale)
    cap = idle_cap()
    note = f"median of {len(first)}, max {max(first) * 1e3:.2f} ms; the idle sleep cap is {cap * 1e3:g} ms"
    rows.append(
        Row(
            "first write() grant after 0.5 s idle, rank 1",
            statistics.median(first),
            "ms",
            statistics.median(first) / plan.floor,
            "≤ sleep cap",
            max(first) <= cap + 0.001,
            note,
        )
    )
    return rows


def waiting_rows(plan: Plan, ctrl: WindowController) -> list[Row]:
    """Measure the CPU share of ranks waiting 2 s for a held lock (rows on the master only)."""
    waits = phase_waiting(ctrl, 2.0 * plan.scale)
    if WORLD.Get_rank() != MASTER:
        return []
    worst = max(waits)
    return [
        Row(
            "CPU of a rank waiting 2 s for a held lock",
            statistics.median(waits),
            "%",
            None,
            "≤ 5 %",
            worst <= 0.05,
            f"median of {len(waits)} waiters, max {worst * 100:.2f} %",
        )
    ]
