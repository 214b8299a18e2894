"""Values the core hands to its driver: replies to send and protocol errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from .protocol import Reply

if TYPE_CHECKING:
    from .frames import Payload


class ProtocolError(Exception):
    """A client sent a request that breaks the protocol (a bug, not user input)."""


class Send(NamedTuple):
    """One reply for the I/O layer to send to ``rank`` (a tuple: cheap on the hot path)."""

    rank: int
    code: Reply
    seq: int
    arg: int = 0
    aux: int = 0
    payload: Payload | None = None
