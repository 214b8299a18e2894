"""The lock table for people: who holds which lock, who waits, since when, taken where.

Pure formatting, no MPI: :meth:`mpilock.WindowController.locks` returns a
:class:`LockTable`, the long-wait report logs one, and ``python -m
mpilock.plot`` prints its per-key summary with :func:`format_rows` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict


class Holder(TypedDict):
    """A thread of a rank holding a lock."""

    rank: int
    thread: str | None
    """The name the thread gave the server (``None`` if it gave none)."""
    slot: int
    """The thread's number on its rank: 0 for the first thread that used the controller."""
    mode: str
    """``read``, ``write`` or ``slot`` (a place of a bounded key)."""
    held: float
    """Seconds it has held the lock so far."""
    site: str
    """``file:line`` where the lock was taken (``?`` if unknown)."""


class Waiter(TypedDict):
    """A thread of a rank queued for a lock."""

    rank: int
    thread: str | None
    slot: int
    mode: str
    waited: float
    """Seconds it has waited so far."""
    site: str
    keys: list[str]
    """Every key of its request (a multi-key request waits for all at once)."""


class LockEntry(TypedDict):
    """One lock in use: its key, holders and queue."""

    key: str
    limit: int
    """Holders a bounded key admits; 0 for a readers-writer lock."""
    holders: list[Holder]
    waiters: list[Waiter]
    """In arrival order."""


def format_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Format ``rows`` as left-aligned columns under ``header``."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (header, *rows)
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


class LockTable(list[LockEntry]):
    """The server's lock table at one moment: a list of :class:`LockEntry`, printable as text."""

    def __str__(self) -> str:
        """One line per holder and per waiter, grouped by lock."""
        if not self:
            return "no lock is held or awaited"
        rows: list[tuple[str, ...]] = []
        for entry in self:
            name = entry["key"] + (f" (limit {entry['limit']})" if entry["limit"] else "")  # 'bounded ...' already
            for holder in entry["holders"]:
                rows.append((name, "holds", who(holder), holder["mode"], _since(holder["held"]), holder["site"]))
                name = ""
            for position, waiter in enumerate(entry["waiters"], 1):
                also = [k for k in waiter["keys"] if k != entry["key"]]
                state = f"queued #{position}" + (f" (with {', '.join(also)})" if also else "")
                rows.append((name, state, who(waiter), waiter["mode"], _since(waiter["waited"]), waiter["site"]))
                name = ""
        return format_rows(("lock", "state", "rank", "mode", "for", "taken/asked at"), rows)


def who(entry: Holder | Waiter) -> str:
    """``rank 2``, or ``rank 2 / <thread name>`` for a rank's other threads (``thread <slot>`` if unnamed)."""
    slot = entry.get("slot", 0)  # a table of an older server has no slots
    if not slot:
        return f"rank {entry['rank']}"
    thread = entry.get("thread")
    return f"rank {entry['rank']} / {thread if thread is not None else f'thread {slot}'}"


def _since(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"
