"""The requests both lock cores answer alike, in Python: a fence's end, wait and collect, site names, the lock table.

:class:`~.core.LockCore` and :class:`~.native_core.NativeLockCore` (whose C
core decides the lock requests, ``server/_native.c``) keep the same
bookkeeping for these: a :class:`~.fences.FenceBook`, the acquire sites each
rank named, and the lock table rebuilt from their keys.  Each answer here
takes the core and one request, with the rank that sent it, and returns the
replies.  What differs stays in the cores: the Python core's handlers get a
holder id and turn it into a rank, the native one's the rank; ``FENCE_BEGIN``
takes the write lock, in each core its own way.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from .events import Send
from .fences import FenceBook
from .protocol import FenceStatus, Flag, Op, Reply

if TYPE_CHECKING:
    from .frames import Payload  # a type only: the cores import no MPI

_FILTER = int(Flag.FILTER)


class Book(Protocol):
    """What these answers read and keep in a core."""

    fences: FenceBook
    sites: dict[tuple[int, int], str]
    """(rank, site id) -> ``file:line`` of an acquire site, as the rank named it."""

    def table(self, now: float, wanted: Iterable[bytes] | None = None) -> list[dict[str, object]]:
        """Holders and waiters of ``wanted`` keys (default: every key in use)."""


Answer = Callable[[Book, int, int, int, int, "Payload | None", "tuple[bytes, ...]", int, float], list[Send]]
"""``answer(core, rank, seq, arg, aux, payload, keys, site, now)``: the replies to one request of ``rank``."""


def fence_end(
    core: Book,
    rank: int,
    seq: int,
    arg: int,
    aux: int,
    payload: Payload | None,
    keys: tuple[bytes, ...],
    site: int,
    now: float,
) -> list[Send]:
    """End fence ``arg`` on its writer ``rank``, with status ``aux`` and ``payload``."""
    return core.fences.end(rank, seq, arg, FenceStatus(aux), payload)


def fence_wait(
    core: Book,
    rank: int,
    seq: int,
    arg: int,
    aux: int,
    payload: Payload | None,
    keys: tuple[bytes, ...],
    site: int,
    now: float,
) -> list[Send]:
    """``rank`` arrived at the end of fence ``arg`` (``aux``: it wants no reply, see :meth:`FenceBook.wait`)."""
    return core.fences.wait(rank, seq, arg, reply=not aux)


def collect(
    core: Book,
    rank: int,
    seq: int,
    arg: int,
    aux: int,
    payload: Payload | None,
    keys: tuple[bytes, ...],
    site: int,
    now: float,
) -> list[Send]:
    """``rank`` collects what the writer of fence ``arg`` shared."""
    return core.fences.collect(rank, seq, arg)


def name_site(
    core: Book,
    rank: int,
    seq: int,
    arg: int,
    aux: int,
    payload: Payload | None,
    keys: tuple[bytes, ...],
    site: int,
    now: float,
) -> list[Send]:
    """``rank`` names its acquire site ``arg``: the ``file:line`` in ``payload`` (no reply)."""
    core.sites[(rank, arg)] = payload.decode(errors="replace") if isinstance(payload, bytes) else "?"
    return []


def locks_reply(
    core: Book,
    rank: int,
    seq: int,
    arg: int,
    aux: int,
    payload: Payload | None,
    keys: tuple[bytes, ...],
    site: int,
    now: float,
) -> list[Send]:
    """``rank`` asks for the table of the locks in use (of ``keys`` only, with :attr:`Flag.FILTER`)."""
    wanted = keys if arg & _FILTER else None
    return [Send(rank, Reply.PAYLOAD, seq, payload=pickle.dumps(core.table(now, wanted)))]


ANSWERS: dict[int, Answer] = {
    Op.FENCE_END: fence_end,
    Op.FENCE_WAIT: fence_wait,
    Op.COLLECT: collect,
    Op.SITE: name_site,
    Op.LOCKS: locks_reply,
}
"""The answer of each op both cores answer alike."""
