"""What OpenTelemetry spans cost rank 1's uncontended ``write()``, in one run.

Run it under MPI with at least two ranks::

    mpiexec -n 2 python -m mpi4py -m mpilock.bench_otel

Rank 1 times ``count`` ``write()`` acquire+release pairs (the master serves;
other ranks nap in a barrier) in each of these states, switched with
:func:`mpilock.otel.configure` between loops, all states once per round in
a random order, ``rounds`` rounds:

- ``off``: no hooks (``configure(enabled=False)``): what a lock costs without
  ``opentelemetry-api``;
- ``noop``: the API, no SDK: the global tracer provider is OpenTelemetry's
  no-op default, so no span is made;
- ``sdk``: an SDK ``TracerProvider`` with a ``SimpleSpanProcessor`` into an
  ``InMemorySpanExporter`` (cleared every loop): two spans per lock, exported
  on the caller's thread;
- ``batch``: an SDK provider with a ``BatchSpanProcessor`` into an exporter
  that drops them (as an OTLP exporter's set-up does, minus the network).

Rank 0 prints per state the median over rounds of the mean time per lock,
and per traced state the median over rounds of its ratio to ``off`` in the
same round (a round shares the machine's state), with the quartiles of that
ratio to show the noise, then what the ``noop`` state adds to a lock timed
on its own (:func:`hook_alone`), a figure the noise of a shared machine
cannot hide.  The ``sdk`` and ``batch`` rows need
``opentelemetry-sdk``; without ``opentelemetry-api`` only ``off`` is measured.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from mpi4py import MPI

from . import otel
from .controller import WindowController, sync

WORLD = MPI.COMM_WORLD
CLIENT = 1


def quiet_barrier(nap: float = 0.001) -> None:
    """Barrier on ``COMM_WORLD`` that sleeps between tests instead of spinning."""
    request = WORLD.Ibarrier()
    while not request.Test():
        time.sleep(nap)


def timed_writes(ctrl: WindowController, count: int) -> float:
    """Mean seconds of ``count`` ``write()`` acquire+release pairs."""
    start = time.perf_counter()
    for _ in range(count):
        with ctrl.write():
            pass
    return (time.perf_counter() - start) / count


def states() -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    """State name -> (switch to it, call after each loop), for what is installed here."""
    found: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
        "off": (lambda: otel.configure(enabled=False), lambda: None)
    }
    if not otel.AVAILABLE:
        return found
    found["noop"] = (otel.configure, lambda: None)
    try:
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SimpleSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    except ImportError:
        return found

    class Dropped(SpanExporter):
        """An exporter that sends nowhere."""

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    memory = InMemorySpanExporter()
    simple = TracerProvider()
    simple.add_span_processor(SimpleSpanProcessor(memory))
    batched = TracerProvider()
    batched.add_span_processor(BatchSpanProcessor(Dropped()))

    def flush() -> None:
        batched.force_flush()

    found["sdk"] = (lambda: otel.configure(simple), memory.clear)
    found["batch"] = (lambda: otel.configure(batched), flush)
    return found


def measure(ctrl: WindowController, rounds: int, count: int, seed: int = 20) -> dict[str, list[float]]:
    """Rank 1: per state, the mean seconds per lock of each round (empty elsewhere)."""
    means: dict[str, list[float]] = {}
    quiet_barrier()
    if WORLD.Get_rank() == CLIENT:
        table = states()
        means = {name: [] for name in table}
        order = random.Random(seed)
        names = list(table)
        try:
            for name in names:  # warm up every path once
                table[name][0]()
                timed_writes(ctrl, max(5, count // 10))
                table[name][1]()
            for _ in range(rounds):
                order.shuffle(names)
                for name in names:
                    switch, after = table[name]
                    switch()
                    means[name].append(timed_writes(ctrl, count))
                    after()
            if otel.AVAILABLE:
                means["hook"] = hook_alone(ctrl, rounds, count * 10)
        finally:
            otel.configure(enabled=otel.AVAILABLE)
    quiet_barrier()
    return means


def hook_alone(ctrl: WindowController, rounds: int, count: int) -> list[float]:
    """Seconds per call of what ``write()`` runs with the API and the no-op provider, and not without: the hook.

    ``Lock.__enter__`` asks :data:`mpilock.otel.HOOKS` for spans, which finds
    the no-op provider and declines (``__exit__`` only tests a slot).  Timed
    alone, it is the no-op state's cost without the noise of a lock around it.
    """
    otel.configure()
    lock = ctrl.write()
    hooks = otel.HOOKS
    assert hooks is not None
    enter = hooks.enter_lock
    token: list[Any] = []
    means: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(count):
            enter(lock, token)
        means.append((time.perf_counter() - start) / count)
    return means


def report(means: dict[str, list[float]]) -> list[str]:
    """Lines of the table: per state the median time per lock, its ratio to ``off`` and that ratio's quartiles."""
    off = means["off"]
    hook = means.pop("hook", None)
    lines = [f"{'state':<6} {'per lock':>10} {'vs off':>8} {'ratio p25..p75':>16} {'extra per lock':>15}"]
    for name, values in means.items():
        median = statistics.median(values)
        if name == "off":
            lines.append(f"{name:<6} {median * 1e6:>8.1f} us")
            continue
        ratios = [v / o for v, o in zip(values, off, strict=True)]
        low, mid, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
        extra = statistics.median(v - o for v, o in zip(values, off, strict=True))
        spread = f"{(low - 1) * 100:+.1f}..{(high - 1) * 100:+.1f}%"
        cost = f"{(mid - 1) * 100:+.1f}%"
        lines.append(f"{name:<6} {median * 1e6:>8.1f} us {cost:>8} {spread:>16} {extra * 1e6:>12.1f} us")
    if hook is not None:
        alone = statistics.median(hook)
        share = alone / statistics.median(off)
        lines.append(f"the no-op state's hook timed alone: {alone * 1e9:.0f} ns per lock, {share * 100:.2f} % of off")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; rank 0 prints the table."""
    parser = argparse.ArgumentParser(prog="python -m mpi4py -m mpilock.bench_otel", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="rounds of every state (default 15)")
    parser.add_argument("--count", type=int, default=2000, help="write() pairs per loop (default 2000)")
    args = parser.parse_args(argv)
    if WORLD.Get_size() < 2:
        print("mpilock.bench_otel needs at least 2 ranks: mpiexec -n 2 python -m mpi4py -m mpilock.bench_otel")
        return 2
    ctrl = sync()
    try:
        means: Any = measure(ctrl, args.rounds, args.count)
    finally:
        ctrl.close()
    means = WORLD.bcast(means, root=CLIENT)
    if WORLD.Get_rank() == 0:
        size = WORLD.Get_size()
        print(f"uncontended write() acquire+release on rank 1 of {size}, {args.rounds} rounds x {args.count} locks")
        print("\n".join(report(means)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
