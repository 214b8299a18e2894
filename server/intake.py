"""What the lock server takes in from a rank: a request checked against its framing, its payload without blocking.

The server trusts no client's framing.  A message on ``TAG_REQUEST`` shorter
than the header, longer than :data:`~.protocol.MAX_MESSAGE`, with a key
length that does not fit what arrived or an op code the protocol does not
have is refused (:func:`read`).  A payload (``nbytes > 0``, one message on
``TAG_PAYLOAD``) or frames (``nbytes < 0``, a frame table and its messages on
``TAG_FRAMES``) are received by :class:`Intake` one step per poll, never with
a blocking call: each message is probed first (``Improbe``) and received
whole at its real size (``Mrecv`` of the matched message), so a message of
another size than announced is taken in and the request refused, never an
MPI truncation error.  A payload that does not come within
:data:`~.wire.PAYLOAD_GRACE` seconds refuses its request, and an announced
size past :data:`~.wire.MAX_PAYLOAD` (or :data:`~.wire.MAX_FRAMES`) is
refused at once.

Both service loops (:mod:`.loop`, :mod:`.native_loop`) send a refused request
an ``ERROR`` reply with its text and the header's ``seq`` (``seq`` 0 for a
message shorter than the header: a client drops a reply it waits for no
more), except for the requests that get no reply (``RELEASE``,
``DOWNGRADE``, ``SITE``, ``HELLO``), and log it as a warning on logger
``mpilock.server``.  A refused request's announced payload is still taken in
(or waited for, up to the grace), so that the rank's later payloads are not
mistaken for it.
"""

from __future__ import annotations

import time
from array import array
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from mpi4py import MPI

from . import frames, wire
from .frames import Frames, Payload
from .protocol import HEADER, MAX_MESSAGE, TAG_FRAMES, TAG_PAYLOAD, Op

Request = tuple[int, int, int, int, int, int, bytes]
"""A request taken in: ``(op, seq, arg, aux, nbytes, site, key area)``."""

OPS = frozenset(int(op) for op in Op)
"""The op codes of the protocol."""

NO_HEADER: Request = (0, 0, 0, 0, 0, 0, b"")
"""What is served of a message shorter than the header: its refusal, an ERROR reply with ``seq`` 0."""

STALLED = 0.001
"""Seconds an intake waits for a sender's next message before its poller may back off (see :attr:`Intake.stalled`)."""

_HEADER_SIZE = HEADER.size
_LARGEST_CHUNK = 1 << 31

Steps = Generator[None, None, Any]


def read(message: Any, count: int, truncated: bool, rank: int) -> tuple[Request | None, str | None]:
    """Return the request in the ``count`` bytes of ``message`` from ``rank``, and what is wrong with it (or ``None``).

    ``truncated``: the message was longer than :data:`~.protocol.MAX_MESSAGE`
    (its first bytes are in ``message``).  The request is ``None`` only if not
    even the header arrived.  A request with a fault has no key area.
    """
    if count < _HEADER_SIZE:
        return None, f"a request message of {count} bytes, shorter than the {_HEADER_SIZE}-byte header"
    op, seq, arg, aux, nbytes, site, length = HEADER.unpack_from(message)
    problem = None
    if truncated or (count == MAX_MESSAGE and length != count - _HEADER_SIZE):
        # A full buffer whose header does not account for it was cut: some transports (a rank's sends to
        # itself under Open MPI, sometimes MPICH's) truncate without reporting MPI_ERR_TRUNCATE.
        problem = (
            f"a request message longer than {MAX_MESSAGE} bytes (the server's limit; longer key areas travel as "
            "the payload)"
        )
    elif length != count - _HEADER_SIZE:  # a client sends the header and its key area, nothing more or less
        problem = f"the header announces a key area of {length} bytes, {count - _HEADER_SIZE} arrived after it"
    elif op not in OPS:
        problem = f"unknown op {op} from rank {rank}"
    area = bytes(message[_HEADER_SIZE : _HEADER_SIZE + length]) if problem is None and length else b""
    return (op, seq, arg, aux, nbytes, site, area), problem


class Intake:
    """The payload a request's header announced, received without blocking and checked against the header.

    Start one per sender at a time, in the order of its headers (payloads of
    one sender share tags), and call :meth:`test` until it returns true; then
    :attr:`payload` holds the payload, or :attr:`error` says why the request
    is refused.
    """

    def __init__(self, comm: MPI.Comm, source: int, tag: int, nbytes: int) -> None:
        """Start taking in the payload of ``nbytes`` (the header word) a header from ``source`` on ``tag`` announced."""
        self.payload: Payload | None = None
        """The payload, once :meth:`test` returned true without an error (``None`` if none was announced)."""
        self.error: str | None = None
        """Why the request must be refused, if it must."""
        self._comm = comm
        self._source = source
        self._nbytes = nbytes
        self._waiting = False
        """Whether the step in progress waits for a message to show (the grace runs out only then)."""
        self._since = 0.0
        """When it began to wait for it."""
        self._deadline = time.monotonic() + wire.PAYLOAD_GRACE
        self._steps: Steps | None = None
        if nbytes > wire.MAX_PAYLOAD:
            self.error = f"the header announces a payload of {nbytes} bytes, over the limit of {wire.MAX_PAYLOAD}"
        elif nbytes < -wire.MAX_FRAMES:
            self.error = f"the header announces {-nbytes} frames, over the limit of {wire.MAX_FRAMES}"
        elif nbytes > 0:
            self._steps = self._plain(nbytes)
        elif nbytes < 0 and source == comm.Get_rank():
            try:  # this process's own client handed them over in memory
                self.payload = frames.handed_over(comm, tag)
            except (KeyError, IndexError):
                self.error = "the header announces frames that were never handed over"
        elif nbytes < 0:
            self._steps = self._frames(-nbytes)

    @property
    def stalled(self) -> bool:
        """Whether it has waited over :data:`STALLED` seconds for the sender's next message: polling may back off."""
        return self._waiting and time.monotonic() - self._since > STALLED

    def test(self) -> bool:
        """Take one step (a probe, or receive one message); return whether the payload is here or refused."""
        steps = self._steps
        if steps is None:
            return True
        try:
            next(steps)
        except StopIteration:
            self._steps = None
            return True
        if self._waiting and time.monotonic() > self._deadline:
            steps.close()
            self._steps = None
            what = f"a payload of {self._nbytes} bytes" if self._nbytes > 0 else f"{-self._nbytes} frames"
            self.error = (
                f"the header announces {what}, which did not arrive within {wire.PAYLOAD_GRACE:g} s "
                "(the client must send a request's header and payload together)"
            )
            return True
        return False

    # -- the steps -------------------------------------------------------------------------------------
    def _probe(self, tag: int) -> Generator[None, None, tuple[MPI.Message, int]]:
        """Wait (one probe per step) for the sender's next message on ``tag``; return it matched, and its size."""
        status = MPI.Status()
        self._waiting, self._since = True, time.monotonic()
        while (message := self._comm.Improbe(self._source, tag, status)) is None:
            yield
        self._waiting = False
        return message, status.Get_count(MPI.BYTE)

    def _receive(self, message: MPI.Message, buffer: Any) -> Steps:
        """Receive the matched ``message`` into ``buffer`` (its size; one ``Test`` per step)."""
        request = message.Irecv([buffer, MPI.BYTE])
        while not request.Test():
            yield
        self._deadline = time.monotonic() + wire.PAYLOAD_GRACE  # progress: the grace starts again

    def _plain(self, nbytes: int) -> Steps:
        message, size = yield from self._probe(TAG_PAYLOAD)
        buffer = frames.allocate(max(size, 0))
        yield from self._receive(message, buffer)
        if size != nbytes:
            self.error = f"payload of {size} bytes, header announced {nbytes}"
        else:
            self.payload = bytes(buffer)

    def _frames(self, count: int) -> Steps:
        message, size = yield from self._probe(TAG_FRAMES)
        if size != 8 * (count + 1):
            yield from self._receive(message, bytearray(max(size, 0)))
            self.error = f"frame table of {size} bytes, header announced {count} frames ({8 * (count + 1)} bytes)"
            return
        table = array("q", bytes(size))
        yield from self._receive(message, table)
        chunk, *sizes = table
        if not 0 < chunk < _LARGEST_CHUNK or min(sizes) < 0 or sum(sizes) > wire.MAX_PAYLOAD:
            shown = ", ".join(str(n) for n in table[:9]) + (", ..." if len(table) > 9 else "")
            self.error = f"bad frame table [{shown}] (chunk, then the frame sizes) for {count} frames"
            return
        try:
            buffers = [frames.allocate(n) for n in sizes]
        except (MemoryError, OSError, ValueError) as err:
            self.error = f"frames of {sum(sizes)} bytes could not be allocated: {err}"
            return
        left = sum(-(-n // chunk) for n in sizes)
        for piece in frames.pieces(buffers, chunk):
            message, size = yield from self._probe(TAG_FRAMES)
            left -= 1
            if size != piece.nbytes:
                yield from self._receive(message, bytearray(max(size, 0)))
                self.error = f"frame message of {size} bytes, the frame table announced {piece.nbytes}"
                yield from self._drain(TAG_FRAMES, left)
                return
            yield from self._receive(message, piece)
            if left:
                yield  # at most about one chunk copied per step: the server answers others in between
        self.payload = Frames(buffers)

    def _drain(self, tag: int, most: int) -> Steps:
        """Receive and drop up to ``most`` more messages of the sender on ``tag``, those that have arrived."""
        status = MPI.Status()
        for _ in range(most):
            message = self._comm.Improbe(self._source, tag, status)
            if message is None:
                return
            yield from self._receive(message, bytearray(max(status.Get_count(MPI.BYTE), 0)))
            yield


Serve = Callable[[int, Request, "Payload | None", "str | None"], bool]
"""``serve(rank, request, payload, problem)`` of :meth:`Arrivals.advance`: true to stop at once (the channel ended)."""


class Arrivals:
    """Per rank, the requests that wait for their payload (the first) or behind one that does, in the order sent.

    Both service loops keep one per channel: a request with a payload (or
    one the C thread handed over, see :mod:`.native_loop`) waits here while
    its payload arrives through an :class:`Intake`, one step per poll, and
    the rank's later requests wait behind it, so that each rank's requests
    are served in the order it sent them while other ranks are served
    meanwhile.
    """

    def __init__(self, comm: MPI.Comm, tag: int) -> None:
        """Take the payloads in on ``comm`` (the tag of the headers is ``tag``)."""
        self._comm = comm
        self._tag = tag
        self._waiting: dict[int, deque[tuple[Request, str | None]]] = {}
        """Per rank, requests waiting for their payload (the first) or behind it, each with its fault if it has one."""
        self._intake: dict[int, Intake] = {}
        """Per rank, the payload being received for its first waiting request."""

    def __bool__(self) -> bool:
        """Whether a request waits."""
        return bool(self._waiting)

    def __contains__(self, rank: object) -> bool:
        """Whether a request of ``rank`` waits (its next one must queue behind it)."""
        return rank in self._waiting

    def add(self, rank: int, request: Request | None, problem: str | None) -> None:
        """Queue ``rank``'s ``request`` (``None``: shorter than a header) with its ``problem``, behind its others."""
        self._waiting.setdefault(rank, deque()).append((request or NO_HEADER, problem))

    def advance(self, serve: Serve) -> tuple[bool, bool]:
        """Advance every waiting rank's payload by one step; ``serve`` the requests whose payload is here, in order.

        Returns ``(served, moving)``: whether a request was served (or
        refused), and whether a payload is on its way, not only waited for
        (see :attr:`Intake.stalled`): poll again soon.  Stops as soon as
        ``serve`` returns true.
        """
        served = moving = False
        for rank, waiting in list(self._waiting.items()):
            while waiting:
                request, problem = waiting[0]
                intake = self._intake.get(rank)
                if intake is None:
                    intake = self._intake[rank] = Intake(self._comm, rank, self._tag, request[4])
                if not intake.test():  # frames: one chunk per test, MPI free for other work in between
                    moving = moving or not intake.stalled
                    break
                del self._intake[rank]
                waiting.popleft()
                served = True
                if serve(rank, request, intake.payload, problem or intake.error):
                    return served, moving
            else:
                del self._waiting[rank]
        return served, moving
