"""The phases, :func:`run` (every phase wanted, in a fixed order, on every rank) and ``python -m mpilock.bench``.

Each phase is a function of the :class:`~.common.Plan` (and, for most, of a
controller open on every rank) that returns its table rows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable

from mpi4py import MPI

from ..controller import WindowController, sync
from ..server import backoff, loop
from ..server import native as loops
from . import __doc__ as PACKAGE_DOC
from .busy import busy_rows, dedicated_rows
from .common import MASTER, US, WORLD, Plan, Row
from .contended import contended_rows
from .floor import floor_rows, mutex_rows, server_rows
from .keys import bounded_rows, keyed_rows, million_rows, own_keys_rows, sites_rows
from .payloads import PAYLOAD_MEMORY, PAYLOAD_SIZES, payload_rows
from .quiet import idle_rows, sporadic_rows, uncontended_rows, waiting_rows
from .table import print_loops, print_table, transport
from .threads import storm_rows, threads_rows

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

ALONE: dict[str, Callable[[Plan], list[Row]]] = {
    "server": server_rows,
    "mutex": mutex_rows,
    "busy": busy_rows,
    "dedicated": dedicated_rows,
}
"""Phases that open what they measure themselves, in the order they run (before the others)."""

MASTER_ONLY = frozenset({"server"})
"""Phases that run on the master alone (in-process)."""

SHARED: dict[str, Callable[[Plan, WindowController], list[Row]]] = {
    "sporadic": sporadic_rows,
    "uncontended": uncontended_rows,
    "idle": idle_rows,
    "waiting": waiting_rows,
    "contended": contended_rows,
    "payload": payload_rows,
    "keyed": keyed_rows,
    "sites": sites_rows,
    "own-keys": own_keys_rows,
    "threads": threads_rows,
    "bounded": bounded_rows,
    "million": million_rows,
    "storm": storm_rows,
}
"""Phases that run on one controller opened on every rank for all of them, in this order."""

LOOP_FREE = frozenset({"mutex", "dedicated"})
"""Phases whose figures do not depend on the master's server loop (run once with ``--loop both``)."""


def run(phases: Iterable[str], scale: float, payload_max: int = 10**9) -> list[Row]:
    """Run the selected phases on every rank; return the table rows (non-empty on rank 0 only)."""
    plan = Plan(set(phases), scale, payload_max=payload_max)
    on_master = WORLD.Get_rank() == MASTER
    rows = floor_rows(plan)
    for name, phase in ALONE.items():
        if name in plan.wanted and (on_master or name not in MASTER_ONLY):
            rows += phase(plan)
    ctrl = sync(WORLD, MASTER)
    try:
        for name, shared in SHARED.items():
            if name in plan.wanted:
                rows += shared(plan, ctrl)
    finally:
        ctrl.close()
    return rows if on_master else []


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the benchmark on every rank and print the table on rank 0."""
    parser = argparse.ArgumentParser(prog="python -m mpilock.bench", description=(PACKAGE_DOC or "").split("\n")[0])
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
            f"mpilock.bench: {size} ranks on {os.cpu_count()} cores, {version}, {transport()}",
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
