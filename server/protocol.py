"""Wire protocol of the lock server: every tag, opcode and status lives here.

A message is a fixed header of ``HEADER_LEN`` 64-bit integers
``[code, seq, arg, aux, nbytes]`` (``code`` is an :class:`Op` or a :class:`Reply`).
When ``nbytes > 0`` a byte message of that length follows from the same sender
on ``TAG_PAYLOAD`` (cloudpickle bytes or an error text); ``nbytes < 0`` announces
``-nbytes`` frames on ``TAG_FRAMES`` instead (:mod:`.frames`).  Client -> server
headers travel on ``TAG_REQUEST``, server -> client headers on ``TAG_REPLY``.
"""

from __future__ import annotations

from enum import IntEnum

HEADER_LEN = 5
"""Number of int64 words in every header message."""

TAG_REQUEST = 11
TAG_REPLY = 12
TAG_PAYLOAD = 13
TAG_FRAMES = 14
"""Frame tables and frames of multi-frame payloads (header ``nbytes < 0``, see :mod:`.frames`)."""


class Op(IntEnum):
    """Requests a client sends to the server."""

    READ = 1
    """Acquire the read lock.  ``arg`` is a :class:`Flag` set."""
    WRITE = 2
    """Acquire the write lock.  ``arg`` is a :class:`Flag` set."""
    RELEASE = 3
    """Release whatever this rank holds.  No reply."""
    CANCEL = 4
    """Withdraw the request numbered ``seq`` (queued or already granted).

    Replied with CANCELLED carrying the same ``seq``."""
    FENCE_BEGIN = 5
    """Writer of fence ``arg`` asks for the write lock."""
    FENCE_END = 6
    """Writer ends fence ``arg``; ``aux`` is a :class:`FenceStatus`; payload optional.

    Replied with FENCE_DONE once every other rank has arrived at the fence."""
    FENCE_WAIT = 7
    """Non-writer arrived at the end of fence ``arg`` and waits until it has ended.

    With ``aux`` = 1 it only reports its arrival and expects no reply."""
    COLLECT = 8
    """Ask for the payload of fence ``arg``."""
    CLOSE = 9
    """This rank closes the controller.  Replied once every rank has closed."""
    STATS = 10
    """Ask for the lock statistics; replied with PAYLOAD carrying a pickled dict."""


class Flag(IntEnum):
    """Bits in the ``arg`` word of READ/WRITE requests."""

    TRY = 1
    """Grant now or answer DENIED; never queue."""


class Reply(IntEnum):
    """Replies the server sends to a client."""

    GRANTED = 1
    DENIED = 2
    CANCELLED = 3
    FENCE_DONE = 4
    """Fence ``arg`` ended with status ``aux``; error text follows if it FAILED."""
    PAYLOAD = 5
    """Answer to COLLECT of fence ``arg`` with status ``aux``; the bytes follow."""
    CLOSED = 6
    ERROR = 7
    """The request was invalid; the error text follows as payload."""


class FenceStatus(IntEnum):
    """Outcome of a fence as reported by its writer."""

    OK_EMPTY = 0
    """The writer's block finished and shared nothing."""
    OK_PAYLOAD = 1
    """The writer's block finished and shared an object."""
    FAILED = 2
    """The writer's block raised; the payload is the error text."""
