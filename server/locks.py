"""The state of one lock key: its holders and its queue, ordered by priority.

Pure data and the per-key rules, no MPI.  :class:`~.core.LockCore` keeps one
:class:`KeyState` per key in use and decides across keys.

Every queued request has a *priority* (lower goes first), the same in every
queue it waits in, so that all queues of a controller order requests alike
(two multi-key writers can never wait for each other in two queues).  A
writer or a request for a bounded key gets the next arrival number; a reader
gets infinity: under writer priority it lets every queued writer go first,
even later ones.  To avoid deadlocks the core may give a request a smaller
priority, placing it just ahead of the requests that wait for its rank anyway.
"""

from __future__ import annotations

import math
from collections import deque

READ, WRITE, SLOT = 0, 1, 2
"""Modes of a request or a hold."""
MODES = ("read", "write", "slot")
"""Name of each mode, by its number."""
LAST = math.inf
"""Priority of a reader that lets every queued writer go first (writer priority)."""

Hold = tuple[int, int, float, "Hold | None"]
"""``(seq, site, since, before)``: the grant ``seq`` taken at acquire site ``site`` at time ``since``.

``before`` is the read hold an in-place upgrade replaced (restored by a
downgrade or a cancel), ``None`` otherwise."""


class Request:
    """A lock request waiting in the queues of its keys."""

    __slots__ = ("keys", "mode", "priority", "rank", "seq", "since", "site")

    def __init__(
        self, rank: int, seq: int, keys: tuple[bytes, ...], mode: int, site: int, since: float, priority: float
    ) -> None:
        """Request ``mode`` on every key of ``keys`` for ``rank`` (its request ``seq``), queued at ``priority``."""
        self.rank = rank
        self.seq = seq
        self.keys = keys
        self.mode = mode
        self.site = site
        self.since = since
        self.priority = priority


class KeyState:
    """Holders and waiters of one key (dropped once it has neither)."""

    __slots__ = ("early", "limit", "readers", "waiting_readers", "write_hold", "writer", "writers")

    def __init__(self, limit: int = 0) -> None:
        """Make a readers-writer lock (``limit`` 0) or a bounded key admitting ``limit`` holders."""
        self.limit = limit
        self.readers: dict[int, Hold] = {}
        """rank -> hold, for readers (or the holders of a bounded key)."""
        self.writer = -1
        """Rank holding the write lock, -1 if none."""
        self.write_hold: Hold | None = None
        self.writers: deque[Request] = deque()
        """Queued write requests (queued requests of a bounded key), in priority order."""
        self.waiting_readers: list[Request] = []
        self.early = 0
        """Number of waiting readers placed ahead of some queued writer (finite priority)."""

    def idle(self) -> bool:
        """Whether nobody holds or waits for the key."""
        return self.writer < 0 and not self.readers and not self.writers and not self.waiting_readers

    def holds(self, rank: int) -> bool:
        """Whether ``rank`` holds this key in any mode."""
        return self.writer == rank or rank in self.readers

    def free_for(self, mode: int) -> bool:
        """Whether the holders would admit a request of ``mode`` now (queued requests aside)."""
        if mode == READ:
            return self.writer < 0
        if mode == WRITE:
            return self.writer < 0 and not self.readers
        return len(self.readers) < self.limit

    def ahead_of_writers(self, reader: Request) -> bool:
        """Whether waiting ``reader`` goes before every queued writer of this key."""
        return not self.writers or reader.priority < self.writers[0].priority

    def queue(self, request: Request) -> None:
        """Put ``request`` in this key's queue, by its priority."""
        if request.mode == READ:
            self.waiting_readers.append(request)
            if request.priority < LAST:
                self.early += 1
            return
        writers = self.writers
        if not writers or writers[-1].priority < request.priority:
            writers.append(request)
            return
        position = next(i for i, other in enumerate(writers) if other.priority > request.priority)
        writers.insert(position, request)

    def unqueue(self, request: Request, readers_too: bool = True) -> None:
        """Take ``request`` out of this key's queue (a reader only if ``readers_too``: the caller may have)."""
        if request.mode != READ:
            self.writers.remove(request)
            return
        if readers_too:
            self.waiting_readers.remove(request)
        if request.priority < LAST:
            self.early -= 1

    def ahead(self, request: Request) -> Request | None:
        """Return the queued writer (request of a bounded key) just ahead of ``request``, if any."""
        if request.mode == READ:
            last = None
            for writer in self.writers:
                if writer.priority > request.priority:
                    break
                last = writer
            return last
        position = self.writers.index(request)
        return self.writers[position - 1] if position else None
