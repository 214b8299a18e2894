"""Multi-frame payloads: several byte buffers sent without copies (pickle protocol 5 streams and their buffers).

Pure MPI transport of frame lists; what the frames mean is up to the caller
(:mod:`mpilock.fence` sends a pickle stream and its out-of-band buffers).

Wire format.  A header whose ``nbytes`` word is negative announces a payload
of ``-nbytes`` frames.  The sender then sends, from the same rank on
``TAG_FRAMES``:

1. the frame table, int64 ``[chunk, size_0, ..., size_{n-1}]``;
2. each frame in order, as ``ceil(size_i / chunk)`` messages of at most
   ``chunk`` bytes (none for an empty frame), straight from the frame's memory.

The receiver allocates each frame once and receives the messages into it.
``chunk`` is the sender's choice, always below ``2**31`` bytes, so no message
needs MPI-4 large counts.  Frames travel on their own tag so that other payload
messages (``TAG_PAYLOAD``) of later requests never match them.

Who copies.  With MPICH's shared memory the *receiver* copies a big message,
inside whichever MPI call matches it, while holding MPI's lock.  So the lock
server receives a writer's frames one ``SMALL_CHUNK`` at a time between other
requests (:class:`~.intake.Intake`), and sends stored frames in ``BIG_CHUNK`` messages
that the readers copy themselves.  Between the threads of one process (the
master's application thread and its server thread) frames are handed over in
memory instead (``_LOCAL``): frames the sender gives away (``owned``: a
snapshot, a stored payload's last use) are kept as they are, unless a send to
another rank still reads them; anything else is copied by the receiver.
"""

from __future__ import annotations

import mmap
from array import array
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from mpi4py import MPI

from .protocol import TAG_FRAMES

SMALL_CHUNK = 1 << 22
"""Message size of frames sent to the lock server (4 MiB: ~1-4 ms of copying per server poll)."""

BIG_CHUNK = 1 << 30
"""Message size of frames sent by the lock server (the readers copy them; below 2**31 bytes)."""

MAP_MIN = 1 << 20
"""Frames from this size up get their own anonymous memory map: not zeroed by hand, returned to the OS when freed."""

COPY_STEP = 1 << 22
"""Bytes copied per Python statement, so another thread can take the GIL between steps."""

Pending = list[tuple[MPI.Request, Any]]
"""Sends in flight, each with the buffer MPI may still read (as :data:`mpilock.server.wire.Pending`)."""


class Frames:
    """A payload of several contiguous byte buffers (frames)."""

    __slots__ = ("buffers", "owned")

    def __init__(self, buffers: Sequence[Any], owned: bool = False) -> None:
        """Wrap ``buffers`` (anything with the buffer protocol, viewed as bytes).

        ``owned``: the buffers belong to this payload alone and the sender
        will not touch them again (a snapshot; a stored payload sent for the
        last time), so a receiver in the same process may keep them instead
        of copying.
        """
        self.buffers = [memoryview(b).cast("B") for b in buffers]
        """One flat byte view per frame."""
        self.owned = owned

    @property
    def nbytes(self) -> int:
        """Total size of the frames."""
        return sum(b.nbytes for b in self.buffers)

    def copy(self) -> Frames:
        """Return frames with the same bytes in new buffers."""
        return Frames([copied(b) for b in self.buffers])

    def __repr__(self) -> str:
        """Show the frame sizes."""
        return f"Frames({[b.nbytes for b in self.buffers]}, owned={self.owned})"


Payload = bytes | Frames
"""What a message may carry: plain bytes (one message on ``TAG_PAYLOAD``) or frames."""


def joined(payload: Payload | None) -> bytes:
    """Return the bytes of ``payload`` (frames joined; empty for ``None``), for texts and plain pickles."""
    if payload is None:
        return b""
    if isinstance(payload, bytes):
        return payload
    return b"".join(payload.buffers)


def allocate(nbytes: int) -> memoryview:
    """Return a writable byte buffer of ``nbytes`` whose pages are only touched when written."""
    if nbytes < MAP_MIN:
        return memoryview(bytearray(nbytes))
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # as numpy does: 512x fewer page faults where the kernel agrees
        memory.madvise(mmap.MADV_HUGEPAGE)
    return memoryview(memory)


def copy_into(target: memoryview, source: memoryview) -> None:
    """Copy the bytes of ``source`` to the start of ``target``, ``COPY_STEP`` bytes per statement."""
    for start in range(0, source.nbytes, COPY_STEP):
        target[start : start + COPY_STEP] = source[start : start + COPY_STEP]


def copied(buffer: Any) -> memoryview:
    """Return a new byte buffer (see :func:`allocate`) holding a copy of ``buffer``."""
    source = memoryview(buffer).cast("B")
    target = allocate(source.nbytes)
    copy_into(target, source)
    return target


def pieces(buffers: list[memoryview], chunk: int) -> Iterator[memoryview]:
    """Yield the messages of ``buffers``, cut in ``chunk`` bytes, in wire order."""
    for buffer in buffers:
        for start in range(0, buffer.nbytes, chunk):
            yield buffer[start : start + chunk]


_LOCAL: dict[tuple[int, int], deque[Frames]] = {}
"""(communicator handle, header tag) -> frames sent to this process by this process, in order."""


def handed_over(comm: MPI.Comm, tag: int) -> Frames:
    """Return the next frames this process sent itself with a header on ``tag`` (see :func:`announce`)."""
    return own(_LOCAL[comm.handle, tag].popleft())


def local_queue(comm: MPI.Comm, tag: int) -> deque[Frames]:
    """Return the frames this process sent itself on ``comm`` after headers on ``tag``, in order."""
    return _LOCAL[comm.handle, tag]


def own(frames: Frames) -> Frames:
    """Make frames handed over in this process the receiver's: shared if the sender gave them up, else copied."""
    if frames.owned:
        frames.owned = False  # from now on the receiver's, and shared by whatever it does with it
        return frames
    return frames.copy()


def announce(comm: MPI.Comm, dest: int, tag: int, frames: Frames, pending: Pending) -> int:
    """Return the ``nbytes`` header word for ``frames``; to this very process, hand them over now.

    Call it *before* sending the header on ``tag`` (an in-process receiver
    looks for the frames when the header arrives), and :func:`isend` after it.
    """
    if dest == comm.Get_rank():
        if frames.owned and _still_sending(frames, pending):
            frames.owned = False  # another rank is still copying them: the receiver must copy too
        _LOCAL.setdefault((comm.handle, tag), deque()).append(frames)
    return -len(frames.buffers)


def isend(comm: MPI.Comm, dest: int, frames: Frames, pending: Pending, chunk: int) -> None:
    """Start sending ``frames`` to another rank, after their header; add the sends to ``pending``.

    The frame table, then the frames in messages of at most ``chunk`` bytes,
    straight from their memory.  Nothing to do for this rank (see
    :func:`announce`).  After the header: a receiver sees the header only
    once its MPI has queued every message sent before it (~0.2 ms per big
    message with MPICH).
    """
    if dest == comm.Get_rank():
        return
    table = array("q", [chunk, *(b.nbytes for b in frames.buffers)])
    pending.append((comm.Isend([table, MPI.INT64_T], dest, TAG_FRAMES), table))
    for piece in pieces(frames.buffers, chunk):
        pending.append((comm.Isend([piece, MPI.BYTE], dest, TAG_FRAMES), piece))


def parts(comm: MPI.Comm, dest: int, frames: Frames, chunk: int) -> list[tuple[list[Any], int]]:
    """Return the messages :func:`isend` would send, as ``([buffer, datatype], tag)``, to start all at once."""
    if dest == comm.Get_rank():
        return []
    table = array("q", [chunk, *(b.nbytes for b in frames.buffers)])
    return [([table, MPI.INT64_T], TAG_FRAMES)] + [
        ([piece, MPI.BYTE], TAG_FRAMES) for piece in pieces(frames.buffers, chunk)
    ]


def buffers_of(table: array[int], source: int) -> tuple[int, list[memoryview]]:
    """Check a received frame table from ``source``; return its chunk size and new buffers for its frames."""
    chunk, *sizes = table
    if chunk <= 0 or any(size < 0 for size in sizes):
        raise ValueError(f"bad frame table from rank {source}: {table.tolist()}")
    return chunk, [allocate(size) for size in sizes]


def _still_sending(frames: Frames, pending: Pending) -> bool:
    """Whether a send of ``pending`` may still read the memory of ``frames``."""
    memory = {id(b.obj) for b in frames.buffers}
    sends = [r for r, buffer in pending if isinstance(buffer, memoryview) and id(buffer.obj) in memory]
    return bool(sends) and not MPI.Request.Testall(sends)


def _recv_table(comm: MPI.Comm, source: int, count: int) -> tuple[int, list[memoryview]]:
    table = array("q", bytes(8 * (count + 1)))
    comm.Recv([table, MPI.INT64_T], source, TAG_FRAMES)
    return buffers_of(table, source)


def recv(comm: MPI.Comm, source: int, tag: int, count: int) -> Frames:
    """Receive the ``count`` frames announced by a header from ``source`` on ``tag``; block until they are here."""
    if source == comm.Get_rank():
        return handed_over(comm, tag)
    chunk, buffers = _recv_table(comm, source, count)
    MPI.Request.Waitall([comm.Irecv([piece, MPI.BYTE], source, TAG_FRAMES) for piece in pieces(buffers, chunk)])
    return Frames(buffers)
