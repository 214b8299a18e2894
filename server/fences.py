"""Fence bookkeeping: outcomes of ``single_write`` blocks and their payloads.

Pure state, no MPI.  A fence is numbered by the order in which every rank
enters ``single_write`` (it is collective, so all ranks agree on the number).

A fence ends like a barrier: nobody, the writer included, is told the outcome
of fence ``k`` before the writer has ended its block *and* every other rank has
arrived at the end of the block.  (The writer releases the write lock before it
waits, so ranks still busy with locks on their way to the fence can proceed.)

Freeing rule (DESIGN.md: payloads never pile up).  When fence ``k`` ends, its
record remembers every rank other than the writer as *pending*.  A rank stops
being pending for ``k`` when

* it has been told the outcome of ``k`` and there is nothing to collect
  (the block shared nothing, or it failed), or
* it enters a later fence (from then on ``collect()`` on ``k`` is refused on
  the client side, so the server can forget it).

Collecting does not free: a ``collect()`` that an exception (a signal
handler's) cut short while the payload was on its way asks again and gets the
payload whole, until the rank enters a later fence.

A record is dropped as soon as no rank is pending.  Because fence ``k + 1``
cannot end before every rank entered it, at most two records (the payloads of
the last two fences) are ever stored, however many fences go uncollected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .events import ProtocolError, Send
from .protocol import FenceStatus, Reply

if TYPE_CHECKING:
    from .frames import Payload


@dataclass
class FenceRecord:
    """What the writer of one fence left behind."""

    status: FenceStatus
    payload: Payload | None
    """Bytes, or frames (a pickle stream and its out-of-band buffers)."""
    pending: set[int] = field(default_factory=set)

    @property
    def nbytes(self) -> int:
        """Size of the payload, every frame included."""
        payload = self.payload
        if payload is None:
            return 0
        return len(payload) if isinstance(payload, bytes) else payload.nbytes


class FenceBook:
    """Outcomes of ended fences plus the ranks parked at the end of one."""

    def __init__(self, size: int, members: frozenset[int] | None = None) -> None:
        """Track fences for a communicator of ``size`` ranks, of which ``members`` take part."""
        self.size = size
        self.members = frozenset(range(size)) if members is None else members
        self.records: dict[int, FenceRecord] = {}
        self.waiters: dict[int, list[tuple[int, int]]] = {}
        """Fence -> (rank, seq) of ranks (writer included) waiting for FENCE_DONE."""
        self.latest = [-1] * size
        """Per rank, the highest fence number it has entered."""
        self.last_ended = -1
        """Fences end in order: the number of the last one whose writer ended it."""
        self.skipped: dict[int, set[int]] = {}
        """Fence -> ranks that left it with an error of their own before it ended."""

    def stored_bytes(self) -> int:
        """Total size of the payloads (out-of-band buffers included) and error texts still stored.

        Safe to call from another thread.
        """
        return sum(r.nbytes for r in list(self.records.values()))

    def advance(self, rank: int, fence: int) -> list[Send]:
        """Note that ``rank`` reached ``fence``; it can no longer collect older ones."""
        if fence > self.latest[rank]:
            self.latest[rank] = fence
            for number in [n for n in self.records if n < fence]:
                self._done_with(number, rank)
        return self._finish(fence)

    def end(self, rank: int, seq: int, fence: int, status: FenceStatus, payload: Payload | None) -> list[Send]:
        """Store the outcome of ``fence`` whose writer ``rank`` finished; it waits for the others."""
        if fence <= self.last_ended:
            raise ProtocolError(f"fence {fence} ended twice (second time by rank {rank})")
        self.last_ended = fence
        gone = self.skipped.pop(fence, set())
        pending = {r for r in self.members if r != rank and self.latest[r] <= fence and r not in gone}
        self.records[fence] = FenceRecord(status, payload, pending)
        self.waiters.setdefault(fence, []).append((rank, seq))
        return self.advance(rank, fence)

    def wait(self, rank: int, seq: int, fence: int, reply: bool = True) -> list[Send]:
        """``rank`` arrived at the end of ``fence`` and waits for its outcome.

        With ``reply=False`` the rank only reports its arrival (it left the
        fence with an error of its own) and expects no answer.
        """
        if reply:
            self.waiters.setdefault(fence, []).append((rank, seq))
        elif fence in self.records:
            self._done_with(fence, rank)
        else:
            self.skipped.setdefault(fence, set()).add(rank)
        return self.advance(rank, fence)

    def collect(self, rank: int, seq: int, fence: int) -> list[Send]:
        """Send ``rank`` the payload of ``fence`` (an ERROR reply if it is gone); kept for a collect asked again."""
        record = self.records.get(fence)
        if record is None or rank not in record.pending:
            text = f"fence {fence} has no payload left for rank {rank}".encode()
            return [Send(rank, Reply.ERROR, seq, fence, 0, text)]
        return [Send(rank, Reply.PAYLOAD, seq, fence, record.status, record.payload)]

    def _finish(self, fence: int) -> list[Send]:
        """Answer everyone parked at ``fence`` once it ended and all ranks arrived."""
        record = self.records.get(fence)
        if record is None or fence not in self.waiters or min(self.latest[r] for r in self.members) < fence:
            return []
        out = []
        for rank, seq in self.waiters.pop(fence):
            text = record.payload if record.status == FenceStatus.FAILED else None
            if record.status != FenceStatus.OK_PAYLOAD:
                record.pending.discard(rank)  # nothing left to collect
            out.append(Send(rank, Reply.FENCE_DONE, seq, fence, record.status, text))
        self._drop_if_unused(fence)
        return out

    def _done_with(self, fence: int, rank: int) -> None:
        record = self.records.get(fence)
        if record is not None:
            record.pending.discard(rank)
            self._drop_if_unused(fence)

    def _drop_if_unused(self, fence: int) -> None:
        record = self.records.get(fence)
        if record is not None and not record.pending and fence not in self.waiters:
            del self.records[fence]
