"""Framing of one message on the private communicator, for both ends.

A message is an int64 header ``[code, seq, arg, aux, nbytes]`` and, when
``nbytes > 0``, a byte message of that length on ``TAG_PAYLOAD`` from the
same sender (see :mod:`.protocol`).
"""

from __future__ import annotations

from array import array
from typing import Any

from mpi4py import MPI

from .protocol import HEADER_LEN, TAG_PAYLOAD

Pending = list[tuple[MPI.Request, Any]]
"""Sends in flight, each with the buffer MPI may still read."""


def header_buffer() -> array[int]:
    """Return a buffer to receive one header into."""
    return array("q", bytes(8 * HEADER_LEN))


def isend(
    comm: MPI.Intracomm, dest: int, tag: int, code: int, seq: int, arg: int, aux: int, payload: bytes | None
) -> Pending:
    """Start sending one message to ``dest``; the header goes on ``tag``."""
    data = payload or b""
    header = array("q", [code, seq, arg, aux, len(data)])
    sends: Pending = [(comm.Isend([header, MPI.INT64_T], dest, tag), header)]
    if data:
        sends.append((comm.Isend([data, MPI.BYTE], dest, TAG_PAYLOAD), data))
    return sends


def recv_payload(comm: MPI.Intracomm, source: int, nbytes: int) -> bytes | None:
    """Receive the payload announced by a header from ``source`` (``None`` if there is none)."""
    if not nbytes:
        return None
    buf = bytearray(nbytes)
    comm.Recv([buf, MPI.BYTE], source, TAG_PAYLOAD)
    return bytes(buf)
