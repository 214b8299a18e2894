"""Framing of one message on the private communicator, for both ends.

A message is an int64 header ``[code, seq, arg, aux, nbytes]`` and, when
``nbytes > 0``, a byte message of that length on ``TAG_PAYLOAD`` from the
same sender (see :mod:`.protocol`); when ``nbytes < 0``, ``-nbytes`` frames
(see :mod:`.frames`).
"""

from __future__ import annotations

from array import array
from typing import Any

from mpi4py import MPI

from . import frames
from .frames import Frames, Payload
from .protocol import HEADER_LEN, TAG_PAYLOAD, TAG_REPLY, TAG_REQUEST

Pending = list[tuple[MPI.Request, Any]]
"""Sends in flight, each with the buffer MPI may still read."""

REAP_AFTER = 16
"""Complete finished sends once this many are in flight, even on a busy path."""


def header_buffer() -> array[int]:
    """Return a buffer to receive one header into."""
    return array("q", bytes(8 * HEADER_LEN))


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
) -> None:
    """Start sending one message to ``dest`` (the header on ``tag``); add its sends to ``pending``.

    Frames go in small messages to the lock server, big ones from it.
    """
    if payload is None:
        nbytes = 0
    elif isinstance(payload, Frames):
        nbytes = frames.announce(comm, dest, tag, payload, pending)
    else:
        nbytes = len(payload)
    header = array("q", (code, seq, arg, aux, nbytes))
    pending.append((comm.Isend([header, MPI.INT64_T], dest, tag), header))
    if payload is None:
        return
    if isinstance(payload, Frames):
        frames.isend(comm, dest, payload, pending, frames.SMALL_CHUNK if tag == TAG_REQUEST else frames.BIG_CHUNK)
    elif payload:
        pending.append((comm.Isend([payload, MPI.BYTE], dest, TAG_PAYLOAD), payload))


def reap(pending: Pending) -> Pending:
    """Return the sends of ``pending`` that are still in flight (one ``Testsome`` for all)."""
    done = MPI.Request.Testsome([r for r, _ in pending])
    if not done:
        return pending
    return [p for p in pending if p[0] != MPI.REQUEST_NULL]


def recv_payload(comm: MPI.Intracomm, source: int, nbytes: int, tag: int = TAG_REPLY) -> Payload | None:
    """Receive the payload announced by a header from ``source`` on ``tag`` (``None`` if there is none).

    Blocks until it is here, frames included.
    """
    if not nbytes:
        return None
    if nbytes < 0:
        return frames.recv(comm, source, tag, -nbytes)
    buf = bytearray(nbytes)
    comm.Recv([buf, MPI.BYTE], source, TAG_PAYLOAD)
    return bytes(buf)
