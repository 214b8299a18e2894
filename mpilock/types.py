"""Typed shapes of what mpilock returns: :meth:`WindowController.stats` and its rows.

Plain dictionaries at run time (they are pickled from the server); these
:class:`~typing.TypedDict` classes tell a type checker which keys exist, so a
typo such as ``stats["rank"]`` or ``row["wait_p95"]`` is caught before a job
runs.  This module imports no MPI.
"""

from __future__ import annotations

from typing import TypedDict


class RankStats(TypedDict):
    """What the server has seen of one rank so far; times in seconds."""

    rank: int
    """The rank (in the controller's communicator) this row describes."""
    reads: int
    """Read locks granted."""
    writes: int
    """Write locks granted, ``single_write`` blocks included."""
    slots: int
    """Places of bounded keys granted."""
    wait_p50: float
    """Median wait from request to grant, over the rank's most recent waits."""
    wait_p90: float
    """90th percentile of the recent waits."""
    wait_p99: float
    """99th percentile of the recent waits."""
    wait_max: float
    """Longest wait of the whole run."""
    hold_total: float
    """Total time the rank held a lock."""


class KeyStats(TypedDict):
    """What the server has seen of one named key (or of the merged rest); times in seconds."""

    key: str
    """The key as :func:`repr` shows it (``'out/part-17.h5'``, ``bounded 'lustre'``), or ``(other keys)``."""
    reads: int
    writes: int
    slots: int
    """Grants of each mode."""
    wait_total: float
    """Sum of the waits for this key (a multi-key wait counts for each of its keys)."""
    wait_max: float
    """Longest wait for this key."""
    hold_total: float
    """Total time the key was held (by all ranks together)."""


class ThreadStats(TypedDict):
    """What the server has seen of one thread of a rank (a holder, see :mod:`mpilock.holder`); times in seconds."""

    rank: int
    """The rank the thread belongs to."""
    slot: int
    """Its number on that rank: 0 for the thread that made the controller, then in order of first use."""
    thread: str
    """The name the thread had when it first used the controller (``threading.current_thread().name``)."""
    reads: int
    writes: int
    slots: int
    """Grants of each mode to this thread."""
    wait_total: float
    """Sum of this thread's waits from request to grant."""
    wait_max: float
    """Its longest wait."""
    hold_total: float
    """Total time it held locks (a multi-key lock counts once per key)."""


class Stats(TypedDict):
    """The result of :meth:`mpilock.WindowController.stats`."""

    ranks: list[RankStats]
    """One row per rank, in rank order (every lock of the rank, default and keyed)."""
    threads: list[ThreadStats]
    """One row per thread that was granted a lock, by rank and slot (each rank's threads together)."""
    keys: list[KeyStats]
    """One row per named key seen, most total wait first (at most ``mpilock.trace.STATS_KEYS``)."""
    other_keys: KeyStats
    """The keys merged to keep :attr:`keys` bounded (keys nobody waited for are dropped first)."""
