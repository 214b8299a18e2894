"""The floor every row is set against, the server's own work per request (its ceiling), and mpi4py's ``Mutex``.

The floor is a pickled mpi4py ``send``/``recv`` round trip between rank 1 and
the master: what any lock served by another process costs at the least.  The
server row times the work the server thread does per request, in-process and
without waits, on either loop.
"""

from __future__ import annotations

import itertools
import statistics
import time
from array import array
from collections.abc import Callable
from typing import Any

from mpi4py import MPI
from mpi4py.util.sync import Mutex

from ..link import Link
from ..server import native as loops
from ..server.loop import Channel
from ..server.protocol import HEADER_LEN, TAG_REPLY, Op
from ..trace import Recorder
from .common import CLIENT, MASTER, TAG_FLOOR, WORLD, Plan, Row, hot_barrier, quiet_barrier, sample_on, warm_timed_ops


def phase_floor(repeats: int, count: int) -> float:
    """Median seconds of a pickled send/recv round trip rank 1 -> master -> rank 1 (master echoes)."""
    warm = max(10, count // 10)
    message = (1, 2, 3, 4, 5)

    def round_trips(times: int) -> None:
        for _ in range(times):
            WORLD.send(message, dest=MASTER, tag=TAG_FLOOR)
            WORLD.recv(source=MASTER, tag=TAG_FLOOR)

    def client() -> float:
        round_trips(warm)
        start = time.perf_counter()
        round_trips(count)
        return (time.perf_counter() - start) / count

    def echo() -> None:
        if WORLD.Get_rank() == MASTER:
            for _ in range(warm + count):
                WORLD.send(WORLD.recv(source=CLIENT, tag=TAG_FLOOR), dest=CLIENT, tag=TAG_FLOOR)

    return statistics.median(sample_on(CLIENT, repeats, client, others=echo))


def phase_mutex(repeats: int, count: int) -> dict[str, float]:
    """``mpi4py.util.sync.Mutex`` acquire+release from rank 1 while the other ranks hot-wait or nap.

    Its ``Lock_all``/``Unlock_all`` epochs need every rank's MPI progress, so
    ranks that nap between tests slow it down.
    """
    rank = WORLD.Get_rank()
    mutex = Mutex(comm=WORLD)
    out: dict[str, float] = {}
    for mode in ("hot", "nap"):
        wait = hot_barrier if mode == "hot" and rank != CLIENT else quiet_barrier
        means = sample_on(CLIENT, repeats, lambda: warm_timed_ops(lambda: mutex, count), settle=wait)
        out[mode] = statistics.median(means)
    mutex.free()
    return out


def server_cost(repeats: int, pairs: int, native: bool = False) -> float:
    """Median server-thread seconds per request (READ or RELEASE), measured in-process on ``COMM_SELF``.

    Queues ``pairs`` READ+RELEASE requests to a private :class:`Channel`, then
    times the :meth:`Channel.poll` calls that handle them: receive test,
    :class:`LockCore`, the statistics observer and the reply ``Isend`` -- the
    work the server thread does per request, without waits or GIL contention.
    With ``native``, the same through a native channel polled by :meth:`NativeChannel.help` (the C
    thread's work plus one call from Python; no thread serves it meanwhile).
    """
    comm = MPI.COMM_SELF.Dup()
    if native:
        from ..server.native_loop import SERVICE as NATIVE
        from ..server.native_loop import NativeChannel

        native_channel = NativeChannel(comm, Recorder(1), NATIVE.graph, "bench")  # not added: only help() polls it

        def closing() -> None:
            while not native_channel.finished.is_set() and not native_channel.help():
                pass

        help_, drain, finish = native_channel.help, native_channel.drain, native_channel.finish
        cost = _time_requests(comm, repeats, pairs, help_, drain, closing, finish)
    else:
        seen = [0]

        class Counting(Recorder):
            def observe(
                self, now: float, rank: int, op: int, seq: int, replies: list[Any], keys: tuple[bytes, ...] = (b"",)
            ) -> None:
                seen[0] += 1
                super().observe(now, rank, op, seq, replies, keys)

        channel = Channel(comm, Counting(1))

        def serve() -> int:
            before = seen[0]
            channel.poll()
            return seen[0] - before

        def finish() -> None:
            while not channel.finished.is_set():
                channel.poll()

        cost = _time_requests(comm, repeats, pairs, serve, lambda: None, finish, lambda: None)
    comm.Free()
    return cost


def _time_requests(
    comm: MPI.Intracomm,
    repeats: int,
    pairs: int,
    serve: Callable[[], int],
    after_round: Callable[[], object],
    closing: Callable[[], object],
    finish: Callable[[], object],
) -> float:
    """Median seconds per request of ``serve()`` calls (each returns how many it served) on ``repeats`` rounds.

    Each round queues ``pairs`` READ+RELEASE requests from slot 0 of a
    :class:`Link` on ``comm`` to the server that ``serve`` polls, times the
    calls that serve them, waits for the replies and runs ``after_round``.
    Then a CLOSE, served by ``closing()``; once it is answered, ``finish()``.
    """
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
        served = 0
        start = time.perf_counter()
        while served < 2 * pairs:
            served += serve()
        costs.append((time.perf_counter() - start) / (2 * pairs))
        MPI.Request.Waitall(replies)
        after_round()  # the native loop: what the Python thread does with the records
    replies = expect(1)
    link.send(Op.CLOSE, next(numbers))
    closing()
    MPI.Request.Waitall(replies)
    finish()
    link.finish()
    return statistics.median(costs)


def floor_rows(plan: Plan) -> list[Row]:
    """Measure the floor into ``plan``; return its row."""
    plan.floor = phase_floor(5, plan.n(2000))
    return [Row("floor: pickled send/recv round trip 1<->0", plan.floor, "us", 1.0, note="master echoes in MPI_Recv")]


def server_rows(plan: Plan) -> list[Row]:
    """Measure the server's work per request and, with the native loop, its core's share (on the master only)."""
    floor, n = plan.floor, plan.n
    cost = server_cost(5, n(300), native=loops.chosen() == "native")
    rows = [
        Row(
            "server work per request (in-process, no waits)",
            cost,
            "us",
            cost / floor,
            "≤ 0.5 µs",
            cost <= 0.5e-6,
            note=f"ceiling {1 / cost:,.0f} requests/s = {0.5 / cost:,.0f} locks/s",
        )
    ]
    if loops.chosen() == "native":
        from ..server.native_core import module

        core = statistics.median(module().time_core(n(20000)) for _ in range(5))
        note = "no MPI: the rest of the row above is MPI_Test, MPI_Isend and the call from Python"
        rows.append(Row("  of which the native core (C, recording on)", core, "us", core / floor, note=note))
    return rows


def mutex_rows(plan: Plan) -> list[Row]:
    """mpi4py's ``Mutex`` from rank 1, the others waiting hot or napping."""
    mutex = phase_mutex(5, plan.n(400))
    return [
        Row("mpi4py Mutex acquire+release, others in MPI wait", mutex["hot"], "us", mutex["hot"] / plan.floor),
        Row("mpi4py Mutex acquire+release, others napping", mutex["nap"], "us", mutex["nap"] / plan.floor),
    ]
