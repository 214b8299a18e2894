"""Waking the idle lock server: a futex word in shared memory that a client on the server's node can signal.

An idle server thread sleeps (its backoff); a request that arrives meanwhile
would wait out the sleep.  Instead the serving process owns one 32-bit word in
POSIX shared memory (``/dev/shm/mpilock-wake-<pid>-<token>``): idle past its
hot window, the server thread says "asleep" in it and sleeps on it with
``FUTEX_WAIT``; a client on the same node that has just sent a request pokes
it, paying a system call only when the word says "asleep" (the C side is
"the wake word" in ``_native.c``).  The requests themselves stay two-sided MPI
messages: the word is a hint, never a lock.

Ranks on other nodes cannot reach the word, so a server with such a client
still sleeps at most ``MPILOCK_NATIVE_IDLE_SLEEP``; one whose clients can all
wake it sleeps up to ``MPILOCK_WAKE_SLEEP``.  ``MPILOCK_WAKE=0`` switches the
wake-up off; without the native module, or where the shared memory cannot be
had, the server keeps its timed sleeps and says why once on the ``mpilock``
logger.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import secrets
import time
from typing import Any

from mpi4py import MPI

from .latch import Latch
from .settings import SETTINGS

log = logging.getLogger("mpilock")

SHM_DIR = "/dev/shm"
PREFIX = "mpilock-wake-"
_NAME = re.compile(rf"^{PREFIX}(\d+)-[0-9a-f]+$")

_served: list[str] = []
"""The name of this process's word, once it has one."""
_failed: list[str] = []
"""The name this process could not create (it does not try again)."""
_said: set[str] = set()
"""Reasons already logged (each is said once per process)."""


def _module() -> Any:
    """Return the native module, or ``None`` (the wake-up needs it on both sides)."""
    from .native_core import NATIVE

    return NATIVE


def _say_once(reason: str, level: int = logging.INFO) -> None:
    if reason not in _said:
        _said.add(reason)
        log.log(level, "mpilock: wake-up of the idle server off: %s; it polls with timed sleeps", reason)


def _remove_stale() -> None:
    """Remove the words of serving processes of this node that died without removing theirs (SIGKILL)."""
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return
    for name in names:
        match = _NAME.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(SHM_DIR, name))
        except PermissionError:  # another user's live process
            pass


def _unlink() -> None:
    c = _module()
    for name in _served:
        with contextlib.suppress(OSError):
            c.wake_unlink(name)


def serve_word() -> str | None:
    """Create this serving process's word (once); return its name, or ``None`` if there is none."""
    if _served:
        return _served[0]
    if _failed:
        return None
    if not SETTINGS.wake:
        _say_once("MPILOCK_WAKE=0")
        return None
    c = _module()
    if c is None:
        _say_once("the native module is not built (it provides the futex calls)")
        return None
    _remove_stale()
    name = f"/{PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
    try:
        c.wake_serve(name)
    except OSError as error:
        _failed.append(name)
        _say_once(f"no POSIX shared memory ({error})", logging.WARNING)
        return None
    _served.append(name)
    atexit.register(_unlink)
    return name


class Connection:
    """What one rank learnt when a controller was made: how to wake its server, and how to be woken."""

    def __init__(self, waker: Any = None, words: Any = None, rank: int = -1, everyone: bool = False) -> None:
        """``waker``: this client's mapping of the server's word; ``words``: the channel's client words.

        ``None`` where this rank cannot reach them (another node, the wake-up off).
        """
        self.waker = waker
        self.words = words
        """The channel's words, one per rank: a client waits for a reply asleep on its own."""
        self.rank = rank
        self.everyone = everyone
        """Whether every rank but the server itself can wake the server (its sleeps may then be long)."""


def connect(comm: MPI.Intracomm, server: int, name: str | None) -> Connection:
    """Hand the server's word (``name`` on rank ``server``) to the ranks of its node; collective over ``comm``.

    The ranks of the server's node are those of ``MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)``
    that share it with ``server``, the server's own included: its releases wake its sleeping thread.
    The server also makes the channel's client words (one per rank: a waiting
    client sleeps on its own, the server pokes it with each reply); their name
    is removed once every rank has mapped them, so nothing is left behind.
    """
    rank = comm.Get_rank()
    c = _module()
    words = None
    words_name = None
    if rank == server and name is not None:
        words_name = f"{name}-c{secrets.token_hex(4)}"
        try:
            words = c.Words(words_name, comm.Get_size(), True)
        except OSError as error:
            _say_once(f"no POSIX shared memory for the clients' words ({error})", logging.WARNING)
            words_name = None
    name, words_name = comm.bcast((name, words_name), root=server)
    if name is None:
        return Connection(rank=rank)
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        group, node_group = comm.Get_group(), node.Get_group()
        here = MPI.Group.Translate_ranks(group, [server], node_group)[0] != MPI.UNDEFINED
        group.Free()
        node_group.Free()
    finally:
        node.Free()
    waker = None
    if here:  # the server's own rank too: its releases must wake its sleeping server thread
        if c is None:
            _say_once("the native module is not built on this rank")
        else:
            try:
                waker = c.Words(name, 1)  # the server's word: poke() wakes it
                if rank != server:
                    words = c.Words(words_name, comm.Get_size()) if words_name is not None else None
            except OSError as error:
                _say_once(f"this rank cannot open the server's words ({error})", logging.WARNING)
    able = waker is not None
    everyone = bool(comm.allreduce(able, op=MPI.LAND))  # every rank has mapped what it could
    if rank == server and words is not None:
        words.unlink()
    return Connection(waker, words, rank, everyone)


_cap = [SETTINGS.wake_sleep]
"""Longest sleep of an idle server that every client can wake (``MPILOCK_WAKE_SLEEP``; see :func:`set_sleep_cap`)."""


def set_sleep_cap(seconds: float) -> None:
    """Change :data:`MPILOCK_WAKE_SLEEP` of this process's server loops from now on (for tests and the bench)."""
    if not seconds > 0:
        raise ValueError(f"the sleep cap must be > 0 seconds, not {seconds!r}")
    _cap[0] = seconds
    c = _module()
    if c is not None:
        c.configure(wake_longest=seconds)
        wake_own_server()  # a sleeping server thread takes the new cap now


def sleep_cap() -> float:
    """Return the longest sleep of an idle server that every client can wake, as set now."""
    return _cap[0]


def wake_own_server() -> None:
    """Wake this process's sleeping server thread: a channel came or went, or the loop must stop."""
    if _served:
        _module().wake_now()


class IdleSleep:
    """A server loop's idle sleep on this process's word (the Python loop's; the C loop has its own in C)."""

    def __init__(self, hot: float = SETTINGS.native_hot, longest: float = SETTINGS.max_sleep) -> None:
        """Sleep on the word after ``hot`` seconds without work; ``longest`` if a client cannot wake us."""
        self._hot = hot
        self._longest = longest
        self._armed = False
        self._last = time.monotonic()

    def worked(self) -> None:
        """Note that the loop has just served something: stay awake for the hot window."""
        self._last = time.monotonic()
        if self._armed:
            _module().wake_disarm()
            self._armed = False

    def due(self) -> bool:
        """Whether the loop has idled past its hot window and can sleep on the word."""
        return bool(_served) and time.monotonic() - self._last >= self._hot

    def sleep(self, everyone: bool, changed: Latch | None = None) -> bool:
        """Idle: arm the word (then the caller polls once more) or sleep on it; ``False``: use your backoff.

        ``everyone``: every client of every channel can wake us (the sleep may
        last ``MPILOCK_WAKE_SLEEP``); ``changed`` set means "look now".
        """
        if not _served or time.monotonic() - self._last < self._hot:
            return False
        c = _module()
        if not self._armed:
            c.wake_arm()
            self._armed = True
            return True  # a request sent before the word said "asleep" must be seen by one more poll
        self._armed = False
        if changed is not None and changed.is_set():
            c.wake_disarm()
            return True
        if c.wake_sleep(_cap[0] if everyone else self._longest):
            self._last = time.monotonic()  # poked: poll hot, the request may take more than one poll to show
        return True


CLIENT_SLEEP = 0.05
"""Longest sleep of a client waiting on its word: a poke that never came (it should not) costs at most this."""


class Sleeper:
    """A client's wait for a reply, asleep on its own word of the channel's client words."""

    __slots__ = ("_armed", "_rank", "_words")

    def __init__(self, words: Any, rank: int) -> None:
        """Sleep on word ``rank`` of ``words`` (see :func:`connect`)."""
        self._words = words
        self._rank = rank
        self._armed = False

    def sleep(self, seconds: float) -> bool:
        """Arm the word (the caller then tests once more), or, armed, sleep on it for at most ``seconds``.

        Returns whether the server poked us: the caller should then poll hot
        for a while, since an MPI may need more than one test to show a message.
        """
        if not self._armed:
            self._words.arm(self._rank)
            self._armed = True
            return False
        self._armed = False
        return bool(self._words.sleep(self._rank, min(seconds, CLIENT_SLEEP)))

    def done(self) -> None:
        """Say 'awake': the wait is over (the server need not call the kernel for the next reply)."""
        if self._armed:
            self._armed = False
            self._words.disarm(self._rank)
