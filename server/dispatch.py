"""From a request taken in to its replies, and the replies onto the wire: what both service loops do alike.

The Python loop (:mod:`.loop`) runs every request through :func:`answer`;
the native loop (:mod:`.native_loop`) only those its C thread hands over
(payloads, fences, ``STATS``, ``LOCKS``), the C thread answering the lock
requests itself.  Either way a refused request gets an ``ERROR`` reply with
its text (none for the requests that get no reply), and :func:`send_replies`
starts the sends and pokes each client's word (:mod:`.wake`).
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable
from typing import Any, Protocol

from mpi4py import MPI

from . import wire
from .events import ProtocolError, Send
from .frames import Payload
from .intake import Request
from .protocol import KEYED, TAG_REPLY, Op, Reply

log = logging.getLogger("mpilock.server")

# enum lookups are slow on the hot path
_STATS = int(Op.STATS)
_KEYED = frozenset(int(op) for op in KEYED)
NO_REPLY = frozenset(int(op) for op in (Op.RELEASE, Op.DOWNGRADE, Op.SITE, Op.HELLO))
"""The requests that get no reply, not even an error."""
_DEFAULT_KEYS: tuple[bytes, ...] = (b"",)


class Observer(Protocol):
    """What a channel reports to: the lock statistics and trace recorder."""

    def observe(
        self, now: float, rank: int, op: int, seq: int, replies: list[Send], keys: tuple[bytes, ...] = ...
    ) -> None:
        """Account for one request from ``rank`` on ``keys`` and the replies it caused."""

    def stats(self) -> dict[str, Any]:
        """Summarise what was observed (sent to clients that ask with ``Op.STATS``)."""

    thread_name: Callable[[int, int], str | None]
    """``(rank, slot)`` -> the name that thread gave the server: the channel sets it from its core."""


class Core(Protocol):
    """What :func:`answer` asks of a lock core (:class:`~.core.LockCore` or :class:`~.native_core.NativeLockCore`)."""

    def handle(
        self,
        rank: int,
        op: int,
        seq: int,
        arg: int = ...,
        aux: int = ...,
        payload: Payload | None = ...,
        keys: tuple[bytes, ...] = ...,
        site: int = ...,
        now: float = ...,
    ) -> list[Send]:
        """Apply one request; return the replies to send."""


def refusal(rank: int, op: int, seq: int, text: str) -> list[Send]:
    """Return the ``ERROR`` reply that refuses ``rank``'s request (none for a request that gets no reply)."""
    return [] if op in NO_REPLY else [Send(rank, Reply.ERROR, seq, payload=text.encode())]


def answer(
    core: Core,
    observer: Observer | None,
    rank: int,
    request: Request,
    payload: Payload | None,
    problem: str | None,
    observe: bool,
) -> list[Send]:
    """Return the replies to ``rank``'s ``request`` (refused if it has a ``problem``), by ``core`` or the ``observer``.

    ``STATS`` is answered with the ``observer``'s statistics; every other
    request goes to the core, whose protocol errors refuse it.  With
    ``observe``, the request and its replies are reported to the observer
    (the native loop's C core records its own).
    """
    op, seq, arg, aux, _, site, area = request
    if problem is not None:
        log.warning("refused a malformed request from rank %d: %s", rank, problem)
        return refusal(rank, op, seq, problem)
    if op == _STATS:
        stats = observer.stats() if observer is not None else {}
        return [Send(rank, Reply.PAYLOAD, seq, payload=pickle.dumps(stats))]
    now = time.monotonic()
    keys = _DEFAULT_KEYS
    try:
        if op in _KEYED:
            keys = wire.request_keys(arg, area, payload)
        replies = core.handle(rank, op, seq, arg, aux, payload, keys, site, now)
    except (ProtocolError, ValueError) as err:
        log.warning("protocol error from rank %d: %s", rank, err)
        replies = refusal(rank, op, seq, str(err))
    if observe and observer is not None:
        observer.observe(now, rank, op, seq, replies, keys)
    return replies


def send_replies(
    comm: MPI.Intracomm, replies: list[Send], sends: wire.Pending, words: Any, replied: set[int] | None = None
) -> None:
    """Start sending ``replies`` on ``comm`` (their sends join ``sends``); poke each client's word, if ``words``.

    ``replied`` collects the ranks poked (the Python loop pokes them once
    more before its thread sleeps, see :meth:`.loop.Channel.settle`).
    """
    for reply in replies:
        wire.isend(comm, reply.rank, TAG_REPLY, reply.code, reply.seq, reply.arg, reply.aux, reply.payload, sends)
        if words is not None:
            words.poke(reply.rank)
            if replied is not None:
                replied.add(reply.rank)
