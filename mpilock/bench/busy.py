"""A master that computes (``busy``) and a dedicated server (``dedicated``): serving locks beside real work.

``busy`` measures what serving rank 1's locks costs a master whose
application thread runs pure Python (grant latency, the loop's slowdown, the
GIL time lost); ``dedicated`` the grant latency when rank 0 only serves and
the other ranks compute.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from mpi4py import MPI

from ..controller import sync
from ..dedicated_server import dedicated
from ..trace import percentile
from .common import CLIENT, MASTER, TAG_BUSY, US, WORLD, Plan, Row, T, quiet_barrier, share, spin_compute, timed_acquire


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
                    latencies.append(timed_acquire(ctrl.write))
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
                    latencies += [timed_acquire(ctrl.write) for _ in range(count)]
                    ctrl.comm.Ibarrier().Wait()
                else:
                    assert done is not None
                    while not done.Test():  # compute until rank 1 is done
                        spin_compute(0.01, 0.01)
    return list(share(latencies if rank == CLIENT else None, CLIENT))


def busy_rows(plan: Plan) -> list[Row]:
    """Grant latency and the master's slowdown while it computes and rank 1 locks."""
    floor = plan.floor
    busy = phase_busy(6, max(2, int(10 * plan.scale)))
    p50, p99 = percentile(busy.latencies, 50), percentile(busy.latencies, 99)
    note = f"{len(busy.latencies)} grants, master in pure-Python loop"
    rows = [
        Row("busy master: grant latency p50, rank 1", p50, "ms", p50 / floor, "≤ 5x floor", p50 <= 5 * floor, note),
        Row("busy master: grant latency p99, rank 1", p99, "ms", p99 / floor, "≤ 20x floor", p99 <= 20 * floor),
    ]
    slow = busy.slowdown
    note = "vs no controller: the two rows below combined"
    rows.append(Row("busy master: loop slowdown while rank 1 locks", slow, "%", None, "≤ 0.5 %", slow <= 0.005, note))
    note = f"vs idle controller, median of {busy.pairs} adjacent 50 ms pairs"
    rows.append(Row("  of which serving rank 1", busy.slowdown_serving, "%", note=note))
    rows.append(Row("  of which an open idle controller", busy.slowdown_idle, "%", note="vs no controller"))
    note = "app thread off the CPU (waiting for the GIL), same pairs"
    rows.append(Row("busy master: GIL time lost to serving", busy.off_cpu, "%", note=note))
    note = "process minus app-thread CPU"
    rows.append(Row("busy master: server thread CPU while rank 1 locks", busy.server_cpu, "%", note=note))
    return rows


def dedicated_rows(plan: Plan) -> list[Row]:
    """Rank 1's grant latency with rank 0 a dedicated server and the other ranks computing."""
    floor = plan.floor
    lat = phase_dedicated(5, plan.n(300))
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    note = f"rank 0 only serves; ranks >= 2 compute in pure Python; p99 {p99 / US:,.0f} µs"
    return [
        Row(
            "dedicated server: write grant latency p50, rank 1",
            p50,
            "us",
            p50 / floor,
            "≤ 10x floor",
            p50 <= 10 * floor,
            note,
        )
    ]
