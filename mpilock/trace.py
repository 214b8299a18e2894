"""Lock tracing: what the server saw, as statistics and as a Chrome trace.

The server thread calls :meth:`Recorder.observe` after every request.  It
keeps per-rank counters always (cheap, bounded: wait percentiles come from
each rank's most recent ``WAIT_SAMPLES`` waits) and, when tracing is on, the
arrival/grant/release times of every lock.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import deque
from collections.abc import Collection, Sequence
from typing import Any

from .server.events import Send
from .server.protocol import Op, Reply

# Plain ints for the hot path (the server calls observe() on every request;
# enum attribute lookups cost ~60 ns each on CPython 3.11).
_ACQUIRE = frozenset({int(Op.READ), int(Op.WRITE), int(Op.FENCE_BEGIN)})
_READ, _RELEASE, _CANCEL, _CLOSE = int(Op.READ), int(Op.RELEASE), int(Op.CANCEL), int(Op.CLOSE)
_GRANTED, _DENIED = int(Reply.GRANTED), int(Reply.DENIED)

WAIT_SAMPLES = 10_000
"""Waits kept per rank for the percentiles, so a long run does not grow the master."""


class Recorder:
    """Per-rank lock statistics and (optionally) a full event log."""

    def __init__(self, size: int, keep_events: bool = False) -> None:
        """Record for ``size`` ranks; keep every event only if ``keep_events``."""
        self.size = size
        self.keep_events = keep_events
        self.events: list[tuple[float, int, str, str]] = []
        """(time, rank, phase, kind) with phase in request/grant/release/cancel/denied."""
        self._pending: dict[int, tuple[float, str]] = {}
        self._held: dict[int, tuple[float, str]] = {}
        self.counts = [{"read": 0, "write": 0} for _ in range(size)]
        self.waits: list[deque[float]] = [deque(maxlen=WAIT_SAMPLES) for _ in range(size)]
        self.wait_max = [0.0] * size
        self.hold_total = [0.0] * size

    def observe(self, now: float, rank: int, op: int, seq: int, replies: list[Send]) -> None:
        """Account for one request and the replies it caused."""
        if op in _ACQUIRE:
            kind = "read" if op == _READ else "write"
            self._pending[rank] = (now, kind)
            if self.keep_events:
                self._log(now, rank, "request", kind)
        elif op == _RELEASE:
            held = self._held.pop(rank, None)
            if held is not None:
                self.hold_total[rank] += now - held[0]
                if self.keep_events:
                    self._log(now, rank, "release", held[1])
        elif op == _CANCEL:
            if rank in self._held:
                start, kind = self._held.pop(rank)
                self.hold_total[rank] += now - start
            elif rank in self._pending:
                _, kind = self._pending.pop(rank)
            else:
                kind = "read"
            self._log(now, rank, "cancel", kind)
        elif op == _CLOSE:  # closing releases a held lock and drops a queued request
            if rank in self._held:
                start, kind = self._held.pop(rank)
                self.hold_total[rank] += now - start
                self._log(now, rank, "release", kind)
            elif rank in self._pending:
                _, kind = self._pending.pop(rank)
                self._log(now, rank, "cancel", kind)
        for reply in replies:
            code = reply.code
            if code == _GRANTED:
                pending = self._pending.pop(reply.rank, None)
                if pending is not None:
                    self._granted(now, reply.rank, pending)
            elif code == _DENIED and reply.rank in self._pending:
                _, kind = self._pending.pop(reply.rank)
                self._log(now, reply.rank, "denied", kind)

    def _granted(self, now: float, rank: int, pending: tuple[float, str]) -> None:
        asked, kind = pending
        self._held[rank] = (now, kind)
        self.counts[rank][kind] += 1
        wait = now - asked
        self.waits[rank].append(wait)
        if wait > self.wait_max[rank]:
            self.wait_max[rank] = wait
        if self.keep_events:
            self._log(now, rank, "grant", kind)

    def _log(self, now: float, rank: int, phase: str, kind: str) -> None:
        if self.keep_events:
            self.events.append((now, rank, phase, kind))

    def stats(self) -> dict[str, Any]:
        """Per-rank counts, wait percentiles (p50/p90/p99 of the recent waits, seconds), max wait and hold time."""
        ranks = []
        for rank in range(self.size):
            p50, p90, p99 = percentiles(self.waits[rank], (50, 90, 99))
            ranks.append(
                {
                    "rank": rank,
                    "reads": self.counts[rank]["read"],
                    "writes": self.counts[rank]["write"],
                    "wait_p50": p50,
                    "wait_p90": p90,
                    "wait_p99": p99,
                    "wait_max": self.wait_max[rank],
                    "hold_total": self.hold_total[rank],
                }
            )
        return {"ranks": ranks}

    def chrome_trace(self) -> dict[str, Any]:
        """Return the event log as a Chrome trace-event document (opens in Perfetto).

        One complete (``"ph": "X"``) event per span, on thread ``tid`` = rank:
        ``"wait read"``/``"wait write"`` from request to grant (or to the
        cancel, denial or close that ended the wait), then ``"read"``/``"write"``
        from grant to release.  Times are microseconds since the first event.
        A span still open when the log ends is dropped.
        """
        meta: list[dict[str, Any]] = [
            {"name": "process_name", "ph": "M", "pid": 0, "tid": 0, "args": {"name": "mpilock lock server"}}
        ]
        for rank in range(self.size):
            meta.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": rank, "args": {"name": f"rank {rank}"}})
        if not self.events:
            return {"traceEvents": meta, "displayTimeUnit": "ms"}
        origin = self.events[0][0]
        out: list[dict[str, Any]] = []
        open_spans: dict[int, tuple[float, str, str]] = {}
        for now, rank, phase, kind in self.events:
            us = (now - origin) * 1e6
            if rank in open_spans:
                start, name, category = open_spans.pop(rank)
                out.append(
                    {"name": name, "cat": category, "ph": "X", "pid": 0, "tid": rank, "ts": start, "dur": us - start}
                )
            if phase == "request":
                open_spans[rank] = (us, f"wait {kind}", "wait")
            elif phase == "grant":
                open_spans[rank] = (us, kind, "hold")
        return {"traceEvents": out + meta, "displayTimeUnit": "ms"}

    def write_chrome_trace(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`chrome_trace` as JSON to ``path``."""
        with open(path, "w") as f:
            json.dump(self.chrome_trace(), f)


def percentiles(samples: Collection[float], qs: Sequence[int]) -> list[float]:
    """Return the ``q``-th percentiles of ``samples`` for each ``q`` of ``qs`` (integers, 0 to 100).

    Percentile ``q`` lies ``q`` % of the way from the smallest sample to the
    largest in rank order, interpolated linearly between the two samples
    around it: :func:`statistics.quantiles` with ``method="inclusive"``
    (``q=0`` is the minimum, ``50`` the median, ``100`` the maximum).  No
    samples give ``0.0``.  The samples are sorted once for all of ``qs``.
    """
    for q in qs:
        if isinstance(q, bool) or not isinstance(q, int) or not 0 <= q <= 100:
            raise ValueError(f"percentiles are integers from 0 to 100, not {q!r}")
    if len(samples) < 2:
        only = float(next(iter(samples), 0.0))
        return [only for _ in qs]
    ordered = sorted(samples)
    points = [ordered[0], *statistics.quantiles(ordered, n=100, method="inclusive"), ordered[-1]]
    return [points[q] for q in qs]


def percentile(samples: Collection[float], q: int) -> float:
    """Return the ``q``-th percentile (0 to 100) of ``samples``; see :func:`percentiles`."""
    return percentiles(samples, (q,))[0]
