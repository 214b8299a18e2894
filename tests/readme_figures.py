"""Where every figure the README quotes from ``python -m mpilock.bench`` comes from: the one list.

Each entry is ``(README text, bench row, phase, loop, ranks)``:

- README text: the exact text of README.md that holds the figure (a table row
  up to its figures, or the sentence part of prose);
- bench row: text of the row's name as it stands in a module of ``mpilock/bench/``
  (the constant part of an f-string name), or ``None`` for a figure derived
  from rows rather than printed by one, with the derivation in ``note``;
- phase: the ``--only`` phase that prints it;
- loop: ``native``, ``python`` (``MPILOCK_NATIVE=0``, or ``--loop python``),
  ``both`` (a figure per loop) or ``none`` (no lock server involved);
- ranks: the ``mpiexec -n`` of the run.

tests/test_readme_figures.py checks that every README text listed is still in
the README, that every bench row and phase named still exists in
``mpilock/bench/``, and that the passages in :data:`CHECKED` quote no
figure missing from this list.  When a bench run changes a figure, change it
here and in the README together.
"""

# ruff: noqa: RUF001  (the README's own dashes, minus and multiplication signs, quoted exactly)

from __future__ import annotations

from typing import NamedTuple


class Figure(NamedTuple):
    """One README figure and the bench row behind it."""

    text: str
    row: str | None
    phase: str
    loop: str
    ranks: str
    note: str = ""


TABLE = "one make bench, 2026-12-07, 4 ranks on 2 cores (README: Performance)"
EIGHT = "mpiexec -n 8 ... --only ... right after the make bench of 2026-11-28 (not re-run on 2026-12-07)"
BASE = "uncontended-vs-11dbcdc: runs taken turn about in 11dbcdc and main, 2 ranks, 2026-12-07"

FIGURES: tuple[Figure, ...] = (
    # The Performance table: one `make bench`, both loops side by side.
    Figure(
        "| server work per request, in-process | 0.8 µs | 0.2 | 9.0 µs |",
        "server work per request (in-process, no waits)",
        "server",
        "both",
        "4",
        TABLE,
    ),
    Figure(
        "| uncontended `write()` acquire+release, rank 1 | 14.6 µs | 2.9 | 24.0 µs |",
        "uncontended {kind}() acquire+release, rank 1",
        "uncontended",
        "both",
        "4",
        TABLE,
    ),
    Figure(
        "| uncontended `read()`, rank 1, master app thread napping | 15.7 µs | 3.2 | 23.8 µs |",
        "uncontended {kind}() acquire+release, rank 1",
        "uncontended",
        "both",
        "4",
        TABLE,
    ),
    Figure(
        "| uncontended `write()` from the master's own thread | 38.0 µs | 7.6 | 203.1 µs |",
        "uncontended write() acquire+release, master",
        "uncontended",
        "both",
        "4",
        TABLE,
    ),
    Figure(
        "| busy master (computing in pure Python): grant p50 | 0.05 ms | 10.7 | 1.02 ms |",
        "busy master: grant latency p50, rank 1",
        "busy",
        "both",
        "4",
        TABLE,
    ),
    Figure(
        "| busy master: grant p99 | 2.08 ms | 418.0 | 3.24 ms |",
        "busy master: grant latency p99, rank 1",
        "busy",
        "both",
        "4",
        TABLE,
    ),
    Figure(
        "| busy master: compute slowdown while rank 1 locks | 0.31 % | | 10.65 % |",
        "busy master: loop slowdown while rank 1 locks",
        "busy",
        "both",
        "4",
        TABLE,
    ),
    Figure(
        "| busy master: GIL time lost to serving | −0.00 % | | 5.55 % |",
        "busy master: GIL time lost to serving",
        "busy",
        "both",
        "4",
        TABLE,
    ),
    Figure(
        "| master CPU, controller open, nobody locks | 0.07 % of a core | | 0.20 % |",
        "master CPU, controller open, nobody locks",
        "idle",
        "both",
        "4",
        TABLE,
    ),
    Figure(
        "| first `write()` grant after 0.5 s idle | 0.31 ms (max 0.37) | | 1.54 ms |",
        "first write() grant after 0.5 s idle, rank 1",
        "idle",
        "both",
        "4",
        TABLE,
    ),
    Figure(
        "| CPU of a rank waiting 2 s for a lock | 0.33 % | | 0.32 % |",
        "CPU of a rank waiting 2 s for a held lock",
        "waiting",
        "both",
        "4",
        TABLE,
    ),
    Figure(
        "| dedicated server, clients computing: grant p50 | 13.6 µs | 2.7 |",
        "dedicated server: write grant latency p50, rank 1",
        "dedicated",
        "none",
        "4",
        TABLE + "; the server rank runs the pure-Python loop in its main thread",
    ),
    Figure(
        "| contended `write()` throughput, 2 / 4 / 8 ranks | noisy¹ / 20,441 / 5,412 per s | | "
        "noisy¹ / 9,147 / 1,172 |",
        "contended write() throughput, {size} ranks",
        "contended",
        "both",
        "2, 4, 8",
        TABLE + "; 8 ranks: " + EIGHT + "; 2 ranks: footnote 1",
    ),
    Figure(
        "| contended `read()` latency p50, 2 / 4 / 8 ranks | 10¹ / 21.6 / 306 µs | | noisy¹ / 203.2 / 1,010 µs |",
        "contended read() latency p50, {size} ranks",
        "contended",
        "both",
        "2, 4, 8",
        TABLE + "; 8 ranks: " + EIGHT + "; 2 ranks: median of 6 runs, footnote 1",
    ),
    Figure(
        "| `write(key)`, a key seen before / a fresh key, vs `write()` | 1.11× / 1.12× | | "
        "27.0 / 29.0 µs (ratio not printed) |",
        "a key seen before",
        "keyed",
        "both",
        "4",
        TABLE,
    ),
    Figure(
        "| acquire-site capture, uncontended `write(key)` | 1.78 % | | 2.20 % |",
        "acquire-site capture, uncontended write(key)",
        "sites",
        "both",
        "4",
        TABLE,
    ),
    Figure(
        "| own-key `write(key)` throughput, 2 / 4 / 8 ranks | noisy¹ / 35,934 / 14,177 per s | | "
        "noisy¹ / 10,799 / 5,448 |",
        "own-key write(key) throughput, {size} ranks",
        "own-keys",
        "both",
        "2, 4, 8",
        TABLE + "; 8 ranks: " + EIGHT + "; 2 ranks: footnote 1",
    ),
    Figure(
        "| `bounded(key, 2)`, 4 ranks: throughput, wait p50 / p99 | 16,843 per s, 141.4 µs / 2.03 ms | | "
        "5,331 per s, 573.4 µs / 1.54 ms |",
        "bounded(key, 2) throughput, {size} ranks",
        "bounded",
        "both",
        "4",
        TABLE,
    ),
    Figure(
        "| 1,000,000 distinct keys, each locked once (ranks 1–3) | 32.0 s, 0 keys left | | 69.1 s, 0 keys left |",
        "distinct keys, each locked once",
        "million",
        "both",
        "4",
        TABLE,
    ),
    Figure(
        "| `mpi4py.util.sync.Mutex` acquire+release, others in MPI / napping | 397.1 µs / 4,511.3 µs | 79.9 / 908.2 |",
        "mpi4py Mutex acquire+release, others in MPI wait",
        "mutex",
        "none",
        "4",
        TABLE,
    ),
    # Footnote 1 of the table: 6 runs at 2 ranks, 2026-12-06, quoted as spreads (too noisy for figures).
    Figure(
        "1,899–25,324 per s (median 14,344), pure-Python 1,903–9,547 (median 5,874)",
        "contended write() throughput, {size} ranks",
        "contended",
        "both",
        "2",
        "mpiexec -n 2 ... --only contended own-keys --scale 0.5, 6 runs",
    ),
    Figure(
        "13,383–35,822 per s\n(median 25,631), pure-Python 3,804–17,015 (median 10,001)",
        "own-key write(key) throughput, {size} ranks",
        "own-keys",
        "both",
        "2",
        "the same 6 runs",
    ),
    Figure(
        "(7.5–12.7 µs, median 10 µs, the figure above)",
        "contended read() latency p50, {size} ranks",
        "contended",
        "native",
        "2",
        "the same 6 runs",
    ),
    Figure("(31–324 µs)", "contended read() latency p50, {size} ranks", "contended", "python", "2", "the same 6 runs"),
    Figure(
        "was 0.88–1.87 ms with the native loop and 1.23–2.83 ms with the pure-Python\none",
        "busy master: grant latency p50, rank 1",
        "busy",
        "both",
        "2",
        "3 of the 6 runs (--only uncontended busy mutex contended own-keys --scale 0.5)",
    ),
    Figure(
        "its slowdown −10 % to +20 % and 16–28 %",
        "busy master: loop slowdown while rank 1 locks",
        "busy",
        "both",
        "2",
        "the same 3 runs",
    ),
    Figure(
        "(load average 3–6, floors 3.3–73 µs)",
        "floor: pickled send/recv round trip 1<->0",
        "floor",
        "none",
        "2",
        "the same 6 runs; the floor row of every run",
    ),
    # "mpilock and RMA-window locks"
    Figure(
        "took 397.1 µs per acquire+release here when\nthe other ranks sat in MPI, and 4,511.3 µs",
        "mpi4py Mutex acquire+release, others",
        "mutex",
        "none",
        "4",
        TABLE,
    ),
    Figure(
        "at 2 ranks on a\nloaded VM, 0.3–1.0 ms and 5.2–5.9 ms",
        "mpi4py Mutex acquire+release, others",
        "mutex",
        "none",
        "2",
        "3 runs of mpiexec -n 2 ... --only uncontended busy mutex contended own-keys --scale 0.5, 2026-12-06",
    ),
    Figure(
        "costs 14.6 µs with the native\nloop (24.0 µs with the pure-Python loop",
        "uncontended {kind}() acquire+release, rank 1",
        "uncontended",
        "both",
        "4",
        TABLE,
    ),
    Figure(
        "grants at 0.05 ms at p50 and 2.08 ms at p99\nand gives up 0.31 % of its own speed",
        "busy master: grant latency p",
        "busy",
        "native",
        "4",
        TABLE,
    ),
    Figure(
        "grants wait 1.02 ms at p50 and\n3.24 ms at p99 and the master gives up 10.65 % of its speed",
        "busy master: grant latency p",
        "busy",
        "python",
        "4",
        TABLE,
    ),
    # The README's sentence on the uncontended path against 11dbcdc (the Performance page has the runs)
    Figure(
        "(rank 1 −8 %, the master's own thread −23 %; 2 ranks,\nruns taken turn about)",
        "uncontended write() acquire+release, master",
        "uncontended",
        "native",
        "2",
        BASE + "; medians of 7 runs: rank 1 21.1 against 22.9 µs, master 39.9 against 51.8 µs",
    ),
    Figure(
        "about 5 % slower with the pure-Python loop",
        "uncontended {kind}() acquire+release, rank 1",
        "uncontended",
        "python",
        "2",
        BASE + "; 3 runs, +1.5 %, +5 %, +7.5 %, median +5 %",
    ),
    # The cost model
    Figure(
        "The native server spends about 0.8 µs per request",
        "server work per request (in-process, no waits)",
        "server",
        "native",
        "4",
        TABLE,
    ),
    Figure(
        "the pure-Python one 9.0 µs in the same run, and 2–10 µs\ndepending on the machine",
        "server work per request (in-process, no waits)",
        "server",
        "python",
        "4",
        TABLE + "; 2-10 µs: the same row on other days and rank counts",
    ),
    Figure(
        "(~55,000 with the Python loop at 9 µs)",
        None,
        "server",
        "python",
        "4",
        "two requests per lock at the server work per request row's 9.0 µs",
    ),
    Figure(
        "gives 49 µs per grant at 4 ranks (2026-12-07) and 185 µs at 8\n(2026-11-28)",
        None,
        "contended",
        "native",
        "4, 8",
        "1 / the contended write() throughput row (20,441 per s in " + TABLE + "; 5,412 per s, " + EIGHT + ")",
    ),
    Figure(
        "each lock waits 1.02 ms at p50 (4 ranks)",
        "busy master: grant latency p50, rank 1",
        "busy",
        "python",
        "4",
        TABLE,
    ),
    Figure(
        "grants in 13.6 µs at p50 with clients computing (4 ranks)",
        "dedicated server: write grant latency p50, rank 1",
        "dedicated",
        "none",
        "4",
        TABLE,
    ),
)

SPORADIC = "one --only sporadic idle run per rank count, 2026-12-06 (README: Locks taken now and then)"

FIGURES += (
    # The sporadic table: rank 1's write() now and then; 2- and 4-rank runs, native column.
    Figure(
        "| every 200 ms, master idle: p50 / p90 | 315 / 411 µs | 276 / 368 µs | 135 / 125 µs |",
        "write() every 200 ms, rank 1, master idle",
        "sporadic",
        "native",
        "2, 4",
        SPORADIC + "; the floor column: the 'sporadic floor' rows",
    ),
    Figure(
        "| every 200 ms, master computing in pure Python: p50 / p90 | 267 / 322 µs | 263 / 322 µs |",
        "write() every 200 ms, rank 1, master computing",
        "sporadic",
        "native",
        "2, 4",
        SPORADIC,
    ),
    Figure(
        "| every 20 ms, master idle: p50 | 220 µs | 157 µs | 48 / 61 µs |",
        "write() every 20 ms, rank 1, master idle",
        "sporadic",
        "native",
        "2, 4",
        SPORADIC,
    ),
    Figure(
        "| the master's own `write()` every 200 ms: p50 | 207 µs | 234 µs |",
        "write() every 200 ms, master's own",
        "sporadic",
        "native",
        "2, 4",
        SPORADIC,
    ),
    Figure(
        "| CPU of a rank waiting 1 s for a held lock | 0.54 % | 0.34 % |",
        "CPU of a rank waiting 1 s for a held lock",
        "sporadic",
        "native",
        "2, 4",
        SPORADIC,
    ),
    Figure(
        "| 5 ms (default) | 3.2 ms | 0.65 % |",
        "first write() grant after 0.5 s idle, rank 1",
        "idle",
        "native",
        "2",
        "MPICH over TCP, MPILOCK_WAKE=0, MPILOCK_NATIVE_IDLE_SLEEP=0.005, --only idle sporadic --scale 0.5; "
        "the first column is the sporadic 200 ms row's p50",
    ),
)

CHECKED: tuple[tuple[str, str], ...] = (
    ("## Performance at a glance", "\n## "),
    ("## mpilock and RMA-window locks", "\n## "),
    ("**Cost model.**", "\n\n"),
    ("The 8-rank figures come from", "\n\n"),
)
"""Passages of the README or a docs page (from the first text to the next occurrence of the second) whose
every figure with a unit (µs, ms, %) must be part of a listed text."""
