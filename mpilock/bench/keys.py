"""Keyed locks: ``keyed``, ``sites``, ``own-keys``, ``bounded`` and ``million``.

``keyed`` is rank 1's uncontended ``write(key)`` for a key seen before and a
fresh key, next to ``write()``; ``sites`` the same with acquire sites on and
off; ``own-keys`` every rank writing its own key, next to one key shared by
all; ``bounded`` is ``bounded(key, 2)`` from every rank; ``million`` locks
1,000,000 distinct keys once from ranks 1.., then reads the master's lock
table and RSS.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, cast

from .. import controller as controller_module
from ..controller import WindowController
from .common import CLIENT, MASTER, US, WORLD, Plan, Row, quiet_barrier, sample_on, timed_ops
from .contended import phase_throughput
from .memory import peak_rss, reset_peak_rss, rss


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

    def loops_on_client() -> dict[str, float]:
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
        return result

    return sample_on(CLIENT, 1, loops_on_client)[0]


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

    def loops_on_client() -> dict[str, float]:
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
        return {
            "on": statistics.median(means[True]),
            "off": statistics.median(means[False]),
            "cost": statistics.median(costs),
            "cost_p25": low,
            "cost_p75": high,
            "site()": statistics.median(calls),
        }

    return sample_on(CLIENT, 1, loops_on_client)[0]


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
    return MillionResult(total, seconds, in_use, len(table), before, rss(), peak_rss())


def keyed_rows(plan: Plan, ctrl: WindowController) -> list[Row]:
    """Rank 1's uncontended ``write()``, ``write(key)`` of a key seen before and of a fresh key."""
    floor = plan.floor
    keyed = phase_keyed(ctrl, 40, plan.n(500))
    default = keyed["default"]
    note = "40 rounds of the three loops, each round in a random order"
    rows = [Row("uncontended write() acquire+release, rank 1", default, "us", default / floor, note=note)]
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
    return rows


def sites_rows(plan: Plan, ctrl: WindowController) -> list[Row]:
    """Measure what acquire sites cost ``write(key)``: one capture timed alone, the loop with sites on and off."""
    sites = phase_sites(ctrl, 40, plan.n(500))
    on, off, cost, call = sites["on"], sites["off"], sites["cost"], sites["site()"]
    share_ = call / on
    note = f"one ctrl._site() call, {call / US:.2f} µs, timed alone, against write(key) with sites"
    rows = [Row("acquire-site capture, uncontended write(key)", share_, "%", None, "< 5 %", share_ < 0.05, note)]
    spread = f"{sites['cost_p25'] * 100:+.1f} % .. {sites['cost_p75'] * 100:+.1f} %"
    note = f"median of 40 pairs, quartiles {spread}; {on / US:.1f} µs with sites, {off / US:.1f} µs without"
    rows.append(Row("  the same loop, sites on vs off", cost, "%", None, note=note))
    return rows


def own_keys_rows(plan: Plan, ctrl: WindowController) -> list[Row]:
    """Throughput of every rank writing its own key, next to one key shared by all (rows on the master)."""
    size, floor = WORLD.Get_size(), plan.floor
    result = phase_throughput(
        {
            "own": lambda: ctrl.write(f"own-{WORLD.Get_rank()}"),
            "same": lambda: ctrl.write("shared"),
        },
        3,
        0.8 * plan.scale,
    )
    if not result:
        return []
    own, same = result["own"], result["same"]
    note = f"x floor = time per grant; {own.rate / same.rate:.2f}x one shared key; p50 wait "
    return [
        Row(
            f"own-key write(key) throughput, {size} ranks",
            own.rate,
            "/s",
            1 / own.rate / floor,
            note=note + f"{own.wait_p50 * 1e3:.2f} ms",
        ),
        Row(
            f"  one key shared by all {size} ranks",
            same.rate,
            "/s",
            1 / same.rate / floor,
            note=f"same rounds, interleaved; p50 wait {same.wait_p50 * 1e3:.2f} ms",
        ),
    ]


def bounded_rows(plan: Plan, ctrl: WindowController) -> list[Row]:
    """Throughput and waits of ``bounded(key, 2)`` taken by every rank in a loop (rows on the master)."""
    size, floor = WORLD.Get_size(), plan.floor
    result = phase_throughput({"bounded": lambda: ctrl.bounded("bench/fs", 2)}, 3, 0.8 * plan.scale)
    if not result:
        return []
    bounded = result["bounded"]
    rows = [
        Row(
            f"bounded(key, 2) throughput, {size} ranks",
            bounded.rate,
            "/s",
            1 / bounded.rate / floor,
            note="every rank loops, nothing done inside",
        )
    ]
    for q, value in (("p50", bounded.wait_p50), ("p99", bounded.wait_p99)):
        rows.append(Row(f"  bounded(key, 2) wait {q}, {size} ranks", value, "us", value / floor))
    return rows


def million_rows(plan: Plan, ctrl: WindowController) -> list[Row]:
    """Lock a million distinct keys (times ``--scale``) once each; report what the master kept of them."""
    size = WORLD.Get_size()
    total = max(1000, int(1_000_000 * plan.scale))
    million = phase_million(ctrl, total)
    if million is None:
        return []
    who = "rank 1" if size == 2 else f"ranks 1-{size - 1} splitting them"
    per_key = million.seconds / million.keys
    note = f"{who}; {per_key / US:.1f} µs per key"
    rows = [Row(f"{total:,} distinct keys, each locked once", million.seconds, "s", None, note=note)]
    note = f"{million.table} table entry (the default lock's)"
    rows.append(Row("  master: keys in use afterwards", million.in_use, "keys", None, "0", million.in_use == 0, note))
    grown = million.rss_after - million.rss_before
    note = (
        f"VmRSS {million.rss_before / 2**20:,.1f} MiB before, {million.rss_after / 2**20:,.1f} MiB after; "
        f"peak {million.rss_peak / 2**20:,.1f} MiB"
    )
    rows.append(Row("  master: RSS growth", grown, "MiB", None, note=note))
    return rows
