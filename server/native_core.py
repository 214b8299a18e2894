"""The native lock core (``server/_native.c``) behind the interface of :class:`~.core.LockCore`.

No MPI here: tests drive it in one process, side by side with the Python
core (``tests/test_native_core.py``).  The C core decides every lock request
(read, write, try, upgrade, bounded, release, downgrade, cancel, hello, close
and the write lock of a fence) with the rules of :mod:`.core`; this wrapper
adds what is Python-shaped: the fences' bookkeeping (:class:`~.fences.FenceBook`),
acquire sites, the lock table, and the texts of errors, refusals and
deadlocks, made from data the C core returns (the deadlock text by
:func:`~.deadlock.describe_cycle` itself).

When the core is served by the native loop (:mod:`.native_loop`), the C side
sends the plain replies (grants, denials, cancels, closes) itself and
:meth:`NativeLockCore.handle` returns only those that carry a text.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import sysconfig
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from . import keys as keyspace
from .answers import OPS as ANSWERED
from .answers import answer
from .core import MODES, lock_table
from .deadlock import Core, Edge, describe_cycle
from .events import ProtocolError, Send
from .fences import FenceBook
from .holders import holder_text
from .locks import KeyState, Request
from .protocol import SLOT_SHIFT, Op, Reply

if TYPE_CHECKING:
    from .frames import Payload

EDITABLE_DIR = "mpilock_server_native"
"""Where an editable install (``pip install -e``) puts the module, in the venv's site-packages (see setup.py)."""


def _load() -> ModuleType:
    """Import ``mpilock.server._native``: from the package, else this venv's editable build, else the build cache.

    The last one is built at first use for the MPI library mpi4py loads
    (:mod:`.native_build`), when the install built no module or one for
    another MPI library (if that build fails, the installed module is
    returned and :mod:`.native` reports the mismatch).
    """
    installed = _load_installed()
    from .native_build import load, serves_mpi4pys_mpi

    if serves_mpi4pys_mpi(installed):
        return installed
    try:
        return load()
    except ImportError:  # not built, or it does not load either: keep the installed one
        sys.modules[installed.__name__] = installed
        return installed


def _load_installed() -> ModuleType:
    """Import the module the install built: from the package, else from this venv's editable build, else the cache."""
    name = f"{__package__}._native"
    try:
        return importlib.import_module(name)
    except ImportError as err:
        if name in sys.modules:  # None there: an import blocked on purpose
            raise
        path = Path(sysconfig.get_path("platlib")) / EDITABLE_DIR / f"_native{sysconfig.get_config_var('EXT_SUFFIX')}"
        spec = importlib.util.spec_from_file_location(name, path)
        if not path.is_file() or spec is None or spec.loader is None:
            from .native_build import BuildError, load

            try:
                return load()
            except BuildError as failed:
                why = f"the install built none ({err}); building it at first use failed: {failed}"
                raise ImportError(why) from failed
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


NATIVE: ModuleType | None
"""The module ``mpilock.server._native``, or ``None`` if it was not built or does not load."""
IMPORT_ERROR: str | None
"""Why it does not load."""
try:
    NATIVE, IMPORT_ERROR = _load(), None
except ImportError as err:  # not built, or its MPI library cannot be loaded
    NATIVE, IMPORT_ERROR = None, str(err)

__all__ = ["IMPORT_ERROR", "NATIVE", "NativeGraph", "NativeLockCore", "available", "module"]

_DEFAULT_KEYS = (keyspace.DEFAULT,)
_REPLIES = {int(r): r for r in Reply}
_DEADLOCK, _REFUSED = int(Reply.DEADLOCK), int(Reply.REFUSED)

# Error kinds of _native.c (enum E_*), in order.
(
    _E_MEMBER,
    _E_CLOSED,
    _E_UNKNOWN_OP,
    _E_BOUNDED_ARGS,
    _E_DOWNGRADE,
    _E_AWAITING,
    _E_HOLDS,
    _E_TWO_MODES,
    _E_DUPLICATE,
    _E_UPGRADE,
    _E_RELEASE,
    _E_CLOSED_TWICE,
    _E_SEQ,
) = range(1, 14)

_ERRORS = {
    _E_MEMBER: "rank {rank} is not one of the lock's {members} member ranks",
    _E_CLOSED: "request {op} from rank {rank} after close",
    _E_UNKNOWN_OP: "unknown op {op} from rank {rank}",
    _E_BOUNDED_ARGS: "rank {rank} asked for a bounded key with limit {aux} on {count} key(s)",
    _E_DOWNGRADE: "rank {rank} downgraded {key}, which it does not hold for write",
    _E_AWAITING: "rank {rank} asked for a lock while awaiting one",
    _E_HOLDS: "rank {rank} asked for {key}, which it holds already",
    _E_TWO_MODES: "rank {rank} used {key} in two modes",
    _E_DUPLICATE: "rank {rank} named a key twice in one request",
    _E_UPGRADE: "rank {rank} upgraded {key}, which it does not hold for read",
    _E_RELEASE: "rank {rank} released {key}, which it does not hold",
    _E_CLOSED_TWICE: "rank {rank} closed twice",
    _E_SEQ: "rank {rank} sent seq {seq}, which names no thread",
}
"""The texts of :mod:`.core`'s protocol errors, by the kind the C core reports."""

_CORES: weakref.WeakValueDictionary[int, NativeLockCore] = weakref.WeakValueDictionary()
"""Every native core of this process by its uid, to name the cores of a deadlock across controllers."""

Special = tuple[Any, ...]
"""What the C core returns besides plain replies: an error, a refusal or a deadlock, as data."""


def module() -> Any:
    """Return the native module; ``ImportError`` if it was not built or does not load."""
    if NATIVE is None:
        raise ImportError(f"mpilock's native server is not available: {IMPORT_ERROR}")
    return NATIVE


def available() -> bool:
    """Whether the native module was built and loads."""
    return NATIVE is not None


class NativeGraph:
    """The wait-for graph shared by the native cores of a process (deadlocks across controllers)."""

    def __init__(self) -> None:
        """Start with no core."""
        self.graph = module().Graph()

    @property
    def arrivals(self) -> float:
        """The arrival number of the last queued writer (or request of a bounded key)."""
        return float(self.graph.arrivals)


class _CycleCore:
    """What :func:`describe_cycle` asks of a core, answered from the data the C core captured."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: dict[int, tuple[int, int]] = {}
        self.holds: dict[tuple[int, bytes, bool], str] = {}
        self.waits: dict[tuple[int, bytes], str] = {}
        self.names: dict[int, str] = {}

    def name_of(self, holder: int) -> str:
        return self.names[holder]

    def describe_hold(self, rank: int, key: bytes, queued: bool) -> str:
        return self.holds[(rank, key, queued)]

    def describe_wait(self, rank: int, key: bytes) -> str:
        return self.waits[(rank, key)]


class NativeLockCore:
    """State of one controller's locks, kept by the C core; the interface of :class:`~.core.LockCore`."""

    def __init__(
        self,
        size: int,
        members: Iterable[int] | None = None,
        graph: NativeGraph | None = None,
        name: str = "",
        record: bool = False,
    ) -> None:
        """Create the state for ``size`` ranks (see :class:`~.core.LockCore`); ``record`` keeps events for stats."""
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self.members = frozenset(range(size) if members is None else members)
        if not self.members or not self.members <= frozenset(range(size)):
            raise ValueError(f"members must be a non-empty subset of range({size})")
        self.graph = graph if graph is not None else NativeGraph()
        self.native = module().Core(size, sorted(self.members), self.graph.graph, record)
        """The C core (``_native.Core``)."""
        self.name = name or f"controller {id(self):x}"
        self.sites: dict[tuple[int, int], str] = {}
        """(rank, site id) -> ``file:line`` of an acquire site, as the rank named it."""
        self.fences = FenceBook(size, self.members)
        self.names: dict[int, str] = {}
        """Holder id -> the thread name its hello gave (the C core numbers the holders)."""
        _CORES[self.native.uid] = self
        self._python: dict[
            int, Callable[[int, int, int, int, Payload | None, tuple[bytes, ...], int, float], list[Send]]
        ]
        self._python = {Op.FENCE_BEGIN: self._on_fence_begin}
        for op in ANSWERED:  # answered as the Python core answers them
            self._python[op] = partial(answer, self, op)

    @property
    def closed(self) -> bool:
        """Whether every member rank has closed."""
        return bool(self.native.closed)

    # -- the one entry point -----------------------------------------------------------------------
    def handle(
        self,
        rank: int,
        op: int,
        seq: int,
        arg: int = 0,
        aux: int = 0,
        payload: Payload | None = None,
        keys: tuple[bytes, ...] = _DEFAULT_KEYS,
        site: int = 0,
        now: float = 0.0,
    ) -> list[Send]:
        """Apply request ``op`` from ``rank`` on ``keys``; return the replies to send (as :meth:`LockCore.handle`)."""
        handler = self._python.get(op)
        if handler is None:
            out = self.lock(rank, op, seq, arg, aux, keys, site, now)
            if op == Op.HELLO and isinstance(payload, bytes) and payload:  # the thread's name, for reports
                self.names[self.native.holder(rank, seq >> SLOT_SHIFT)] = payload.decode(errors="replace")
            return out
        if rank not in self.members:
            raise ProtocolError(_ERRORS[_E_MEMBER].format(rank=rank, members=len(self.members)))
        if self.closed:
            raise ProtocolError(_ERRORS[_E_CLOSED].format(op=op, rank=rank))
        if seq < 0:
            raise ProtocolError(_ERRORS[_E_SEQ].format(rank=rank, seq=seq))
        if seq >> SLOT_SHIFT:  # numbered on first sight whatever the op, as the Python core does
            self.native.holder(rank, seq >> SLOT_SHIFT)
        return handler(rank, seq, arg, aux, payload, keys, site, now)

    def lock(
        self, rank: int, op: int, seq: int, arg: int, aux: int, keys: tuple[bytes, ...], site: int, now: float
    ) -> list[Send]:
        """Hand one lock request to the C core; return its replies (those it did not send), texts included."""
        replies, special = self.native.handle(rank, op, seq, arg, aux, keys, site, now)
        out = [Send(r, _REPLIES[code], s, a, x) for r, code, s, a, x in replies]
        if special is None:
            return out
        if special[0] == "error":
            raise ProtocolError(self.error_text(special, rank, op, aux, keys, seq))
        text = self.special_text(special, rank, keys).encode()
        return [s._replace(payload=text) if s.code in (_DEADLOCK, _REFUSED) and s.rank == rank else s for s in out]

    def error_text(self, special: Special, rank: int, op: int, aux: int, keys: tuple[bytes, ...], seq: int = 0) -> str:
        """Return the text of the protocol error the C core reported (that of :mod:`.core`)."""
        _, kind, index, _, _ = special
        if op == Op.FENCE_BEGIN or op == Op.CLOSE or op == Op.HELLO:
            keys = _DEFAULT_KEYS
        key = keyspace.describe(keys[index]) if 0 <= index < len(keys) else ""
        members = len(self.members)
        return _ERRORS[kind].format(rank=rank, op=op, members=members, aux=aux, count=len(keys), key=key, seq=seq)

    def special_text(self, special: Special, rank: int, keys: tuple[bytes, ...]) -> str:
        """Return the text of ``rank``'s refusal or deadlock, as :mod:`.core` words it."""
        if special[0] == "refused":
            _, index, limit, asked, users = special
            return (
                f"{keyspace.describe(keys[index])} admits {limit} holder(s) as ranks {sorted(set(users))} use it; "
                f"rank {rank} asked for a limit of {asked} (every rank must use the same limit for a key)"
            )
        return describe_native_cycle(special[1])

    def take_outbox(self) -> list[Send]:
        """Return and forget the replies that another core's request caused here (a reordered queue)."""
        return [Send(r, _REPLIES[code], s, a, x) for r, code, s, a, x in self.native.take_outbox()]

    # -- what Python keeps ------------------------------------------------------------------------------
    def site(self, rank: int, site: int) -> str:
        """Return the ``file:line`` that ``rank`` named acquire site ``site`` (``"?"`` if unknown)."""
        return self.sites.get((rank, site), "?")

    def _on_fence_begin(
        self,
        rank: int,
        seq: int,
        arg: int,
        aux: int,
        payload: Payload | None,
        keys: tuple[bytes, ...],
        site: int,
        now: float,
    ) -> list[Send]:
        out = self.fences.advance(rank, arg)
        return out + self.lock(rank, Op.FENCE_BEGIN, seq, arg, aux, _DEFAULT_KEYS, site, now)

    # -- the state, read back ---------------------------------------------------------------------------
    def snapshot(self) -> tuple[Any, ...]:
        """Return the C core's state as plain data: ``(keys, waiting, held, nodes, closing, closed, arrivals)``.

        ``keys`` lists, in the core's order, ``(key, limit, writer, write_hold,
        readers, writers, waiting_readers, early)`` with holds as in
        :data:`~.locks.Hold`, ``readers`` as ``(rank, hold)`` and requests as
        ``(rank, seq, mode, site, since, priority, keys)``.
        """
        return cast(tuple[Any, ...], self.native.snapshot())

    @property
    def keys(self) -> dict[bytes, KeyState]:
        """Every key somebody holds or waits for, rebuilt as :class:`~.locks.KeyState` objects (a copy)."""
        table: dict[bytes, KeyState] = {}
        for key, limit, writer, write_hold, readers, writers, waiting_readers, early in self.snapshot()[0]:
            state = KeyState(limit)
            state.writer, state.write_hold = writer, write_hold
            state.readers = dict(readers)
            state.writers = deque(_request(r) for r in writers)
            state.waiting_readers = [_request(r) for r in waiting_readers]
            state.early = early
            table[key] = state
        return table

    def lock_count(self) -> int:
        """Count the keys with holders or waiters (as :meth:`LockCore.lock_count`)."""
        return sum(1 for state in self.keys.values() if not state.idle())

    def table(self, now: float, wanted: Iterable[bytes] | None = None) -> list[dict[str, object]]:
        """Holders and waiters of ``wanted`` keys (default: every key in use), as :meth:`LockCore.table`."""
        return lock_table(self.keys, self.site, now, wanted, self)

    def holder(self, rank: int, slot: int) -> int | None:
        """Return the holder id of thread ``slot`` of ``rank`` (numbered now if new, as a request would)."""
        found = int(self.native.holder(rank, slot))
        return found if found >= 0 else None

    def who(self, holder: int) -> tuple[int, int, str | None]:
        """Return ``(rank, slot, thread name or None)`` of ``holder``."""
        rank, slot = self.native.who(holder)
        return rank, slot, self.names.get(holder)

    def drain(self) -> list[tuple[float, int, int, int, tuple[bytes, ...], list[Send]]]:
        """Return and forget the recorded events: ``(now, rank, op, seq, keys, replies)`` for ``Recorder.observe``."""
        return [
            (now, rank, op, seq, keys or _DEFAULT_KEYS, [Send(r, _REPLIES[c], s) for r, c, s, _, _ in replies])
            for now, rank, op, seq, keys, replies in self.native.drain()
        ]


def _request(data: tuple[int, int, int, int, float, float, tuple[bytes, ...]]) -> Request:
    rank, seq, mode, site, since, priority, keys = data
    return Request(rank, seq, keys, mode, site, since, priority)


def describe_native_cycle(edges: list[tuple[Any, ...]]) -> str:
    """Return the text :func:`describe_cycle` gives the cycle the C core found (its edges as captured data)."""
    views: dict[int, _CycleCore] = {}
    cycle: list[Edge] = []
    for uid, waiter, target, queued, world, key, hold_mode, hold_site, wait_mode, wait_site, rank, slot in edges:
        core = _CORES.get(uid)
        view = views.get(uid)
        if view is None:
            view = views[uid] = _CycleCore(core.name if core is not None else f"controller #{uid}")
        names = core.names if core is not None else {}
        view.nodes[waiter] = (world, 0)
        view.names[waiter] = holder_text(rank, slot, world, waiter, names.get(waiter))
        name = keyspace.describe(key)
        if queued:
            view.holds[(target, key, True)] = f"is queued ahead for {MODES[hold_mode]} {name}"
        else:
            taken = core.site(core.who(target)[0], hold_site) if core is not None else "?"
            view.holds[(target, key, False)] = f"holds {MODES[hold_mode]} {name} (taken at {taken})"
        waited = core.site(rank, wait_site) if core is not None else "?"
        view.waits[(waiter, key)] = f"waits for {MODES[wait_mode]} {name} (at {waited})"
        node = (world, 0)
        cycle.append(Edge(node, node, cast(Core, view), waiter, target, key, bool(queued)))
    return describe_cycle(cycle)
