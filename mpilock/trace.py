"""Lock tracing: what the server saw, as statistics and as a Chrome trace.

The server thread calls :meth:`Recorder.observe` after every request.  It
keeps per-rank counters always (cheap, bounded: wait percentiles come from
each rank's most recent ``WAIT_SAMPLES`` waits), per-key totals for at most
``STATS_KEYS`` named keys (the keys that made ranks wait win a place; the
rest are merged), and, when tracing is on, the request/grant/release times of
every lock.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Any

from .server import keys as keyspace
from .server.events import Send
from .server.protocol import SLOT_SHIFT, Op, Reply

# Plain ints for the hot path (the server calls observe() on every request;
# enum attribute lookups cost ~60 ns each on CPython 3.11).
_KIND = {int(Op.READ): "read", int(Op.WRITE): "write", int(Op.FENCE_BEGIN): "write", int(Op.BOUNDED): "slot"}
_RELEASE, _DOWNGRADE, _CANCEL, _CLOSE = int(Op.RELEASE), int(Op.DOWNGRADE), int(Op.CANCEL), int(Op.CLOSE)
_GRANTED = int(Reply.GRANTED)
_ENDED = {int(Reply.DENIED): "denied", int(Reply.REFUSED): "refused", int(Reply.DEADLOCK): "deadlock"}

WAIT_SAMPLES = 10_000
"""Waits kept per rank for the percentiles, so a long run does not grow the master."""
STATS_KEYS = 1_000
"""Named keys with totals of their own in :meth:`Recorder.stats`; the others are merged."""
OTHER_KEYS = "(other keys)"
_COUNTS = {"read": 0, "write": 1, "slot": 2}
_DEFAULT = (keyspace.DEFAULT,)


class Recorder:
    """Per-rank and per-key lock statistics and (optionally) a full event log."""

    def __init__(self, size: int, keep_events: bool = False) -> None:
        """Record for ``size`` ranks; keep every event only if ``keep_events``."""
        self.size = size
        self.keep_events = keep_events
        self.events: list[tuple[float, int, int, str, str, bytes]] = []
        """(time, rank, slot, phase, kind, key) with phase in request/grant/release/cancel/denied/refused/deadlock;
        slot: the thread of the rank (:mod:`mpilock.holder`)."""
        self._pending: dict[tuple[int, int], tuple[float, str, tuple[bytes, ...]]] = {}
        """(rank, slot) -> the request that holder waits for: a thread of a rank (see :mod:`mpilock.holder`)."""
        self._held: dict[tuple[int, int], dict[bytes, tuple[float, str]]] = {}
        """(rank, slot) -> key -> since when, and how, that holder holds it."""
        self.counts = [[0, 0, 0] for _ in range(size)]
        """Per rank: grants of read, write and slot."""
        self.waits: list[deque[float]] = [deque(maxlen=WAIT_SAMPLES) for _ in range(size)]
        self.wait_max = [0.0] * size
        self.hold_total = [0.0] * size
        self.keys: dict[bytes, list[float]] = {}
        """Per named key: [reads, writes, slots, wait_total, wait_max, hold_total]."""
        self.other = [0.0] * 6
        """The same totals for the keys that did not fit in :attr:`keys`, or were dropped to make room."""
        self._unwaited: set[bytes] = set()
        """The keys of :attr:`keys` nobody has waited for yet: they make room when the table is full."""
        self.threads: dict[tuple[int, int], list[float]] = {}
        """Per holder (rank, slot) that was granted a lock: [reads, writes, slots, wait_total, wait_max, hold_total]."""
        self.thread_name: Callable[[int, int], str | None] = _no_name
        """(rank, slot) -> the name the thread gave the server; the server loop sets it
        (:func:`mpilock.server.holders.namer`)."""

    # -- recording -------------------------------------------------------------------
    def observe(
        self, now: float, rank: int, op: int, seq: int, replies: list[Send], keys: tuple[bytes, ...] = _DEFAULT
    ) -> None:
        """Account for one request on ``keys`` (default: the default lock) and the replies it caused."""
        kind = _KIND.get(op)
        holder = (rank, seq >> SLOT_SHIFT)
        if kind is not None:
            self._pending[holder] = (now, kind, keys)
            if self.keep_events:
                for key in keys:
                    self.events.append((now, rank, holder[1], "request", kind, key))
        elif op == _RELEASE:
            for key in keys:
                self._end_hold(now, holder, key, "release")
        elif op == _DOWNGRADE:
            for key in keys:
                self._end_hold(now, holder, key, "release")
                self._start_hold(now, holder, key, "read")
            self._log_all(now, holder, "grant", "read", keys)
        elif op == _CANCEL:
            pending = self._pending.pop(holder, None)
            if pending is not None:
                self._log_all(now, holder, "cancel", pending[1], pending[2])
            else:  # a grant that raced the cancel was handed back
                for key in keys:
                    self._end_hold(now, holder, key, "release")
        elif op == _CLOSE:  # closing releases the locks every thread of the rank holds and drops their requests
            for other in [h for h in self._held if h[0] == rank]:
                for key in list(self._held[other]):
                    self._end_hold(now, other, key, "release")
            for other in [h for h in self._pending if h[0] == rank]:
                _, kind, keys_ = self._pending.pop(other)
                self._log_all(now, other, "cancel", kind, keys_)
        for reply in replies:
            code = reply.code
            if code == _GRANTED:
                whose = (reply.rank, reply.seq >> SLOT_SHIFT)
                pending = self._pending.pop(whose, None)
                if pending is not None:
                    self._granted(now, whose, pending)
            elif code in _ENDED:
                whose = (reply.rank, reply.seq >> SLOT_SHIFT)
                if whose in self._pending:
                    _, kind, keys_ = self._pending.pop(whose)
                    self._log_all(now, whose, _ENDED[code], kind, keys_)

    def _granted(self, now: float, holder: tuple[int, int], pending: tuple[float, str, tuple[bytes, ...]]) -> None:
        rank = holder[0]
        asked, kind, keys = pending
        self.counts[rank][_COUNTS[kind]] += 1
        wait = now - asked
        self.waits[rank].append(wait)
        if wait > self.wait_max[rank]:
            self.wait_max[rank] = wait
        thread = self.threads.get(holder)
        if thread is None:
            thread = self.threads[holder] = [0.0] * 6
        thread[_COUNTS[kind]] += 1
        thread[3] += wait
        if wait > thread[4]:
            thread[4] = wait
        held = self._held.get(holder)
        for key in keys:
            if held is not None and key in held:  # an in-place upgrade ends the read it was
                self._end_hold(now, holder, key, "release")
            self._start_hold(now, holder, key, kind)
            if key:
                totals = self._totals(key)
                totals[_COUNTS[kind]] += 1
                if wait > 0:
                    totals[3] += wait
                    if wait > totals[4]:
                        totals[4] = wait
                    self._unwaited.discard(key)
        if self.keep_events:
            self._log_all(now, holder, "grant", kind, keys)

    def _start_hold(self, now: float, holder: tuple[int, int], key: bytes, kind: str) -> None:
        held = self._held.get(holder)
        if held is None:
            held = self._held[holder] = {}
        held[key] = (now, kind)

    def _end_hold(self, now: float, holder: tuple[int, int], key: bytes, phase: str) -> None:
        holds = self._held.get(holder)
        held = holds.pop(key, None) if holds is not None else None
        if held is None:
            return
        if not holds:
            del self._held[holder]  # the table follows the holders that hold something
        rank = holder[0]
        span = now - held[0]
        self.hold_total[rank] += span
        thread = self.threads.get(holder)
        if thread is not None:
            thread[5] += span
        if key:
            self._totals(key)[5] += span
        if self.keep_events:
            self.events.append((now, rank, holder[1], phase, held[1], key))

    def _totals(self, key: bytes) -> list[float]:
        """Return the totals of ``key``; a new key in a full table first makes the keys nobody waited for go.

        They go into :attr:`other` all at once, each key once: O(1) per new
        key over a run.  A table full of keys that made ranks wait sends new
        keys to :attr:`other` without looking at it again.
        """
        totals = self.keys.get(key)
        if totals is None:
            if len(self.keys) >= STATS_KEYS:
                if not self._unwaited:
                    return self.other
                other = self.other
                for dropped in self._unwaited:
                    merged = self.keys.pop(dropped)
                    for i in (0, 1, 2, 5):  # nobody waited: no wait to add
                        other[i] += merged[i]
                self._unwaited.clear()
            totals = self.keys[key] = [0.0] * 6
            self._unwaited.add(key)
        return totals

    def _log_all(self, now: float, holder: tuple[int, int], phase: str, kind: str, keys: tuple[bytes, ...]) -> None:
        if self.keep_events:
            rank, slot = holder
            for key in keys:
                self.events.append((now, rank, slot, phase, kind, key))

    # -- reporting ---------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Per-rank counts, wait percentiles (p50/p90/p99 of the recent waits, seconds), max wait and hold time.

        ``"keys"`` lists the named keys (most total wait first) with their
        grants, total and longest wait and total hold time; ``"other_keys"``
        sums the keys that had to be merged to keep the table bounded.
        """
        ranks = []
        for rank in range(self.size):
            p50, p90, p99 = percentiles(self.waits[rank], (50, 90, 99))
            reads, writes, slots = self.counts[rank]
            ranks.append(
                {
                    "rank": rank,
                    "reads": reads,
                    "writes": writes,
                    "slots": slots,
                    "wait_p50": p50,
                    "wait_p90": p90,
                    "wait_p99": p99,
                    "wait_max": self.wait_max[rank],
                    "hold_total": self.hold_total[rank],
                }
            )
        keys = [_key_entry(keyspace.describe(k), t) for k, t in self.keys.items()]
        keys.sort(key=lambda entry: (-entry["wait_total"], entry["key"]))
        threads = []
        for (rank, slot), (reads_, writes_, slots_, wait_total, wait_max, hold_total) in sorted(self.threads.items()):
            threads.append(
                {
                    "rank": rank,
                    "slot": slot,
                    "thread": self._name(rank, slot),
                    "reads": int(reads_),
                    "writes": int(writes_),
                    "slots": int(slots_),
                    "wait_total": wait_total,
                    "wait_max": wait_max,
                    "hold_total": hold_total,
                }
            )
        return {
            "ranks": ranks,
            "threads": threads,
            "keys": keys,
            "other_keys": _key_entry(OTHER_KEYS, self.other),
        }

    def _name(self, rank: int, slot: int) -> str:
        """Return the name thread ``slot`` of ``rank`` gave the server (``thread <slot>`` if it gave none)."""
        try:
            name = self.thread_name(rank, slot)
        except Exception:
            name = None
        return name if name is not None else f"thread {slot}"

    def chrome_trace(self) -> dict[str, Any]:
        """Return the event log as a Chrome trace-event document (opens in Perfetto).

        One complete (``"ph": "X"``) event per span, on thread ``tid`` = rank
        (a rank's other threads get rows of their own, from ``size`` on, named
        ``rank R / <thread name>``):
        ``"wait read"``/``"wait write"``/``"wait slot"`` from request to grant
        (or to the cancel, denial or close that ended the wait), then
        ``"read"``/``"write"``/``"slot"`` from grant to release.  Spans of a
        named key carry it as ``args.key``.  Times are microseconds since the
        first event.  A span still open when the log ends is dropped.
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
        open_spans: dict[tuple[int, int, bytes], tuple[float, str, str]] = {}
        tids: dict[tuple[int, int], int] = {}
        """(rank, slot) of a thread other than the rank's first -> its row: numbered from ``size`` on."""
        for now, rank, slot, phase, kind, key in self.events:
            us = (now - origin) * 1e6
            tid = rank
            if slot:
                tid = tids.get((rank, slot), -1)
                if tid < 0:
                    tid = tids[rank, slot] = self.size + len(tids)
                    name = f"rank {rank} / {self._name(rank, slot)}"
                    meta.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": tid, "args": {"name": name}})
            span = (rank, slot, key)
            if span in open_spans:
                start, name, category = open_spans.pop(span)
                event: dict[str, Any] = {"name": name, "cat": category, "ph": "X", "pid": 0, "tid": tid}
                event["ts"], event["dur"] = start, us - start
                if key:
                    event["args"] = {"key": keyspace.describe(key)}
                out.append(event)
            if phase == "request":
                open_spans[span] = (us, f"wait {kind}", "wait")
            elif phase == "grant":
                open_spans[span] = (us, kind, "hold")
        out.sort(key=lambda e: (e["ts"], e["tid"]))
        return {"traceEvents": out + meta, "displayTimeUnit": "ms"}

    def write_chrome_trace(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`chrome_trace` as JSON to ``path``."""
        with open(path, "w") as f:
            json.dump(self.chrome_trace(), f)


def _no_name(rank: int, slot: int) -> str | None:
    """No thread names known (a recorder no server loop named threads for)."""
    return None


def _key_entry(name: str, totals: list[float]) -> dict[str, Any]:
    reads, writes, slots, wait_total, wait_max, hold_total = totals
    return {
        "key": name,
        "reads": int(reads),
        "writes": int(writes),
        "slots": int(slots),
        "wait_total": wait_total,
        "wait_max": wait_max,
        "hold_total": hold_total,
    }


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
