"""The lock manager core: a pure readers-writer state machine with fences.

No MPI here (sans-I/O, in the style of h11): :meth:`LockCore.handle` takes one
decoded request and returns the replies to send.  The MPI service loop in
:mod:`mpilock.server.loop` only moves bytes; every rule of DESIGN.md that the
server enforces lives in this module and in :mod:`mpilock.server.fences`.

Rules implemented here:

* any number of readers or exactly one writer, never both;
* writer priority: while a writer holds or waits, no new reader is granted;
  writers are served in arrival order; with no writer active or waiting, every
  waiting reader is granted at once;
* a cancel withdraws a queued request, or releases a grant that raced it;
* a rank has at most one lock request outstanding (its nesting is local).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .events import ProtocolError, Send
from .fences import FenceBook
from .protocol import FenceStatus, Flag, Op, Reply

if TYPE_CHECKING:
    from .frames import Payload

__all__ = ["LockCore", "ProtocolError", "Send"]

Handler = Callable[[int, int, int, int, "Payload | None", list[Send]], None]
"""``handler(rank, seq, arg, aux, payload, out)``: apply one request, append replies to ``out``."""

_GRANTED = Reply.GRANTED
_TRY = int(Flag.TRY)


class LockCore:
    """State of one controller's lock, fed one request at a time."""

    def __init__(self, size: int, members: Iterable[int] | None = None) -> None:
        """Create the state for a communicator of ``size`` ranks.

        ``members`` are the ranks that use the lock (default: all).  A
        dedicated server rank is not a member: it never locks or closes.
        """
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self.members = frozenset(range(size) if members is None else members)
        if not self.members or not self.members <= frozenset(range(size)):
            raise ValueError(f"members must be a non-empty subset of range({size})")
        self.readers: dict[int, int] = {}
        """rank -> seq of the granted read request."""
        self.writer: tuple[int, int] | None = None
        """(rank, seq) of the granted write request."""
        self.waiting_writers: deque[tuple[int, int]] = deque()
        self.waiting_readers: dict[int, int] = {}
        self.fences = FenceBook(size, self.members)
        self._closing: dict[int, int] = {}
        self.closed = False
        self._handlers: dict[int, Handler] = {
            Op.READ: self._on_read,
            Op.WRITE: self._on_write,
            Op.FENCE_BEGIN: self._on_fence_begin,
            Op.RELEASE: self._on_release,
            Op.CANCEL: self._on_cancel,
            Op.FENCE_END: self._on_fence_end,
            Op.FENCE_WAIT: self._on_fence_wait,
            Op.COLLECT: self._on_collect,
            Op.CLOSE: self._on_close,
        }

    # -- queries -----------------------------------------------------------
    def holds(self, rank: int) -> bool:
        """Whether ``rank`` holds the read or the write lock."""
        return rank in self.readers or (self.writer is not None and self.writer[0] == rank)

    def is_waiting(self, rank: int) -> bool:
        """Whether ``rank`` has a queued lock request."""
        if rank in self.waiting_readers:
            return True
        return bool(self.waiting_writers) and any(r == rank for r, _ in self.waiting_writers)

    # -- the one entry point -------------------------------------------------
    def handle(
        self, rank: int, op: int, seq: int, arg: int = 0, aux: int = 0, payload: Payload | None = None
    ) -> list[Send]:
        """Apply request ``op`` from ``rank`` and return the replies to send."""
        if rank not in self.members:
            raise ProtocolError(f"rank {rank} is not one of the lock's {len(self.members)} member ranks")
        if self.closed:
            raise ProtocolError(f"request {op} from rank {rank} after close")
        handler = self._handlers.get(op)
        if handler is None:
            raise ProtocolError(f"unknown op {op} from rank {rank}")
        out: list[Send] = []
        handler(rank, seq, arg, aux, payload, out)
        return out

    # -- one handler per op (a table: enum comparisons are slow on the hot path) ---
    def _on_read(self, rank: int, seq: int, arg: int, aux: int, payload: Payload | None, out: list[Send]) -> None:
        self._request(rank, seq, False, bool(arg & _TRY), out)

    def _on_write(self, rank: int, seq: int, arg: int, aux: int, payload: Payload | None, out: list[Send]) -> None:
        self._request(rank, seq, True, bool(arg & _TRY), out)

    def _on_fence_begin(
        self, rank: int, seq: int, arg: int, aux: int, payload: Payload | None, out: list[Send]
    ) -> None:
        out.extend(self.fences.advance(rank, arg))
        self._request(rank, seq, True, False, out)

    def _on_release(self, rank: int, seq: int, arg: int, aux: int, payload: Payload | None, out: list[Send]) -> None:
        self._release(rank)
        self._schedule(out)

    def _on_fence_end(self, rank: int, seq: int, arg: int, aux: int, payload: Payload | None, out: list[Send]) -> None:
        out.extend(self.fences.end(rank, seq, arg, FenceStatus(aux), payload))

    def _on_fence_wait(self, rank: int, seq: int, arg: int, aux: int, payload: Payload | None, out: list[Send]) -> None:
        out.extend(self.fences.wait(rank, seq, arg, reply=not aux))

    def _on_collect(self, rank: int, seq: int, arg: int, aux: int, payload: Payload | None, out: list[Send]) -> None:
        out.extend(self.fences.collect(rank, seq, arg))

    # -- lock rules ------------------------------------------------------------
    def _grantable(self, write: bool) -> bool:
        if self.writer is not None or self.waiting_writers:
            return False
        return not (write and self.readers)

    def _request(self, rank: int, seq: int, write: bool, try_only: bool, out: list[Send]) -> None:
        if self.holds(rank) or self.is_waiting(rank):
            raise ProtocolError(f"rank {rank} asked for a lock while holding or awaiting one")
        if self._grantable(write):
            self._grant(rank, seq, write, out)
        elif try_only:
            out.append(Send(rank, Reply.DENIED, seq))
        elif write:
            self.waiting_writers.append((rank, seq))
        else:
            self.waiting_readers[rank] = seq

    def _grant(self, rank: int, seq: int, write: bool, out: list[Send]) -> None:
        if write:
            self.writer = (rank, seq)
        else:
            self.readers[rank] = seq
        out.append(Send(rank, _GRANTED, seq))

    def _schedule(self, out: list[Send]) -> None:
        if self.writer is not None:
            return
        if self.waiting_writers:
            if not self.readers:
                rank, seq = self.waiting_writers.popleft()
                self._grant(rank, seq, True, out)
            return
        for rank, seq in self.waiting_readers.items():
            self._grant(rank, seq, False, out)
        self.waiting_readers.clear()

    def _release(self, rank: int) -> None:
        if self.writer is not None and self.writer[0] == rank:
            self.writer = None
        elif rank in self.readers:
            del self.readers[rank]
        else:
            raise ProtocolError(f"rank {rank} released a lock it does not hold")

    def _on_cancel(self, rank: int, seq: int, arg: int, aux: int, payload: Payload | None, out: list[Send]) -> None:
        if self.waiting_readers.get(rank) == seq:
            del self.waiting_readers[rank]
        elif (rank, seq) in self.waiting_writers:
            self.waiting_writers.remove((rank, seq))
        elif self.readers.get(rank) == seq or self.writer == (rank, seq):
            self._release(rank)  # the grant raced the cancel: hand it back
        out.append(Send(rank, Reply.CANCELLED, seq))
        self._schedule(out)  # a withdrawn writer may unblock readers

    def _on_close(self, rank: int, seq: int, arg: int, aux: int, payload: Payload | None, out: list[Send]) -> None:
        if rank in self._closing:
            raise ProtocolError(f"rank {rank} closed twice")
        if self.holds(rank):
            self._release(rank)
        self.waiting_readers.pop(rank, None)
        self.waiting_writers = deque((r, s) for r, s in self.waiting_writers if r != rank)
        self._schedule(out)
        self._closing[rank] = seq
        if len(self._closing) == len(self.members):
            self.closed = True
            out.extend(Send(r, Reply.CLOSED, s) for r, s in sorted(self._closing.items()))
