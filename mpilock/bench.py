"""Micro-benchmark of mpilock against a raw MPI round trip and mpi4py's RMA mutex.

Run it under MPI with at least two ranks (``make bench`` uses four)::

    mpiexec -n 4 python -m mpi4py -m mpilock.bench

Rank 0 is the master (it runs the lock server thread), rank 1 is the client of
the uncontended phases.  Rank 0 prints one table: each figure is a median over
repeats, shown with its ratio to the *floor* (a pickled mpi4py ``send``/``recv``
round trip between rank 1 and the master, measured in the same run) and, where
the issue sets one, a target with PASS/MISS.

Ranks that take no part in a phase wait in :func:`quiet_barrier` (a
non-blocking barrier tested between short sleeps), so they neither burn a core
nor disturb the measurement on an oversubscribed machine.  ``--switch-interval``
sets :func:`sys.setswitchinterval` on every rank, to study how the GIL bounds
grant latency while the master's application thread computes.

The phases of keyed locks: ``keyed`` (rank 1's uncontended ``write(key)`` for
a key seen before and a fresh key, next to ``write()``), ``sites`` (the same
with acquire sites on and off), ``own-keys`` (every rank writing its own key,
next to one key shared by all), ``bounded`` (``bounded(key, 2)`` from every
rank) and ``million`` (1,000,000 distinct keys locked once by ranks 1..,
then the master's lock table and RSS).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import os
import random
import resource
import statistics
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from mpi4py import MPI
from mpi4py.util.sync import Mutex

from . import controller as controller_module
from . import storm
from .controller import WindowController, sync
from .dedicated_server import dedicated
from .link import Link
from .server import backoff, loop
from .server import native as loops
from .server.loop import Channel
from .server.protocol import HEADER_LEN, TAG_REPLY, Op
from .trace import Recorder, percentile

WORLD = MPI.COMM_WORLD
MASTER = 0
CLIENT = 1
TAG_FLOOR = 4242
TAG_BUSY = 4243
TAG_RAW = 4244
PHASES = (
    "floor",
    "server",
    "mutex",
    "sporadic",
    "uncontended",
    "idle",
    "busy",
    "dedicated",
    "waiting",
    "contended",
    "payload",
    "keyed",
    "sites",
    "own-keys",
    "bounded",
    "million",
    "threads",
    "storm",
)

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


def timed_ops(lock: Callable[[], AbstractContextManager[Any]], count: int) -> float:
    """Mean seconds of ``count`` acquire+release pairs of ``lock()``."""
    start = time.perf_counter()
    for _ in range(count):
        with lock():
            pass
    return (time.perf_counter() - start) / count


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


# -- phases ---------------------------------------------------------------------------------------------------------
def phase_floor(repeats: int, count: int) -> float:
    """Median seconds of a pickled send/recv round trip rank 1 -> master -> rank 1 (master echoes)."""
    rank = WORLD.Get_rank()
    warm = max(10, count // 10)
    means: list[float] = []
    for _ in range(repeats):
        quiet_barrier()
        if rank == MASTER:
            for _ in range(warm + count):
                WORLD.send(WORLD.recv(source=CLIENT, tag=TAG_FLOOR), dest=CLIENT, tag=TAG_FLOOR)
        elif rank == CLIENT:
            message = (1, 2, 3, 4, 5)
            for _ in range(warm):
                WORLD.send(message, dest=MASTER, tag=TAG_FLOOR)
                WORLD.recv(source=MASTER, tag=TAG_FLOOR)
            start = time.perf_counter()
            for _ in range(count):
                WORLD.send(message, dest=MASTER, tag=TAG_FLOOR)
                WORLD.recv(source=MASTER, tag=TAG_FLOOR)
            means.append((time.perf_counter() - start) / count)
    result: float = share(statistics.median(means) if rank == CLIENT else None, CLIENT)
    return result


def phase_mutex(repeats: int, count: int) -> dict[str, float]:
    """``mpi4py.util.sync.Mutex`` acquire+release from rank 1 while the other ranks hot-wait or nap.

    Its ``Lock_all``/``Unlock_all`` epochs need every rank's MPI progress, so
    ranks that nap between tests slow it down.
    """
    rank = WORLD.Get_rank()
    mutex = Mutex(comm=WORLD)
    out: dict[str, float] = {}
    for mode in ("hot", "nap"):
        means: list[float] = []
        for _ in range(repeats):
            quiet_barrier()
            if rank == CLIENT:
                timed_ops(lambda: mutex, max(5, count // 10))
                means.append(timed_ops(lambda: mutex, count))
            if rank != CLIENT and mode == "hot":
                hot_barrier()
            else:
                quiet_barrier()
        out[mode] = share(statistics.median(means) if rank == CLIENT else None, CLIENT)
    mutex.free()
    return out


def phase_uncontended(ctrl: WindowController, repeats: int, count: int) -> dict[str, float]:
    """``read()``/``write()`` acquire+release from rank 1 while the master's app thread naps in a poll loop.

    Also ``"master"``: ``write()`` from the master's own application thread
    (its requests go to the server thread of the same process).
    """
    rank = WORLD.Get_rank()
    out: dict[str, float] = {}
    for kind, lock, who in (("read", ctrl.read, CLIENT), ("write", ctrl.write, CLIENT), ("master", ctrl.write, MASTER)):
        means: list[float] = []
        for _ in range(repeats):
            quiet_barrier()
            if rank == who:
                timed_ops(lock, max(5, count // 10))
                means.append(timed_ops(lock, count))
            quiet_barrier()  # an idle application thread: time.sleep(0.001) until everyone is here
        out[kind] = share(statistics.median(means) if rank == who else None, who)
    return out


def phase_idle(repeats: int, seconds: float) -> float:
    """Median CPU share of one core the master process uses while a controller is open and unused."""
    rank = WORLD.Get_rank()
    quiet_barrier()
    shares: list[float] = []
    if rank == MASTER:
        for _ in range(repeats):
            cpu, wall = time.process_time(), time.monotonic()
            time.sleep(seconds)
            shares.append((time.process_time() - cpu) / (time.monotonic() - wall))
    quiet_barrier(0.01)
    return statistics.median(shares) if rank == MASTER else 0.0


def phase_first_grant(ctrl: WindowController, repeats: int, idle: float) -> list[float]:
    """Seconds rank 1 waits for ``write()`` after every rank has left the lock alone for ``idle`` seconds."""
    waits: list[float] = []
    for _ in range(repeats):
        quiet_barrier()
        time.sleep(idle)
        if WORLD.Get_rank() == CLIENT:
            start = time.perf_counter()
            with ctrl.write():
                waits.append(time.perf_counter() - start)
    return list(share(waits if WORLD.Get_rank() == CLIENT else None, CLIENT))


@dataclass
class BusyResult:
    """Grant latencies seen by rank 1 while the master computes, and what serving cost the loop (medians)."""

    latencies: list[float]
    slowdown_serving: float
    """``1 - locking/idle`` loop rate over adjacent chunks: the cost of serving rank 1's locks."""
    slowdown_idle: float
    """``1 - idle/none`` loop rate over adjacent chunks: the cost of an open controller nobody uses."""
    off_cpu: float
    """Share of wall time the app thread lost off the CPU (waiting for the GIL) to serving, same pairs."""
    server_cpu: float
    """CPU share of one core used by the server thread while rank 1 locks."""
    pairs: int

    @property
    def slowdown(self) -> float:
        """Total slowdown of the loop while rank 1 locks, against no controller at all."""
        return 1 - (1 - self.slowdown_serving) * (1 - self.slowdown_idle)


def _compute_chunk(seconds: float) -> tuple[float, float, float]:
    """Run :func:`spin_compute` once; return its rate, this thread's CPU share and the other threads'."""
    cpu, own, wall = time.process_time(), time.thread_time(), time.monotonic()
    rate = statistics.median(spin_compute(seconds, seconds))
    wall = time.monotonic() - wall
    own = time.thread_time() - own
    return rate, own / wall, (time.process_time() - cpu - own) / wall


def _pair(order: random.Random, measure: Callable[[bool], T]) -> dict[bool, T]:
    """Run ``measure(True)`` and ``measure(False)`` back to back, in an order drawn from ``order``."""
    states = [True, False]
    order.shuffle(states)
    return {state: measure(state) for state in states}


def phase_busy(rounds: int, pairs: int, chunk: float = 0.05) -> BusyResult:
    """Master runs a pure-Python loop in ``chunk``-second pieces while rank 1 locks in every other piece.

    First the master alone compares chunks with and without an idle
    controller (on ``COMM_SELF``, ``rounds * pairs`` pairs).  Then, per round,
    a controller on every rank is opened and ``pairs`` pairs of chunks follow,
    one with rank 1 taking the write lock (random 0-4 ms think time) and one
    without, in random order; the master tells rank 1 with a message before
    each chunk.  Comparing the
    two chunks of a pair cancels the machine's drift (clock speed, other
    load: adjacent 50 ms chunks differ by ~2 % with nothing running).  The
    app thread's CPU share (``thread_time``/wall) tells the time it spent
    waiting for the GIL, which clock speed does not disturb.
    """
    rank = WORLD.Get_rank()
    serving: list[float] = []
    off_cpu: list[float] = []
    idle_vs_none: list[float] = []
    server_cpu: list[float] = []
    latencies: list[float] = []
    think = random.Random(1)
    order = random.Random(2)
    quiet_barrier(0.005)
    if rank == MASTER:  # an idle controller costs the same on any communicator: COMM_SELF opens fast
        for _ in range(rounds * pairs):

            def idle_chunk(open_: bool) -> float:
                alone = sync(MPI.COMM_SELF) if open_ else None
                rate = _compute_chunk(chunk)[0]
                if alone is not None:
                    alone.close()
                return rate

            rates = _pair(order, idle_chunk)
            idle_vs_none.append(1 - rates[True] / rates[False])
    for _ in range(rounds):
        quiet_barrier(0.005)
        ctrl = sync(WORLD, MASTER)
        quiet_barrier(0.005)
        if rank == MASTER:
            for _ in range(pairs):

                def locking_chunk(locking: bool) -> tuple[float, float, float]:
                    WORLD.send(locking, dest=CLIENT, tag=TAG_BUSY)
                    return _compute_chunk(chunk)

                result = _pair(order, locking_chunk)
                serving.append(1 - result[True][0] / result[False][0])
                off_cpu.append(result[False][1] - result[True][1])
                server_cpu.append(result[True][2])
            WORLD.send(None, dest=CLIENT, tag=TAG_BUSY)
        elif rank == CLIENT:
            locking = False
            while True:
                if WORLD.iprobe(source=MASTER, tag=TAG_BUSY):
                    message = WORLD.recv(source=MASTER, tag=TAG_BUSY)
                    if message is None:
                        break
                    locking = message
                elif locking:
                    start = time.perf_counter()
                    with ctrl.write():
                        latencies.append(time.perf_counter() - start)
                    time.sleep(think.uniform(0.0, 0.004))
                else:
                    time.sleep(0.001)
        quiet_barrier(0.005)
        ctrl.close()
    latencies = share(latencies if rank == CLIENT else None, CLIENT)
    if rank != MASTER:
        return BusyResult(latencies, 0.0, 0.0, 0.0, 0.0, 0)
    return BusyResult(
        latencies,
        statistics.median(serving),
        statistics.median(idle_vs_none),
        statistics.median(off_cpu),
        statistics.median(server_cpu),
        len(serving),
    )


def phase_dedicated(repeats: int, count: int) -> list[float]:
    """Grant latencies of rank 1 with rank 0 as a dedicated server while every other rank computes.

    Ranks >= 2 run a pure-Python loop for as long as rank 1 locks: the
    application load that a server thread would have to share the GIL with.
    """
    rank = WORLD.Get_rank()
    latencies: list[float] = []
    with dedicated(WORLD, MASTER) as ctrl:
        if ctrl is not None:
            for _ in range(repeats):
                done = ctrl.comm.Ibarrier() if rank != CLIENT else None
                if rank == CLIENT:
                    for _ in range(count):
                        start = time.perf_counter()
                        with ctrl.write():
                            latencies.append(time.perf_counter() - start)
                    ctrl.comm.Ibarrier().Wait()
                else:
                    assert done is not None
                    while not done.Test():  # compute until rank 1 is done
                        spin_compute(0.01, 0.01)
    return list(share(latencies if rank == CLIENT else None, CLIENT))


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
    quiet_barrier()
    waits: list[float] = []
    if rank == locker:
        for _ in range(count):
            time.sleep(period)
            start = time.perf_counter()
            with ctrl.write():
                waits.append(time.perf_counter() - start)
        WORLD.send(None, dest=MASTER if locker != MASTER else CLIENT, tag=TAG_BUSY)
    elif rank == MASTER or (locker == MASTER and rank == CLIENT):
        done = WORLD.irecv(source=locker, tag=TAG_BUSY)
        while not done.Test():
            if master == "computing" and rank == MASTER:
                spin_compute(0.05)
            else:
                time.sleep(0.005)
    quiet_barrier()
    return list(share(waits if rank == locker else None, locker))


def phase_cold_floor(period: float, count: int) -> list[float]:
    """Seconds of a pickled round trip rank 1 -> master -> rank 1 taken once every ``period`` s.

    The floor of the sporadic rows: the master echoes from a blocking
    ``recv``, so what this measures is what a machine costs a message after
    its processes and caches idled for ``period`` (a woken CPU, cold caches),
    which no lock server can go below.
    """
    rank = WORLD.Get_rank()
    quiet_barrier()
    waits: list[float] = []
    if rank == CLIENT:
        for n in range(count):
            time.sleep(period)
            start = time.perf_counter()
            WORLD.send(n, dest=MASTER, tag=TAG_RAW)
            WORLD.recv(source=MASTER, tag=TAG_RAW)
            waits.append(time.perf_counter() - start)
    elif rank == MASTER:
        for _ in range(count):
            WORLD.send(WORLD.recv(source=CLIENT, tag=TAG_RAW), dest=CLIENT, tag=TAG_RAW)
    quiet_barrier()
    return list(share(waits if rank == CLIENT else None, CLIENT))


def sporadic_rows(ctrl: WindowController, floor: float, scale: float) -> list[Row]:
    """Return the rows of the ``sporadic`` phase: grants of locks taken now and then, a waiting rank's CPU."""
    rows: list[Row] = []
    count = max(10, int(40 * scale))
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


@dataclass
class ContendedResult:
    """Every rank locking at once: read latency and write throughput, medians over rounds."""

    read_p50: float
    read_p99: float
    write_rate: float
    write_p50: float


def phase_contended(ctrl: WindowController, rounds: int, seconds: float) -> ContendedResult | None:
    """Every rank (master included) loops over ``read()`` then ``write()`` for ``seconds`` per round."""
    rank = WORLD.Get_rank()
    figures: dict[str, list[float]] = {"read_p50": [], "read_p99": [], "write_rate": [], "write_p50": []}
    for kind, lock in (("read", ctrl.read), ("write", ctrl.write)):
        for _ in range(rounds):
            quiet_barrier()
            latencies: list[float] = []
            begin = time.monotonic()
            end = begin + seconds
            while time.monotonic() < end:
                start = time.perf_counter()
                with lock():
                    latencies.append(time.perf_counter() - start)
            elapsed = time.monotonic() - begin
            quiet_barrier()
            gathered = WORLD.gather((latencies, elapsed), root=MASTER) or []  # None off the master
            if rank == MASTER:
                pooled = [x for lats, _ in gathered for x in lats]
                figures[f"{kind}_p50"].append(percentile(pooled, 50))
                if kind == "read":
                    figures["read_p99"].append(percentile(pooled, 99))
                else:
                    figures["write_rate"].append(sum(len(lats) / span for lats, span in gathered))
    if rank != MASTER:
        return None
    return ContendedResult(**{key: statistics.median(values) for key, values in figures.items()})


# -- keyed locks ----------------------------------------------------------------------------------------------------
def phase_keyed(ctrl: WindowController, rounds: int, count: int) -> dict[str, float]:
    """Uncontended ``write()`` of rank 1: the default lock, a key seen before and a fresh key each time.

    Rank 1 runs ``rounds`` rounds of the three loops of ``count`` locks back
    to back, in a random order per round, so that the machine's drift hits
    them alike (the other ranks nap in a barrier meanwhile).  Returns the
    median time of each loop and, as ``"seen/default"`` and
    ``"fresh/default"``, the median over rounds of the ratio within a round.
    Fresh keys are made before the loop (``next()`` of a list iterator is
    all the loop adds).
    """
    rank = WORLD.Get_rank()
    result: dict[str, float] | None = None
    quiet_barrier()
    if rank == CLIENT:
        order = random.Random(3)
        means: dict[str, list[float]] = {"default": [], "seen": [], "fresh": []}
        fresh = iter([f"fresh-{i}" for i in range((rounds + 1) * count)])
        loops: dict[str, Callable[[], AbstractContextManager[Any]]] = {
            "default": lambda: ctrl.write(),
            "seen": lambda: ctrl.write("bench/seen"),
            "fresh": lambda: ctrl.write(next(fresh)),
        }
        for lock in loops.values():  # warm up
            timed_ops(lock, count // 3)
        for _ in range(rounds):
            kinds = list(loops)
            order.shuffle(kinds)
            for kind in kinds:
                means[kind].append(timed_ops(loops[kind], count))
        median = statistics.median
        result = {kind: median(values) for kind, values in means.items()}
        for kind in ("seen", "fresh"):
            result[f"{kind}/default"] = median(k / d for k, d in zip(means[kind], means["default"], strict=True))
    shared: dict[str, float] = share(result, CLIENT)
    return shared


def phase_sites(ctrl: WindowController, pairs: int, count: int) -> dict[str, float]:
    """Measure what acquire sites cost rank 1's uncontended ``write(key)``: the loop with sites on and off.

    ``MPILOCK_SITES`` is read at import, so rank 1 (the only rank that locks
    here; the others nap in a barrier) switches the setting its controller
    reads, ``mpilock.controller.SETTINGS``, replaced with
    :func:`dataclasses.replace`, between loops of ``count`` locks: ``pairs``
    pairs of loops, on and off in a random order.  ``"cost"`` is the median
    over pairs of on/off - 1 (a pair shares the machine's state), with its
    quartiles ``"cost_p25"`` and ``"cost_p75"``.  Also
    ``"site()"``: the mean cost of one ``ctrl._site()`` call for a site seen
    before (what each lock call pays for it), timed on its own.
    """
    rank = WORLD.Get_rank()
    result: dict[str, float] | None = None
    quiet_barrier()
    if rank == CLIENT:
        order = random.Random(4)
        namespace = vars(controller_module)  # the controller reads its module's SETTINGS on every lock call
        settings = namespace["SETTINGS"]
        means: dict[bool, list[float]] = {True: [], False: []}
        try:
            timed_ops(lambda: ctrl.write("bench/sites"), count)  # warm up
            for _ in range(pairs):
                states = [True, False]
                order.shuffle(states)
                for state in states:
                    namespace["SETTINGS"] = dataclasses.replace(settings, sites=state)
                    means[state].append(timed_ops(lambda: ctrl.write("bench/sites"), count))
            namespace["SETTINGS"] = dataclasses.replace(settings, sites=True)
            site = ctrl._site
            site()  # named to the server once
            calls: list[float] = []
            for _ in range(pairs):
                start = time.perf_counter()
                for _ in range(count):
                    site()
                calls.append((time.perf_counter() - start) / count)
        finally:
            namespace["SETTINGS"] = settings
        costs = [on / off - 1 for on, off in zip(means[True], means[False], strict=True)]
        low, _, high = statistics.quantiles(costs, n=4)
        result = {
            "on": statistics.median(means[True]),
            "off": statistics.median(means[False]),
            "cost": statistics.median(costs),
            "cost_p25": low,
            "cost_p75": high,
            "site()": statistics.median(calls),
        }
    shared: dict[str, float] = share(result, CLIENT)
    return shared


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
        start = time.perf_counter()
        with lock():
            latencies.append(time.perf_counter() - start)
    return latencies, time.monotonic() - begin


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


def percentiles_of(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 of ``samples``."""
    return percentile(samples, 50), percentile(samples, 99)


@dataclass
class MillionResult:
    """Many distinct keys, each locked and released once, and what the master kept of them."""

    keys: int
    seconds: float
    in_use: int
    """Keys with holders or waiters on the master afterwards (``LockCore.lock_count``)."""
    table: int
    """Entries in the master's key table afterwards (the default lock's is always there)."""
    rss_before: int
    rss_after: int
    """The master's ``VmRSS`` in bytes before and after (0 off Linux)."""
    rss_peak: int
    """The master's peak RSS (``VmHWM``) while the keys were locked."""


def phase_million(ctrl: WindowController, total: int) -> MillionResult | None:
    """Ranks 1.. split ``total`` distinct keys, each locked and released once; the master measures itself.

    The master's application thread naps in a barrier meanwhile (its server
    thread serves).  Its RSS is read after a ``gc.collect()`` before and after.
    """
    rank, size = WORLD.Get_rank(), WORLD.Get_size()
    workers = size - 1
    gc.collect()
    quiet_barrier()
    before = reset_peak_rss() if rank == MASTER else 0
    quiet_barrier()
    start = time.monotonic()
    if rank != MASTER:
        write = ctrl.write
        for i in range(rank - 1, total, workers):
            with write(f"million/{i}"):
                pass
    quiet_barrier()
    seconds = time.monotonic() - start
    if rank != MASTER:
        return None
    gc.collect()
    channel = ctrl._channel
    assert channel is not None
    table = cast(Any, channel).core.keys  # either loop's core: every key it keeps, the default lock's included
    in_use = sum(1 for state in table.values() if not state.idle())
    rss = _status_kib("VmRSS")
    return MillionResult(total, seconds, in_use, len(table), before, 1024 * (rss or 0), peak_rss())


def server_cost(repeats: int, pairs: int, native: bool = False) -> float:
    """Median server-thread seconds per request (READ or RELEASE), measured in-process on ``COMM_SELF``.

    Queues ``pairs`` READ+RELEASE requests to a private :class:`Channel`, then
    times the :meth:`Channel.poll` calls that handle them: receive test,
    :class:`LockCore`, the statistics observer and the reply ``Isend`` -- the
    work the server thread does per request, without waits or GIL contention.
    With ``native``, the same through a native channel polled by :meth:`NativeChannel.help` (the C
    thread's work plus one call from Python; no thread serves it meanwhile).
    """
    if native:
        return _native_server_cost(repeats, pairs)
    comm = MPI.COMM_SELF.Dup()
    seen = [0]

    class Counting(Recorder):
        def observe(
            self, now: float, rank: int, op: int, seq: int, replies: list[Any], keys: tuple[bytes, ...] = (b"",)
        ) -> None:
            seen[0] += 1
            super().observe(now, rank, op, seq, replies, keys)

    channel = Channel(comm, Counting(1))
    link = Link(comm, 0)
    numbers = itertools.count(1)  # sequence numbers of slot 0
    headers = array("q", bytes(8 * HEADER_LEN * (pairs + 1)))
    costs: list[float] = []

    def expect(count: int) -> list[MPI.Request]:  # replies to self complete only once matched
        return [comm.Irecv([headers, HEADER_LEN, i * HEADER_LEN, MPI.INT64_T], 0, TAG_REPLY) for i in range(count)]

    for _ in range(repeats):
        replies = expect(pairs)
        for _ in range(pairs):
            link.send(Op.READ, next(numbers))
            link.send(Op.RELEASE, next(numbers))
        seen[0] = 0
        start = time.perf_counter()
        while seen[0] < 2 * pairs:
            channel.poll()
        costs.append((time.perf_counter() - start) / (2 * pairs))
        MPI.Request.Waitall(replies)
    replies = expect(1)
    link.send(Op.CLOSE, next(numbers))
    while not channel.finished.is_set():
        channel.poll()
    MPI.Request.Waitall(replies)
    link.finish()
    comm.Free()
    return statistics.median(costs)


def _native_server_cost(repeats: int, pairs: int) -> float:
    """:func:`server_cost` of the native loop: seconds per request of ``help()`` polls that served one."""
    from .server.native_loop import SERVICE as NATIVE
    from .server.native_loop import NativeChannel

    comm = MPI.COMM_SELF.Dup()
    channel = NativeChannel(comm, Recorder(1), NATIVE.graph, "bench")  # not added: only help() polls it
    link = Link(comm, 0)
    numbers = itertools.count(1)  # sequence numbers of slot 0
    headers = array("q", bytes(8 * HEADER_LEN * (pairs + 1)))
    costs: list[float] = []

    def expect(count: int) -> list[MPI.Request]:
        return [comm.Irecv([headers, HEADER_LEN, i * HEADER_LEN, MPI.INT64_T], 0, TAG_REPLY) for i in range(count)]

    for _ in range(repeats):
        replies = expect(pairs)
        for _ in range(pairs):
            link.send(Op.READ, next(numbers))
            link.send(Op.RELEASE, next(numbers))
        served = 0
        start = time.perf_counter()
        while served < 2 * pairs:
            served += channel.help()
        costs.append((time.perf_counter() - start) / (2 * pairs))
        MPI.Request.Waitall(replies)
        channel.drain()  # what the Python thread does with the records
    replies = expect(1)
    link.send(Op.CLOSE, next(numbers))
    while not channel.finished.is_set() and not channel.help():
        pass
    MPI.Request.Waitall(replies)
    channel.finish()
    link.finish()
    comm.Free()
    return statistics.median(costs)


# -- big payloads ---------------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    """Return field ``VmRSS``, ``VmHWM``, ... of ``/proc/self/status`` in KiB (``None`` off Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> int:
    """Reset this process's peak RSS (``VmHWM``) where Linux allows it; return the current RSS in bytes.

    Writing ``5`` to ``/proc/self/clear_refs`` sets ``VmHWM`` back to
    ``VmRSS``.  Without it (or off Linux) the peak is the lifetime
    ``ru_maxrss``, and growth figures are only upper bounds.
    """
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass
    rss = _status_kib("VmRSS")
    return 1024 * rss if rss is not None else 0


def peak_rss() -> int:
    """Peak RSS in bytes since the last :func:`reset_peak_rss` (``VmHWM``; lifetime ``ru_maxrss`` off Linux)."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return 1024 * hwm
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def available_memory() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (``None`` where unknown)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return 1024 * int(line.split()[1])
    except OSError:
        pass
    return None


@dataclass
class PayloadResult:
    """Share+collect of one payload size by one writer, against a raw transfer of the same bytes."""

    nbytes: int
    writer: int
    seconds: float
    """Median over repeats of the slowest of writer and reader, from a common start to the end of collect()."""
    raw: float
    """Median seconds of a raw ``Isend``/``Recv`` of ``nbytes`` from rank 0 into a pre-touched buffer on rank 1."""
    raw_fresh: float
    """The same into a newly allocated buffer (what any API that returns a new object must pay at least)."""
    growth: dict[int, float] = field(default_factory=dict)
    """Rank -> peak RSS growth during the fence, in payloads (median over repeats)."""
    other_locks: list[float] = field(default_factory=list)
    """Rank 2's ``write()`` latencies on another controller during the fences (3+ ranks, writer 1 only)."""


class _Locker:
    """A thread that takes ``ctrl.write()`` in a loop (0.5 ms apart) until stopped, recording the waits."""

    def __init__(self, ctrl: WindowController) -> None:
        self.latencies: list[float] = []
        self._ctrl = ctrl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-locker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            with self._ctrl.write():
                self.latencies.append(time.perf_counter() - start)
            time.sleep(0.0005)

    def stop(self) -> list[float]:
        """Stop the loop; return the latencies."""
        self._stop.set()
        self._thread.join()
        return self.latencies


def _raw_transfer(source: Any, target: Any, nbytes: int) -> float:
    """Seconds of one ``Isend`` rank 0 -> ``Recv`` rank 1 of ``nbytes`` into ``target`` (a new array if ``None``).

    Timed on rank 1 from the end of a busy barrier; the result is on every rank.
    """
    import numpy as np

    rank = WORLD.Get_rank()
    hot_barrier()
    start = time.perf_counter()
    if rank == MASTER:
        WORLD.Isend([source, MPI.BYTE], CLIENT, TAG_RAW).Wait()
    elif rank == CLIENT:
        buffer = np.empty(nbytes, dtype=np.uint8) if target is None else target
        WORLD.Recv([buffer, MPI.BYTE], MASTER, TAG_RAW)
        elapsed = time.perf_counter() - start
        del buffer
    result: float = WORLD.bcast(elapsed if rank == CLIENT else None, root=CLIENT)
    return result


def _share_collect(
    ctrl: WindowController, writer: int, source: Any, mark: int, other: WindowController | None
) -> tuple[float, list[float], list[float]]:
    """One fence in which ``writer`` shares ``source`` and the other of ranks 0 and 1 collects it.

    Returns (on rank 0) the slowest of the two ranks' times from a common
    start, every rank's peak RSS growth in bytes, and the latencies of rank 2
    locking controller ``other`` meanwhile (when rank 1 writes and there is a rank 2).
    """
    rank = WORLD.Get_rank()
    reader = CLIENT if writer == MASTER else MASTER
    if source is not None:
        source[0] = mark
    quiet_barrier()  # lets the server free the previous payload first
    before = reset_peak_rss()
    quiet_barrier()
    locker = _Locker(other) if other is not None and rank == 2 and writer == CLIENT else None
    start = time.perf_counter()
    with ctrl.single_write(rank=writer) as fence:
        fence.guard()
        fence.share(source)
    if rank == reader:
        got = fence.collect()
        if got.nbytes != source.nbytes or got[0] != mark or got[-1] != 1:
            raise AssertionError(f"collected payload of {source.nbytes} bytes is wrong")
        del got
    elapsed = time.perf_counter() - start
    locks = locker.stop() if locker is not None else []
    del fence  # and with it the collected object it keeps for later collect() calls
    grown = peak_rss() - before
    gathered = WORLD.gather((elapsed, grown, locks), root=MASTER) or []  # None off the master
    if rank != MASTER:
        return 0.0, [], []
    return (
        max(gathered[writer][0], gathered[reader][0]),
        [g for _, g, _ in gathered],
        [wait for *_, waits in gathered for wait in waits],
    )


def phase_payload(ctrl: WindowController, sizes: list[int], repeats: int) -> list[PayloadResult]:
    """``share`` of a numpy array of each size and ``collect`` on the other of ranks 0 and 1, both ways.

    Each of ``repeats`` rounds (after one more to warm up) runs, back to back
    so that the machine's drift hits all alike: a raw ``Isend``/``Recv`` of the same bytes
    (rank 0 -> 1) into a pre-touched buffer, the same into a new one, then
    ``single_write(rank=w)`` for ``w`` = 0 (the master) and 1, the writer
    sharing a pre-touched array and the other rank collecting it.  Ranks >= 2
    take part in the fences only; while rank 1 writes, rank 2 takes the write
    lock of another controller in a loop (the server must keep answering
    while a payload arrives).  Peak RSS is reset before every fence
    (``/proc/self/clear_refs``), so a growth is that of one share+collect
    (at 2 ranks; with more, the payload a rank >= 2 did not collect is freed
    during the next fence and offsets the master's figure).
    Medians over repeats; results on rank 0.
    """
    import numpy as np

    rank = WORLD.Get_rank()
    out: list[PayloadResult] = []
    other = sync(WORLD, MASTER) if WORLD.Get_size() > 2 else None
    for nbytes in sizes:
        source = np.ones(nbytes, dtype=np.uint8) if rank in (MASTER, CLIENT) else None
        target = np.ones(nbytes, dtype=np.uint8) if rank == CLIENT else None
        raw: list[float] = []
        fresh: list[float] = []
        times: dict[int, list[float]] = {MASTER: [], CLIENT: []}
        growth: dict[int, list[list[float]]] = {MASTER: [], CLIENT: []}
        locks: list[float] = []
        for repeat in range(repeats + 1):  # the first round warms up: pages the process never had cost more
            raw.append(_raw_transfer(source, target, nbytes))
            fresh.append(_raw_transfer(source, None, nbytes))
            for writer in (MASTER, CLIENT):
                elapsed, grown, waits = _share_collect(ctrl, writer, source, (repeat + writer + 2) % 256, other)
                times[writer].append(elapsed)
                growth[writer].append([g / nbytes for g in grown])
                if repeat:
                    locks += waits
        del source, target
        if rank == MASTER:
            median = statistics.median
            for writer in (MASTER, CLIENT):
                per_rank = {r: median(g[r] for g in growth[writer][1:]) for r in range(WORLD.Get_size())}
                result = PayloadResult(nbytes, writer, median(times[writer][1:]), median(raw[1:]), median(fresh[1:]))
                result.growth = per_rank
                result.other_locks = locks if writer == CLIENT else []
                out.append(result)
    if other is not None:
        other.close()
    return out


# -- report ---------------------------------------------------------------------------------------------------------
def _fmt(value: float, unit: str) -> str:
    if unit == "us":
        return f"{value / US:,.1f} µs"
    if unit == "ms":
        return f"{value * 1e3:,.2f} ms"
    if unit == "%":
        return f"{value * 100:.2f} %"
    if unit == "MiB":
        return f"{value / 2**20:,.1f} MiB"
    if unit == "s":
        return f"{value:,.1f} s"
    if unit == "keys":
        return f"{value:,.0f} keys"
    if unit == "findings":
        return f"{value:,.0f} findings"
    return f"{value:,.0f} /s"


def print_table(rows: list[Row], header: list[str]) -> None:
    """Print the rows as a fixed-width table under ``header`` lines."""
    width = max(len(r.name) for r in rows)
    for line in header:
        print(line)
    print(f"{'metric':<{width}}  {'median':>12}  {'x floor':>8}  {'target':<14}  result")
    print("-" * (width + 48))
    for r in rows:
        ratio = f"{r.ratio:.1f}" if r.ratio is not None else ""
        result = "" if r.ok is None else ("PASS" if r.ok else "MISS")
        note = f"  ({r.note})" if r.note else ""
        print(f"{r.name:<{width}}  {_fmt(r.value, r.unit):>12}  {ratio:>8}  {r.target:<14}  {result}{note}")
    sys.stdout.flush()


def _transport() -> str:
    if os.environ.get("MPIR_CVAR_NOLOCAL") == "1" or os.environ.get("FI_PROVIDER"):
        return f"netmod ({os.environ.get('FI_PROVIDER', 'default provider')}, no shared memory)"
    return "shared memory"


def run(phases: Iterator[str] | tuple[str, ...], scale: float, payload_max: int = 10**9) -> list[Row]:
    """Run the selected phases on every rank; return the table rows (non-empty on rank 0 only)."""
    wanted = set(phases)
    rank, size = WORLD.Get_rank(), WORLD.Get_size()
    rows: list[Row] = []
    on_master = rank == MASTER

    def add(row: Row) -> None:
        if on_master:
            rows.append(row)

    def n(count: int) -> int:
        return max(10, int(count * scale))

    floor = phase_floor(5, n(2000))
    add(Row("floor: pickled send/recv round trip 1<->0", floor, "us", 1.0, note="master echoes in MPI_Recv"))

    if "server" in wanted and on_master:
        cost = server_cost(5, n(300), native=loops.chosen() == "native")
        add(
            Row(
                "server work per request (in-process, no waits)",
                cost,
                "us",
                cost / floor,
                "≤ 0.5 µs",
                cost <= 0.5e-6,
                note=f"ceiling {1 / cost:,.0f} requests/s = {0.5 / cost:,.0f} locks/s",
            )
        )
        if loops.chosen() == "native":
            from .server.native_core import module

            core = statistics.median(module().time_core(n(20000)) for _ in range(5))
            note = "no MPI: the rest of the row above is MPI_Test, MPI_Isend and the call from Python"
            add(Row("  of which the native core (C, recording on)", core, "us", core / floor, note=note))

    if "mutex" in wanted:
        mutex = phase_mutex(5, n(400))
        add(Row("mpi4py Mutex acquire+release, others in MPI wait", mutex["hot"], "us", mutex["hot"] / floor))
        add(Row("mpi4py Mutex acquire+release, others napping", mutex["nap"], "us", mutex["nap"] / floor))

    if "busy" in wanted:
        busy = phase_busy(6, max(2, int(10 * scale)))
        p50, p99 = percentile(busy.latencies, 50), percentile(busy.latencies, 99)
        note = f"{len(busy.latencies)} grants, master in pure-Python loop"
        add(Row("busy master: grant latency p50, rank 1", p50, "ms", p50 / floor, "≤ 5x floor", p50 <= 5 * floor, note))
        add(Row("busy master: grant latency p99, rank 1", p99, "ms", p99 / floor, "≤ 20x floor", p99 <= 20 * floor))
        slow = busy.slowdown
        note = "vs no controller: the two rows below combined"
        add(Row("busy master: loop slowdown while rank 1 locks", slow, "%", None, "≤ 0.5 %", slow <= 0.005, note))
        note = f"vs idle controller, median of {busy.pairs} adjacent 50 ms pairs"
        add(Row("  of which serving rank 1", busy.slowdown_serving, "%", note=note))
        add(Row("  of which an open idle controller", busy.slowdown_idle, "%", note="vs no controller"))
        note = "app thread off the CPU (waiting for the GIL), same pairs"
        add(Row("busy master: GIL time lost to serving", busy.off_cpu, "%", note=note))
        note = "process minus app-thread CPU"
        add(Row("busy master: server thread CPU while rank 1 locks", busy.server_cpu, "%", note=note))

    if "dedicated" in wanted:
        lat = phase_dedicated(5, n(300))
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        note = f"rank 0 only serves; ranks >= 2 compute in pure Python; p99 {p99 / US:,.0f} µs"
        add(
            Row(
                "dedicated server: write grant latency p50, rank 1",
                p50,
                "us",
                p50 / floor,
                "≤ 10x floor",
                p50 <= 10 * floor,
                note,
            )
        )

    ctrl = sync(WORLD, MASTER)
    try:
        if "sporadic" in wanted:
            for row in sporadic_rows(ctrl, floor, scale):
                add(row)
        if "uncontended" in wanted:
            unc = phase_uncontended(ctrl, 7, n(2000))
            for kind in ("read", "write"):
                value = unc[kind]
                add(
                    Row(
                        f"uncontended {kind}() acquire+release, rank 1",
                        value,
                        "us",
                        value / floor,
                        "≤ 2.5x floor",
                        value <= 2.5 * floor,
                        "master app thread naps 1 ms",
                    )
                )
            value = unc["master"]
            note = "the master's own thread; its waits serve its requests"
            add(
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
        if "idle" in wanted:
            idle = phase_idle(3, 1.0 * scale)
            add(
                Row(
                    "master CPU, controller open, nobody locks",
                    idle,
                    "%",
                    None,
                    "≤ 0.5 %",
                    idle <= 0.005,
                    "share of one core",
                )
            )
            first = phase_first_grant(ctrl, 5, 0.5 * scale)
            cap = _idle_cap()
            note = f"median of {len(first)}, max {max(first) * 1e3:.2f} ms; the idle sleep cap is {cap * 1e3:g} ms"
            add(
                Row(
                    "first write() grant after 0.5 s idle, rank 1",
                    statistics.median(first),
                    "ms",
                    statistics.median(first) / floor,
                    "≤ sleep cap",
                    max(first) <= cap + 0.001,
                    note,
                )
            )
        if "waiting" in wanted:
            waits = phase_waiting(ctrl, 2.0 * scale)
            if on_master:
                worst = max(waits)
                add(
                    Row(
                        "CPU of a rank waiting 2 s for a held lock",
                        statistics.median(waits),
                        "%",
                        None,
                        "≤ 5 %",
                        worst <= 0.05,
                        f"median of {len(waits)} waiters, max {worst * 100:.2f} %",
                    )
                )
        if "contended" in wanted:
            cont = phase_contended(ctrl, 3, 0.8 * scale)
            if cont is not None:
                add(
                    Row(
                        f"contended read() latency p50, {size} ranks",
                        cont.read_p50,
                        "us",
                        cont.read_p50 / floor,
                        note=f"p99 {cont.read_p99 * 1e3:.2f} ms",
                    )
                )
                add(
                    Row(
                        f"contended write() throughput, {size} ranks",
                        cont.write_rate,
                        "/s",
                        1 / cont.write_rate / floor,
                        note=f"x floor = time per grant; p50 wait {cont.write_p50 * 1e3:.2f} ms",
                    )
                )
        if "payload" in wanted:
            for row in payload_rows(ctrl, scale, payload_max):
                add(row)
        for row in keyed_rows(ctrl, wanted, floor, n, scale):
            add(row)
    finally:
        ctrl.close()
    return rows


def keyed_rows(
    ctrl: WindowController, wanted: set[str], floor: float, n: Callable[[int], int], scale: float
) -> list[Row]:
    """Run the phases of keyed locks that are ``wanted``; return their rows (on the master only)."""
    rows: list[Row] = []
    size = WORLD.Get_size()
    if "keyed" in wanted:
        keyed = phase_keyed(ctrl, 40, n(500))
        default = keyed["default"]
        note = "40 rounds of the three loops, each round in a random order"
        rows.append(Row("uncontended write() acquire+release, rank 1", default, "us", default / floor, note=note))
        for kind, what in (("seen", "a key seen before"), ("fresh", "a fresh key each time")):
            value = keyed[kind]
            ratio = keyed[f"{kind}/default"]
            rows.append(
                Row(
                    f"  write(key), {what}",
                    value,
                    "us",
                    value / floor,
                    "≤ 1.2x write()",
                    ratio <= 1.2,
                    f"{ratio:.2f}x write(), median of the rounds' ratios",
                )
            )
    if "sites" in wanted:
        sites = phase_sites(ctrl, 40, n(500))
        on, off, cost, call = sites["on"], sites["off"], sites["cost"], sites["site()"]
        share_ = call / on
        note = f"one ctrl._site() call, {call / US:.2f} µs, timed alone, against write(key) with sites"
        rows.append(
            Row("acquire-site capture, uncontended write(key)", share_, "%", None, "< 5 %", share_ < 0.05, note)
        )
        spread = f"{sites['cost_p25'] * 100:+.1f} % .. {sites['cost_p75'] * 100:+.1f} %"
        note = f"median of 40 pairs, quartiles {spread}; {on / US:.1f} µs with sites, {off / US:.1f} µs without"
        rows.append(Row("  the same loop, sites on vs off", cost, "%", None, note=note))
    if "own-keys" in wanted:
        result = phase_throughput(
            {
                "own": lambda: ctrl.write(f"own-{WORLD.Get_rank()}"),
                "same": lambda: ctrl.write("shared"),
            },
            3,
            0.8 * scale,
        )
        if result:
            own, same = result["own"], result["same"]
            note = f"x floor = time per grant; {own.rate / same.rate:.2f}x one shared key; p50 wait "
            rows.append(
                Row(
                    f"own-key write(key) throughput, {size} ranks",
                    own.rate,
                    "/s",
                    1 / own.rate / floor,
                    note=note + f"{own.wait_p50 * 1e3:.2f} ms",
                )
            )
            rows.append(
                Row(
                    f"  one key shared by all {size} ranks",
                    same.rate,
                    "/s",
                    1 / same.rate / floor,
                    note=f"same rounds, interleaved; p50 wait {same.wait_p50 * 1e3:.2f} ms",
                )
            )
    if "threads" in wanted:
        for key in ("shared", "own"):
            base: float | None = None
            for threads in (1, 2, 4, 8):
                rate = phase_threads(ctrl, threads, key, 0.6 * scale)
                if rate is None:
                    continue
                base = base or rate
                what = "one shared key" if key == "shared" else "own key per thread"
                note = f"{rate / base:.2f}x 1 thread per rank; every thread a holder of its own"
                rows.append(Row(f"threads: write(), {what}, {size} ranks x {threads}", rate, "/s", None, note=note))
    if "bounded" in wanted:
        result = phase_throughput({"bounded": lambda: ctrl.bounded("bench/fs", 2)}, 3, 0.8 * scale)
        if result:
            bounded = result["bounded"]
            rows.append(
                Row(
                    f"bounded(key, 2) throughput, {size} ranks",
                    bounded.rate,
                    "/s",
                    1 / bounded.rate / floor,
                    note="every rank loops, nothing done inside",
                )
            )
            for q, value in (("p50", bounded.wait_p50), ("p99", bounded.wait_p99)):
                rows.append(Row(f"  bounded(key, 2) wait {q}, {size} ranks", value, "us", value / floor))
    if "million" in wanted:
        total = max(1000, int(1_000_000 * scale))
        million = phase_million(ctrl, total)
        if million is not None:
            who = "rank 1" if size == 2 else f"ranks 1-{size - 1} splitting them"
            per_key = million.seconds / million.keys
            note = f"{who}; {per_key / US:.1f} µs per key"
            rows.append(Row(f"{total:,} distinct keys, each locked once", million.seconds, "s", None, note=note))
            note = f"{million.table} table entry (the default lock's)"
            rows.append(
                Row("  master: keys in use afterwards", million.in_use, "keys", None, "0", million.in_use == 0, note)
            )
            grown = million.rss_after - million.rss_before
            note = (
                f"VmRSS {million.rss_before / 2**20:,.1f} MiB before, {million.rss_after / 2**20:,.1f} MiB after; "
                f"peak {million.rss_peak / 2**20:,.1f} MiB"
            )
            rows.append(Row("  master: RSS growth", grown, "MiB", None, note=note))
    if "storm" in wanted:
        seconds = 10.0 * scale
        stormed, failures = storm.storm(ctrl, "mixed", seconds, seed=size)
        operations, interrupted, findings = storm.gather(ctrl, stormed, failures)
        note = (
            f"every lock kind, locks()/stats(), collect() of 1 MB; {operations:,} calls completed, "
            f"{interrupted:,} cut by an exception, in {seconds:g} s on {size} ranks"
        )
        rows.append(
            Row("interrupt storm (50 µs-2 ms): leftovers", len(findings), "findings", None, "0", not findings, note)
        )
    return rows


PAYLOAD_SIZES = (10**6, 10**8, 10**9)
"""Bytes shared by the payload phase (before ``--scale``)."""

PAYLOAD_MEMORY = 6
"""A size is skipped unless ``MemAvailable`` holds this many payloads (source, copies, raw buffers on 2 ranks)."""


def _size(nbytes: int) -> str:
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if nbytes >= factor:
            return f"{nbytes / factor:g} {unit}"
    return f"{nbytes} B"


def payload_rows(ctrl: WindowController, scale: float, payload_max: int) -> list[Row]:
    """Run :func:`phase_payload` on the sizes that fit ``payload_max`` and the free memory; rows on rank 0."""
    rows: list[Row] = []
    sizes = sorted({max(1024, int(s * scale)) for s in PAYLOAD_SIZES if s * scale <= payload_max})
    available = available_memory() if WORLD.Get_rank() == MASTER else None
    fits = WORLD.bcast([available is None or PAYLOAD_MEMORY * n <= available for n in sizes], root=MASTER)
    for nbytes, fit in zip(sizes, fits, strict=True):
        if not fit:
            note = f"skipped: MemAvailable {(available or 0) / 1e9:.1f} GB < {PAYLOAD_MEMORY} x payload"
            rows.append(Row(f"share+collect {_size(nbytes)}", 0.0, "ms", note=note))
    wanted = [n for n, fit in zip(sizes, fits, strict=True) if fit]
    for result in phase_payload(ctrl, wanted, 5):
        size = _size(result.nbytes)
        if result.writer == MASTER:
            note = f"into a pre-touched buffer; into a fresh one {result.raw_fresh * 1e3:,.1f} ms"
            rows.append(Row(f"raw Isend/Recv {size}, 0 -> 1", result.raw, "ms", note=note))
        ratio = result.seconds / result.raw
        reader = CLIENT if result.writer == MASTER else MASTER
        who = "0 (master) -> 1" if result.writer == MASTER else "1 -> 0 (master)"
        note = (
            f"{ratio:.1f}x raw, {result.seconds / result.raw_fresh:.1f}x raw into fresh; peak RSS (VmHWM) growth "
            f"writer {result.growth[result.writer]:.2f}x, reader {result.growth[reader]:.2f}x payload"
        )
        rows.append(
            Row(f"share+collect {size}, writer {who}", result.seconds, "ms", None, "≤ 3x raw", ratio <= 3, note)
        )
        if result.other_locks:
            waits = result.other_locks
            note = f"another controller, while rank 1's {size} arrives; p50 {percentile(waits, 50) * 1e3:.2f} ms"
            rows.append(Row(f"  rank 2 write() wait, max over {len(waits)}", max(waits), "ms", note=note))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the benchmark on every rank and print the table on rank 0."""
    parser = argparse.ArgumentParser(prog="python -m mpilock.bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", nargs="+", choices=PHASES, default=list(PHASES), help="phases to run (the floor always runs)"
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        metavar="MS",
        help="sys.setswitchinterval on every rank, in milliseconds (default: leave it)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count and duration")
    parser.add_argument(
        "--payload-max",
        type=float,
        default=PAYLOAD_SIZES[-1],
        metavar="BYTES",
        help="largest payload of the payload phase, after --scale (default 1e9; sizes for which "
        f"MemAvailable does not hold {PAYLOAD_MEMORY} payloads are skipped anyway)",
    )
    parser.add_argument(
        "--loop",
        choices=("native", "python", "both"),
        default="both" if loops.LOOP == "native" else "python",
        help="the lock server loop(s) to measure; both: the phases that depend on it run once per loop and the "
        "table shows the loops side by side (default: both where the native loop runs, else python)",
    )
    args = parser.parse_args(argv)
    size = WORLD.Get_size()
    if size < 2:
        if WORLD.Get_rank() == 0:
            print(
                "mpilock.bench needs at least 2 ranks (mpiexec -n 4 python -m mpi4py -m mpilock.bench); "
                "nothing to measure with 1."
            )
        return 0
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval * 1e-3)
    started = time.monotonic()
    tables: dict[str, list[Row]] = {}
    for which in ("native", "python") if args.loop == "both" else (args.loop,):
        loops.use(which)
        phases = tuple(args.only) if not tables else tuple(p for p in args.only if p not in LOOP_FREE)
        tables[which] = run(phases, args.scale, int(args.payload_max))
    loops.use(None)
    if WORLD.Get_rank() == MASTER:
        version = MPI.Get_library_version().splitlines()[0].strip()
        header = [
            f"mpilock.bench: {size} ranks on {os.cpu_count()} cores, {version}, {_transport()}",
            f"server loop: {', '.join(tables)} (this process runs {loops.LOOP} by default: {loops.REASON})",
            f"GIL switch interval {sys.getswitchinterval() * 1e3:g} ms "
            f"({loop.SWITCH_INTERVAL * 1e3:g} ms on the master while the python loop serves; the native loop leaves "
            f"it); backoff spin {backoff.SPIN_SECONDS / US:g} µs, sleeps {backoff.SHORTEST_SLEEP / US:g} µs .. "
            f"{backoff.LONGEST_SLEEP * 1e3:g} ms",
            "",
        ]
        if len(tables) == 1:
            print_table(next(iter(tables.values())), header)
        else:
            print_loops(tables, header)
        print(f"\n(run took {time.monotonic() - started:.1f} s)")
    return 0


def _idle_cap() -> float:
    """Return the longest sleep of the idle server loop that serves the controllers made now."""
    if loops.chosen() == "native":
        from .server import native_loop

        return native_loop.IDLE_SLEEP
    return backoff.LONGEST_SLEEP


LOOP_FREE = frozenset({"mutex", "dedicated"})
"""Phases whose figures do not depend on the master's server loop (run once with ``--loop both``)."""


def print_loops(tables: dict[str, list[Row]], header: list[str]) -> None:
    """Print the rows of every loop side by side (matched by name), each with its ratio and result.

    With both loops, the native loop's contended write throughput is also
    judged against the issue's target: at least 3x the python loop's.
    """
    names = list(dict.fromkeys(r.name for rows in tables.values() for r in rows))
    found = {which: {r.name: r for r in rows} for which, rows in tables.items()}
    if "native" in found and "python" in found:
        for name, mine in found["native"].items():
            other = found["python"].get(name)
            if name.startswith("contended write() throughput") and other is not None:
                mine.target, mine.ok = "≥ 3x python", mine.value >= 3 * other.value
    width = max(len(n) for n in names)
    for line in header:
        print(line)
    columns = "".join(f"  {which:>12}  {'x floor':>8}  {'result':<6}" for which in tables)
    print(f"{'metric':<{width}}{columns}  {'target':<14}  note")
    print("-" * (width + 34 * len(tables) + 24))
    for name in names:
        cells = ""
        target = note = ""
        for which in tables:
            row = found[which].get(name)
            if row is None:
                cells += f"  {'':>12}  {'':>8}  {'':<6}"
                continue
            ratio = f"{row.ratio:.1f}" if row.ratio is not None else ""
            result = "" if row.ok is None else ("PASS" if row.ok else "MISS")
            cells += f"  {_fmt(row.value, row.unit):>12}  {ratio:>8}  {result:<6}"
            target = target or row.target
            note = note or row.note
        print(f"{name:<{width}}{cells}  {target:<14}  {note}")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
