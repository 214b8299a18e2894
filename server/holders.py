"""Holders: the threads of ranks that hold and wait for locks, numbered densely.

Pure state, no MPI.  A request's ``seq`` carries the slot of the sending
thread (:data:`~.protocol.SLOT_SHIFT`); the holder is ``(rank, slot)``.  A core
keeps its per-holder state in lists indexed by a dense holder id: slot 0 of
rank ``r`` is id ``r`` (so a program with one thread per rank is numbered as
ranks are), other slots get ids from ``size`` on, in the order they are first
seen.  The native core (``server/_native.c``) numbers holders the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .protocol import SLOT_SHIFT

__all__ = ["SLOT_SHIFT", "HolderView", "Holders", "holder_text", "namer"]


def holder_text(rank: int, slot: int, world: int, holder: int, name: str | None) -> str:
    """Name a holder in a report: ``rank 2``, ``rank 2 (world rank 5)``, and ``/ <name>`` for a slot > 0.

    ``world`` is the world rank its hello gave (or its stand-in ``-1 - holder``
    before hello); ``name`` the thread name its hello gave (``thread <slot>`` if none).
    """
    text = f"rank {rank}" if world in (rank, -1 - holder) else f"rank {rank} (world rank {world})"
    if not slot:
        return text
    return f"{text} / {name if name is not None else f'thread {slot}'}"


class HolderView(Protocol):
    """What a report needs to name a holder."""

    def who(self, holder: int) -> tuple[int, int, str | None]:
        """Return ``(rank, slot, thread name or None)`` of ``holder``."""


class Holders:
    """The ``(rank, slot)`` of each holder id, and back."""

    __slots__ = ("_ids", "names", "of_rank", "rank", "slot")

    def __init__(self, size: int) -> None:
        """Start with slot 0 of each of ``size`` ranks (ids ``0 .. size - 1``)."""
        self.rank: list[int] = list(range(size))
        """Holder id -> the MPI rank its replies go to."""
        self.slot: list[int] = [0] * size
        """Holder id -> its thread's slot on that rank."""
        self._ids: dict[int, int] = {}
        """``rank | slot << SLOT_SHIFT`` -> holder id, for slots > 0."""
        self.of_rank: dict[int, list[int]] = {}
        """Rank -> the ids of its holders of slot > 0, in the order they were first seen."""
        self.names: dict[int, str] = {}
        """Holder id -> the thread name its hello gave."""

    def __len__(self) -> int:
        """Count the holders numbered so far."""
        return len(self.rank)

    def find(self, rank: int, slot: int) -> int | None:
        """Return the id of ``(rank, slot)``, ``None`` if it was never seen."""
        return rank if not slot else self._ids.get(rank | slot << SLOT_SHIFT)

    def add(self, rank: int, slot: int) -> int:
        """Give the new holder ``(rank, slot)`` an id (``slot > 0``) and return it."""
        holder = len(self.rank)
        self._ids[rank | slot << SLOT_SHIFT] = holder
        self.rank.append(rank)
        self.slot.append(slot)
        self.of_rank.setdefault(rank, []).append(holder)
        return holder

    def all_of(self, rank: int) -> list[int]:
        """Return the ids of every holder of ``rank``: slot 0 first, then the others as first seen."""
        return [rank, *self.of_rank.get(rank, ())]

    def who(self, holder: int) -> tuple[int, int, str | None]:
        """Return ``(rank, slot, thread name or None)`` of ``holder``."""
        return self.rank[holder], self.slot[holder], self.names.get(holder)


def namer(core: Any) -> Callable[[int, int], str | None]:
    """Return ``(rank, slot) -> the name that thread gave`` of a lock core (Python or native), for statistics."""

    def thread_name(rank: int, slot: int) -> str | None:
        holder = core.holder(rank, slot)
        name: str | None = None if holder is None else core.who(holder)[2]
        return name

    return thread_name
