"""Fence bookkeeping: outcomes of ``single_write`` blocks and their payloads.

Pure state, no MPI.  A fence is numbered by the order in which every rank
enters ``single_write`` (it is collective, so all ranks agree on the number).

Freeing rule (DESIGN.md: payloads never pile up).  When fence ``k`` ends, its
record remembers every rank other than the writer as *pending*.  A rank stops
being pending for ``k`` when

* it has been told the outcome of ``k`` and there is nothing to collect
  (the block shared nothing, or it failed), or
* it collects the payload of ``k``, or
* it enters a later fence (from then on ``collect()`` on ``k`` is refused on
  the client side, so the server can forget it).

A record is dropped as soon as no rank is pending.  Hence a program that never
calls ``collect()`` keeps at most the payloads of the last two fences alive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from .events import ProtocolError, Send
from .protocol import FenceStatus, Reply


@dataclass
class FenceRecord:
    """What the writer of one fence left behind."""

    status: FenceStatus
    payload: bytes | None
    pending: set[int] = field(default_factory=set)


class FenceBook:
    """Outcomes of ended fences plus the ranks parked waiting for one."""

    def __init__(self, size: int) -> None:
        """Track fences for a communicator of ``size`` ranks."""
        self.size = size
        self.records: dict[int, FenceRecord] = {}
        self.waiters: dict[int, list[tuple[int, int]]] = {}
        self.latest = [-1] * size
        """Per rank, the highest fence number it has entered."""

    def stored_bytes(self) -> int:
        """Total size of the payloads and error texts still stored."""
        return sum(len(r.payload or b"") for r in self.records.values())

    def advance(self, rank: int, fence: int) -> None:
        """Note that ``rank`` entered ``fence``; it can no longer collect older ones."""
        if fence <= self.latest[rank]:
            return
        self.latest[rank] = fence
        for number in [n for n in self.records if n < fence]:
            self._done_with(number, rank)

    def end(self, rank: int, seq: int, fence: int, status: FenceStatus, payload: bytes | None) -> list[Send]:
        """The writer ``rank`` finished ``fence``: store the outcome, wake the waiters."""
        if fence in self.records:
            raise ProtocolError(f"fence {fence} ended twice (second time by rank {rank})")
        self.advance(rank, fence)
        pending = {r for r in range(self.size) if r != rank and self.latest[r] <= fence}
        record = FenceRecord(status, payload, pending)
        self.records[fence] = record
        out = [Send(rank, Reply.FENCE_DONE, seq, fence, status)]
        for waiter, wseq in self.waiters.pop(fence, []):
            out.append(self._outcome(waiter, wseq, fence, record))
        self._drop_if_unused(fence)
        return out

    def wait(self, rank: int, seq: int, fence: int) -> list[Send]:
        """``rank`` waits for ``fence``: answer now if it ended, else park it."""
        self.advance(rank, fence)
        record = self.records.get(fence)
        if record is None:
            self.waiters.setdefault(fence, []).append((rank, seq))
            return []
        reply = self._outcome(rank, seq, fence, record)
        self._drop_if_unused(fence)
        return [reply]

    def collect(self, rank: int, seq: int, fence: int) -> list[Send]:
        """Send ``rank`` the payload of ``fence`` (an ERROR reply if it is gone)."""
        record = self.records.get(fence)
        if record is None or rank not in record.pending:
            text = f"fence {fence} has no payload left for rank {rank}".encode()
            return [Send(rank, Reply.ERROR, seq, fence, 0, text)]
        self._done_with(fence, rank)
        return [Send(rank, Reply.PAYLOAD, seq, fence, record.status, record.payload)]

    def _outcome(self, rank: int, seq: int, fence: int, record: FenceRecord) -> Send:
        text = record.payload if record.status == FenceStatus.FAILED else None
        if record.status != FenceStatus.OK_PAYLOAD:
            record.pending.discard(rank)  # nothing left to collect
        return Send(rank, Reply.FENCE_DONE, seq, fence, record.status, text)

    def _done_with(self, fence: int, rank: int) -> None:
        record = self.records.get(fence)
        if record is not None:
            record.pending.discard(rank)
            self._drop_if_unused(fence)

    def _drop_if_unused(self, fence: int) -> None:
        record = self.records.get(fence)
        if record is not None and not record.pending:
            del self.records[fence]
