"""Helpers shared by the MPI tests: rank counts, interval checks, bounded waits."""

from __future__ import annotations

import os
import time
from collections.abc import Hashable, Iterator
from contextlib import contextmanager

import pytest
from mpi4py import MPI

RANKS = [int(n) for n in os.environ.get("MPILOCK_TEST_RANKS", "1 2 3 4").split()]
"""Rank counts every MPI test runs at (``make test-mpi RANKS="..."`` sets them)."""

Span = tuple[int, str, float, float]
"""(rank, "read" or "write", start, end) of one held lock, from time.monotonic()."""

TIMEOUT = float(os.environ.get("MPILOCK_TEST_TIMEOUT", "60"))


def mpi(min_ranks: int = 1, timeout: float = TIMEOUT, max_ranks: int | None = None) -> pytest.MarkDecorator:
    """Run the test at every rank count from ``min_ranks`` to ``max_ranks`` (default: any), under a timeout."""
    ranks = [n for n in RANKS if n >= min_ranks and (max_ranks is None or n <= max_ranks)]
    return pytest.mark.mpi(ranks=ranks, timeout=timeout)


class Intervals:
    """Records ``time.monotonic()`` intervals during which this rank held a lock."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, float, float]] = []

    @contextmanager
    def hold(self, kind: str, seconds: float = 0.0) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
            if seconds:
                time.sleep(seconds)
        finally:
            self.spans.append((kind, start, time.monotonic()))

    def gather(self, comm: MPI.Intracomm) -> list[Span]:
        """Every rank's spans, on every rank, as (rank, kind, start, end)."""
        return [(rank, k, s, e) for rank, spans in enumerate(comm.allgather(self.spans)) for k, s, e in spans]


def overlaps(spans: list[Span]) -> list[tuple[Span, Span]]:
    """Spans of different ranks that overlap where at least one is a write (sweep line)."""
    bad: list[tuple[Span, Span]] = []
    latest_any: dict[int, Span] = {}
    latest_write: dict[int, Span] = {}
    for span in sorted(spans, key=lambda s: s[2]):
        rank, kind, start, _ = span
        for other in list(latest_write.values()) + (list(latest_any.values()) if kind == "write" else []):
            if other[0] != rank and start < other[3]:
                bad.append((other, span))
        for table in (latest_any, latest_write) if kind == "write" else (latest_any,):
            if rank not in table or table[rank][3] < span[3]:
                table[rank] = span
    return bad


def wait_all_inside(comm: MPI.Intracomm, seconds: float = 20.0) -> bool:
    """Non-blocking barrier with a deadline: True if every rank arrived in time."""
    request = comm.Ibarrier()
    deadline = time.monotonic() + seconds
    while not request.Test():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


class KeyedIntervals:
    """Records ``time.monotonic()`` intervals per lock key during which this rank held it."""

    def __init__(self) -> None:
        self.spans: dict[Hashable, list[tuple[str, float, float]]] = {}

    @contextmanager
    def hold(self, key: Hashable, kind: str, seconds: float = 0.0) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
            if seconds:
                time.sleep(seconds)
        finally:
            self.spans.setdefault(key, []).append((kind, start, time.monotonic()))

    def gather(self, comm: MPI.Intracomm) -> dict[Hashable, list[Span]]:
        """Every rank's spans, on every rank, per key as (rank, kind, start, end)."""
        merged: dict[Hashable, list[Span]] = {}
        for rank, spans in enumerate(comm.allgather(self.spans)):
            for key, mine in spans.items():
                merged.setdefault(key, []).extend((rank, k, s, e) for k, s, e in mine)
        return merged


def most_at_once(spans: list[Span]) -> int:
    """The largest number of ``spans`` open at one instant (one that ends as another starts is not counted twice)."""
    events = sorted([(start, 1) for _, _, start, _ in spans] + [(end, -1) for _, _, _, end in spans])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def wait_until_queued(ctrl: object, name: str, rank: int, seconds: float = 20.0) -> None:
    """Poll ``ctrl.locks()`` until ``rank`` is queued for the lock named ``name`` (``"'b'"``, ``"bounded 'x'"``).

    Raises ``AssertionError`` after ``seconds``: a handshake that makes ranks
    interleave in a known order without sleeping.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        table = ctrl.locks()  # type: ignore[attr-defined]
        if any(w["rank"] == rank for entry in table if entry["key"] == name for w in entry["waiters"]):
            return
        time.sleep(0.001)
    raise AssertionError(f"rank {rank} never got queued for {name}")


def site(path: str, marker: str) -> str:
    """``file.py:LINE`` of the line of ``path`` that ends with the comment ``# site: marker``."""
    with open(path) as source:
        lines = [n for n, line in enumerate(source, 1) if line.rstrip().endswith(f"# site: {marker}")]
    assert len(lines) == 1, f"{marker!r} marks {len(lines)} lines of {path}"
    return f"{os.path.basename(path)}:{lines[0]}"
