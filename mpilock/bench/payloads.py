"""Big payloads (``payload``): ``share`` and ``collect`` of a numpy array against a raw transfer of its bytes.

Besides the time, the peak RSS growth of every rank during the fence, and
(with 3+ ranks) how long rank 2 waits for another controller's lock while a
payload arrives: the server must keep answering meanwhile.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from mpi4py import MPI

from ..controller import WindowController, sync
from ..trace import percentile
from .common import CLIENT, MASTER, TAG_RAW, WORLD, Plan, Row, hot_barrier, quiet_barrier, timed_acquire
from .memory import available_memory, peak_rss, reset_peak_rss


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
            self.latencies.append(timed_acquire(self._ctrl.write))
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


PAYLOAD_SIZES = (10**6, 10**8, 10**9)
"""Bytes shared by the payload phase (before ``--scale``)."""

PAYLOAD_MEMORY = 6
"""A size is skipped unless ``MemAvailable`` holds this many payloads (source, copies, raw buffers on 2 ranks)."""


def _size(nbytes: int) -> str:
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if nbytes >= factor:
            return f"{nbytes / factor:g} {unit}"
    return f"{nbytes} B"


def payload_rows(plan: Plan, ctrl: WindowController) -> list[Row]:
    """Run :func:`phase_payload` on the sizes that fit ``payload_max`` and the free memory; rows on rank 0."""
    scale, payload_max = plan.scale, plan.payload_max
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
