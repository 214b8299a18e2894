"""Wire protocol of the lock server: every tag, opcode, flag and size lives here.

A request is one byte message on ``TAG_REQUEST``: a header of ``HEADER_LEN``
little-endian int64 words ``[code, seq, arg, aux, nbytes, site, keys]``
followed by the *key area* of ``keys`` bytes (at most ``KEY_AREA``; none for
the controller's default lock).  A reply is the header alone on ``TAG_REPLY``.  When
``nbytes > 0`` a byte message of that length follows from the same sender on
``TAG_PAYLOAD`` (``TAG_REPLY_PAYLOAD`` after a reply) (cloudpickle bytes, an error text, or a key area too long to
travel inline); ``nbytes < 0`` announces ``-nbytes`` frames on ``TAG_FRAMES``
instead (a pickle stream and its out-of-band buffers, :mod:`.frames`).

The key area of a lock request holds one encoded key (:mod:`.keys`), or with
:data:`Flag.MULTI` a list of them, each prefixed by its length as two bytes.
"""

from __future__ import annotations

import struct
from enum import IntEnum

HEADER_LEN = 7
"""Number of int64 words in every header."""
HEADER = struct.Struct(f"<{HEADER_LEN}q")
"""Layout of the header: ``code, seq, arg, aux, nbytes, site, keys`` (the length of the key area)."""
MAX_MESSAGE = 256
"""Largest request message; the server's receive buffer has this size."""
KEY_AREA = MAX_MESSAGE - HEADER.size
"""Largest key area that travels inline; a longer one is sent as the payload (:data:`Flag.KEYS_IN_PAYLOAD`)."""
KEY_LENGTH = struct.Struct("<H")
"""Length prefix of each key in a multi-key area."""

SLOT_SHIFT = 40
"""Where the sending thread's slot sits in a request's ``seq``: ``seq = (slot << SLOT_SHIFT) | n``.

``slot`` (0 .. 2**23 - 1) names the thread of the sending rank (slot 0 is
the first thread that used the controller on that rank) and ``n`` counts that
thread's requests (``n >= 1``).  Every request carries its thread's slot, the
ones that get no reply (RELEASE, DOWNGRADE, SITE, HELLO) included: the server
holds and queues locks per *holder*, a thread of a rank.  Replies carry the
request's ``seq`` unchanged (that is how a client routes a reply to its
thread), and CANCEL carries the ``seq`` of the request it withdraws, so it
names the holder too."""
SLOT_LIMIT = 1 << 23
"""Slots are below this: ``seq`` stays a positive int64."""

TAG_REQUEST = 11
TAG_REPLY = 12
TAG_PAYLOAD = 13
TAG_FRAMES = 14
"""Frame tables and frames of multi-frame payloads (header ``nbytes < 0``, see :mod:`.frames`)."""
TAG_REPLY_PAYLOAD = 15
"""The payload of a reply (requests' payloads go on ``TAG_PAYLOAD``).  Apart, because the master's own
client sends request payloads to, and receives reply payloads from, its own rank: on one tag a receive of
either could take the other."""


class Op(IntEnum):
    """Requests a client sends to the server."""

    READ = 1
    """Acquire the read lock of the key(s).  ``arg`` is a :class:`Flag` set."""
    WRITE = 2
    """Acquire the write lock of the key(s).  ``arg`` is a :class:`Flag` set."""
    RELEASE = 3
    """Release what this rank holds of the key(s).  No reply."""
    CANCEL = 4
    """Withdraw the request numbered ``seq`` (queued, or already granted) for the key(s).

    Replied with CANCELLED carrying the same ``seq``."""
    FENCE_BEGIN = 5
    """Writer of fence ``arg`` asks for the default write lock."""
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
    BOUNDED = 11
    """Acquire one of the ``aux`` slots of a bounded key.  ``arg`` is a :class:`Flag` set."""
    DOWNGRADE = 12
    """Turn this rank's write lock of the key(s) into a read lock, atomically.  No reply."""
    SITE = 13
    """Name acquire site ``arg``: the key area is its text (``file:line``).  No reply."""
    HELLO = 14
    """Identify the thread that sends it (its slot in ``seq``): ``arg`` its world rank, ``aux`` a thread token.

    The payload, if any, is the thread's name (UTF-8), for reports.  Sent once
    per thread and controller.  No reply."""
    LOCKS = 15
    """Ask for the lock table; replied with PAYLOAD.  With :data:`Flag.FILTER`, only of the key(s)."""


class Flag(IntEnum):
    """Bits in the ``arg`` word of READ/WRITE/BOUNDED requests."""

    TRY = 1
    """Grant now or answer DENIED; never queue."""
    UPGRADE = 2
    """With WRITE and TRY: this rank holds the read lock of the key(s); make it the write lock in place."""
    MULTI = 4
    """The key area is a list of keys, all granted at once."""
    KEYS_IN_PAYLOAD = 8
    """The key area was too long to travel inline: it is the payload."""
    FILTER = 16
    """With LOCKS: only the lock(s) of the key area."""


KEYED = frozenset({Op.READ, Op.WRITE, Op.RELEASE, Op.CANCEL, Op.BOUNDED, Op.DOWNGRADE, Op.LOCKS})
"""Requests whose key area (and MULTI / KEYS_IN_PAYLOAD flags) name keys; the others carry none."""

ANSWERED_AT_ONCE = frozenset({Op.COLLECT, Op.STATS, Op.LOCKS})
"""Requests the server answers as soon as it reads them, with a payload that may be large.

A client whose wait for one of these is cut by an exception takes the reply in
whole before the exception goes on (:meth:`mpilock.link.Link.call`): a payload
left unreceived can stall the rank's other traffic (MPICH over TCP stops
reading the connection), so a ``Barrier`` right after a caught
``KeyboardInterrupt`` would hang."""


class Reply(IntEnum):
    """Replies the server sends to a client."""

    GRANTED = 1
    DENIED = 2
    CANCELLED = 3
    FENCE_DONE = 4
    """Fence ``arg`` ended with status ``aux``; error text follows if it FAILED."""
    PAYLOAD = 5
    """Answer to COLLECT of fence ``arg`` with status ``aux`` (or to STATS/LOCKS); the bytes follow."""
    CLOSED = 6
    ERROR = 7
    """The request broke the protocol (a bug); the error text follows as payload."""
    REFUSED = 8
    """The request was valid but cannot be served (e.g. a bounded key's limit disagrees); text follows."""
    DEADLOCK = 9
    """Granting the request could never happen: it closes a cycle of waits.  The text names the cycle."""


class FenceStatus(IntEnum):
    """Outcome of a fence as reported by its writer."""

    OK_EMPTY = 0
    """The writer's block finished and shared nothing."""
    OK_PAYLOAD = 1
    """The writer's block finished and shared an object."""
    FAILED = 2
    """The writer's block raised; the payload is the error text."""
