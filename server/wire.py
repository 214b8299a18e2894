"""Framing of one message on the private communicator, for both ends.

A message is a :data:`~.protocol.HEADER` (``code, seq, arg, aux, nbytes,
site, keys``) plus, for requests, the key area; when ``nbytes > 0``, a byte message
of that length follows on ``TAG_PAYLOAD`` from the same sender; when
``nbytes < 0``, ``-nbytes`` frames (see :mod:`.protocol`, :mod:`.frames`).
"""

from __future__ import annotations

from typing import Any

from mpi4py import MPI

from . import frames, keys
from .frames import Frames, Payload
from .protocol import HEADER, KEY_AREA, MAX_MESSAGE, TAG_PAYLOAD, TAG_REPLY, TAG_REPLY_PAYLOAD, TAG_REQUEST, Flag

Pending = list[tuple[Any, Any]]
"""Sends in flight, each with the buffer MPI may still read: a request, or a list of persistent requests
started together (:func:`request_parts`), with their buffers."""

REAP_AFTER = 16
"""Complete finished sends once this many are in flight, even on a busy path."""

PAYLOAD_GRACE = 30.0
"""Seconds the server waits for a payload (or a frame) a header announced before it refuses the request.

The server never blocks for a client's message (:mod:`.intake`): a payload
that has not arrived holds back only its own rank's later requests, and only
this long."""
MAX_PAYLOAD = 1 << 40
"""Largest payload the server accepts, in bytes (plain, or the frames together); a larger announcement is refused."""
MAX_FRAMES = 1 << 20
"""Most frames one payload may have (its frame table is ``8 * (frames + 1)`` bytes)."""

_MULTI, _KEYS_IN_PAYLOAD = int(Flag.MULTI), int(Flag.KEYS_IN_PAYLOAD)


def message_buffer() -> bytearray:
    """Return a buffer to receive one request (header and key area) into."""
    return bytearray(MAX_MESSAGE)


def reply_buffer() -> bytearray:
    """Return a buffer to receive one reply header into."""
    return bytearray(HEADER.size)


def header_message(code: int, seq: int, arg: int, aux: int, nbytes: int = 0, site: int = 0, area: bytes = b"") -> bytes:
    """Return the message of one request or reply: the packed :data:`~.protocol.HEADER`, then the key ``area``.

    ``nbytes`` announces the payload that follows (see the module's text).
    Every message starts here; :meth:`mpilock.link.Link.send` inlines the
    same line for a request without payload, its hot path.
    """
    return HEADER.pack(code, seq, arg, aux, nbytes, site, len(area)) + area


def isend(
    comm: MPI.Intracomm,
    dest: int,
    tag: int,
    code: int,
    seq: int,
    arg: int,
    aux: int,
    payload: Payload | None,
    pending: Pending,
    area: bytes = b"",
    site: int = 0,
) -> None:
    """Start sending one message to ``dest`` (the header and ``area`` on ``tag``); add its sends to ``pending``.

    ``area`` must fit :data:`~.protocol.KEY_AREA` (see :func:`key_area`).
    Frames go in small messages to the lock server, big ones from it.
    """
    if payload is None:
        nbytes = 0
    elif isinstance(payload, Frames):
        nbytes = frames.announce(comm, dest, tag, payload, pending)
    else:
        nbytes = len(payload)
    message = header_message(code, seq, arg, aux, nbytes, site, area)
    pending.append((comm.Isend([message, MPI.BYTE], dest, tag), message))
    if payload is None:
        return
    if isinstance(payload, Frames):
        frames.isend(comm, dest, payload, pending, frames.SMALL_CHUNK if tag == TAG_REQUEST else frames.BIG_CHUNK)
    elif payload:
        payload_tag = TAG_REPLY_PAYLOAD if tag == TAG_REPLY else TAG_PAYLOAD
        pending.append((comm.Isend([payload, MPI.BYTE], dest, payload_tag), payload))


def request_parts(
    comm: MPI.Intracomm,
    dest: int,
    code: int,
    seq: int,
    arg: int,
    aux: int,
    payload: Payload | None,
    area: bytes = b"",
    site: int = 0,
) -> list[tuple[list[Any], int]]:
    """Return the messages of one request to ``dest``, as ``([buffer, datatype], tag)``, header first.

    They are to be started all at once (see :meth:`mpilock.link.Link.send`).
    Frames to this very process are handed over now (:func:`frames.announce`).
    """
    nbytes = 0
    if payload is None:
        pass
    elif isinstance(payload, Frames):
        nbytes = frames.announce(comm, dest, TAG_REQUEST, payload, [])
    else:
        nbytes = len(payload)
    message = header_message(code, seq, arg, aux, nbytes, site, area)
    parts: list[tuple[list[Any], int]] = [([message, MPI.BYTE], TAG_REQUEST)]
    if isinstance(payload, Frames):
        parts += frames.parts(comm, dest, payload, frames.SMALL_CHUNK)
    elif payload:
        parts.append(([payload, MPI.BYTE], TAG_PAYLOAD))
    return parts


def key_area(encoded: tuple[bytes, ...], flags: int) -> tuple[bytes, int, bytes | None]:
    """Return ``(area, flags, payload)`` that carry ``encoded`` keys: inline, or as the payload if too long."""
    if len(encoded) == 1:
        area = encoded[0]
    else:
        area = keys.pack(encoded)
        flags |= _MULTI
    if len(area) <= KEY_AREA:
        return area, flags, None
    return b"", flags | _KEYS_IN_PAYLOAD, area


def request_keys(arg: int, area: bytes, payload: Payload | None) -> tuple[bytes, ...]:
    """Decode the keys of a request from its flags, key area and payload (inverse of :func:`key_area`)."""
    if arg & _KEYS_IN_PAYLOAD:
        area = frames.joined(payload)
    if arg & _MULTI:
        return keys.unpack(area)
    return (area,)


def reap(pending: Pending) -> Pending:
    """Return the sends of ``pending`` that are still in flight (one ``Testsome`` for all single sends)."""
    single = [r for r, _ in pending if type(r) is not list]
    groups = len(single) != len(pending)
    done = MPI.Request.Testsome(single) if single else None
    if not done and not groups:
        return pending
    return [
        p for p in pending if (p[0] != MPI.REQUEST_NULL if type(p[0]) is not list else not MPI.Request.Testall(p[0]))
    ]


def wait_all(pending: Pending) -> None:
    """Complete every send of ``pending``."""
    MPI.Request.Waitall([r for r, _ in pending if type(r) is not list])
    for r, _ in pending:
        if type(r) is list:
            MPI.Request.Waitall(r)
