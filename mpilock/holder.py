"""One thread's side of a controller: the lock holder the server knows as ``(rank, slot)``.

Every thread that uses a controller is a holder of its own (as in Java's
``ReentrantReadWriteLock`` or POSIX rwlocks, the holder is a thread): it
excludes the other threads of its rank exactly as ranks exclude each other.
Its requests carry its *slot* in the high bits of their sequence numbers
(:data:`~mpilock.server.protocol.SLOT_SHIFT`), so the server tells the
threads of a rank apart and each reply finds its thread.  What a thread holds,
how deep its ``with`` blocks nest and the request it waits for live here, in
state only that thread touches: no lock and no reliance on the GIL.
"""

from __future__ import annotations

import threading
from typing import Any

from .server.protocol import SLOT_SHIFT


class Holder:
    """A thread's lock state in one controller."""

    __slots__ = ("asking", "held", "ident", "limits", "name", "seq", "slot", "stack", "thread")

    def __init__(self, slot: int) -> None:
        """Make the holder of the calling thread, known to the server by ``slot``."""
        current = threading.current_thread()
        self.slot = slot
        self.seq = slot << SLOT_SHIFT
        """The last sequence number this thread used (its slot in the high bits)."""
        self.held: dict[bytes, int] = {}
        """key -> mode: what the server thinks this thread holds."""
        self.limits: dict[bytes, int] = {}
        """bounded key -> the limit this thread holds it with (stale for keys no longer held)."""
        self.stack: list[list[Any]] = []
        """The steps of this thread's open ``with`` blocks, innermost last (:mod:`.nesting`)."""
        self.asking: tuple[tuple[bytes, int, bytes | None], Any, tuple[bytes, ...], int] | None = None
        """The request being waited for, for a long-wait report."""
        self.ident = threading.get_ident()
        self.name = current.name
        self.thread = current

    def next_seq(self) -> int:
        """Return a new sequence number for this thread's next request."""
        self.seq += 1
        return self.seq

    def describe(self, rank: int) -> str:
        """Name this holder in messages: ``rank 0 / ThreadPoolExecutor-0_3`` (``rank 0`` for slot 0)."""
        return f"rank {rank}" if self.slot == 0 else f"rank {rank} / {self.name}"


__all__ = ["Holder"]
