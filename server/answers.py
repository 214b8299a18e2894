"""The requests both lock cores answer alike, in Python: a fence's end, wait and collect, site names, the lock table.

:class:`~.core.LockCore` and :class:`~.native_core.NativeLockCore` (whose C
core decides the lock requests, ``server/_native.c``) keep the same
bookkeeping for these: a :class:`~.fences.FenceBook`, the acquire sites each
rank named, and the lock table rebuilt from their keys.  :func:`answer`
takes the core and one request, with the rank that sent it, and returns the
replies.  What differs stays in the cores: the Python core's handlers get a
holder id and turn it into a rank, the native one's the rank; ``FENCE_BEGIN``
takes the write lock, in each core its own way.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from .events import Send
from .fences import FenceBook
from .protocol import FenceStatus, Flag, Op, Reply

if TYPE_CHECKING:
    from .frames import Payload  # a type only: the cores import no MPI

_FILTER = int(Flag.FILTER)
_FENCE_END, _FENCE_WAIT, _COLLECT, _SITE = int(Op.FENCE_END), int(Op.FENCE_WAIT), int(Op.COLLECT), int(Op.SITE)


class Book(Protocol):
    """What these answers read and keep in a core."""

    fences: FenceBook
    sites: dict[tuple[int, int], str]
    """(rank, site id) -> ``file:line`` of an acquire site, as the rank named it."""

    def table(self, now: float, wanted: Iterable[bytes] | None = None) -> list[dict[str, object]]:
        """Holders and waiters of ``wanted`` keys (default: every key in use)."""


OPS = frozenset(int(op) for op in (Op.FENCE_END, Op.FENCE_WAIT, Op.COLLECT, Op.SITE, Op.LOCKS))
"""The ops both cores answer with :func:`answer`."""


def answer(
    core: Book,
    op: int,
    rank: int,
    seq: int,
    arg: int,
    aux: int,
    payload: Payload | None,
    keys: tuple[bytes, ...],
    site: int,
    now: float,
) -> list[Send]:
    """Return the replies to ``rank``'s request ``op`` (one of :data:`OPS`), kept in ``core``'s books.

    ``FENCE_END``: the writer ended fence ``arg`` with status ``aux`` and
    ``payload``; ``FENCE_WAIT``: ``rank`` arrived at its end (``aux``: it
    wants no reply); ``COLLECT``: ``rank`` collects what its writer shared;
    ``SITE``: ``rank`` names its acquire site ``arg`` (the ``file:line`` in
    ``payload``; no reply); ``LOCKS``: the table of the locks in use (of
    ``keys`` only, with :attr:`~.protocol.Flag.FILTER`).
    """
    if op == _FENCE_END:
        return core.fences.end(rank, seq, arg, FenceStatus(aux), payload)
    if op == _FENCE_WAIT:
        return core.fences.wait(rank, seq, arg, reply=not aux)
    if op == _COLLECT:
        return core.fences.collect(rank, seq, arg)
    if op == _SITE:
        core.sites[(rank, arg)] = payload.decode(errors="replace") if isinstance(payload, bytes) else "?"
        return []
    wanted = keys if arg & _FILTER else None  # LOCKS
    return [Send(rank, Reply.PAYLOAD, seq, payload=pickle.dumps(core.table(now, wanted)))]
