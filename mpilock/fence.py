"""Fences: ``single_write`` blocks that one rank runs while the others wait."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, Generic, TypeAlias, TypeVar, cast

import cloudpickle

from . import otel
from .errors import FencedSignal, FenceError
from .link import Answer
from .nesting import LOCAL, Step, new_step
from .server import frames
from .server import keys as keyspace
from .server.frames import Frames, Payload, joined
from .server.protocol import FenceStatus, Op

_UNSET: Any = object()

OUT_OF_BAND = 1 << 16
"""Buffers (numpy arrays, ``PickleBuffer``) from this many bytes up travel beside the pickle stream."""


def dumps(obj: Any) -> Payload:
    """Cloudpickle ``obj`` for :meth:`Fence.share`: its big buffers out of band, copied now.

    Returns the pickle bytes if every buffer went in band and they are small;
    otherwise frames: the pickle stream, then a snapshot of each out-of-band
    buffer (a later change to ``obj`` does not reach the other ranks).
    """
    views: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:  # True: keep it in the stream
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous
            return True
        if view.nbytes < OUT_OF_BAND:
            return True
        views.append(view)
        return False

    stream: bytes = cloudpickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
    if not views and len(stream) <= frames.SMALL_CHUNK:
        return stream
    return Frames([stream, *(frames.copied(view) for view in views)], owned=True)


def loads(payload: Payload | None) -> Any:
    """Rebuild what :func:`dumps` made; numpy arrays and other buffers use the received frames in place."""
    if isinstance(payload, Frames):
        stream, *buffers = payload.buffers
        return pickle.loads(stream, buffers=buffers)
    return cloudpickle.loads(payload or b"")


@dataclass(frozen=True)
class FencePort:
    """What a fence asks of its controller, bound to it: the controller makes one for each fence it starts.

    So this module never imports the controller (which imports it), and the
    fence sees of the controller just this: its rank, the fences started so
    far, the calling thread's locks, and the requests a fence sends.  Every
    request goes out for the calling thread's holder.
    """

    rank: int
    """This rank in the controller's communicator."""
    master: int
    """The rank of the lock server."""
    started: Callable[[], int]
    """How many fences the controller has started so far (the same on every rank)."""
    held: Callable[[], dict[bytes, int]]
    """The calling thread's held locks: key -> mode."""
    call: Callable[[Op, int], Answer]
    """Send ``(op, fence number)`` and wait for the answer (:class:`~.errors.ClosedError` once closed)."""
    send: Callable[[Op, int, int, Payload | None], int]
    """Send ``(op, fence number, aux, payload)`` without waiting; return its sequence number."""
    finish: Callable[[int], object]
    """Wait for the answer to the request of that sequence number, then free the payload frames sent."""
    acquire: Callable[[int, int], Step]
    """Take the default write lock as the writer of fence ``number`` (``site``: where it was made)."""
    release: Callable[[Step], object]
    """Give back what :attr:`acquire` took."""


Target = TypeVar("Target", covariant=True)
"""What ``with fence as x`` binds ``x`` to."""


class Fence(Generic[Target]):
    """One ``single_write`` block: fences off every rank but the writer.

    Use it as ``with controller.single_write() as fence:``, call
    :meth:`guard` first thing in the block, and :meth:`share` on the writer to
    hand an object to the others, who :meth:`collect` it after the block.

    For type checkers the fence is generic in its ``as`` target:
    ``single_write()`` gives a :data:`PlainFence` (the target is the fence
    itself), ``single_write(handle=h)`` with ``h: H`` a ``Fence[H | None]``.
    """

    def __init__(self, port: FencePort, writer: int, number: int, handle: Any = _UNSET, site: int = 0) -> None:
        """Fence number ``number`` of the controller behind ``port``, written by rank ``writer`` (``site``: where)."""
        self._port = port
        self._site = site
        self.writer = writer
        """Rank that runs the block."""
        self.number = number
        """Position of this fence among the controller's fences (same on all ranks)."""
        self.access = port.rank == writer
        """Whether this rank is the writer."""
        self._handle = handle
        self._used = False
        self._inside = False
        self._ended = False
        self._status = FenceStatus.OK_EMPTY
        self._payload: Payload | None = None
        self._received: Payload | None = None
        """The payload as collected, kept until it unpickled (so a failed collect can be retried)."""
        self._shared: Any = _UNSET
        self._taken: Step = new_step(None, LOCAL)
        self._otel: list[Any] | None = None
        """The writer's open OpenTelemetry span (:mod:`.otel`)."""

    # -- the user API --------------------------------------------------------
    def guard(self) -> None:
        """Send every rank but the writer to the end of the ``with`` block."""
        if not self.access:
            raise FencedSignal()

    def share(self, obj: Any) -> None:
        """On the writer, inside the block: hand ``obj`` to the other ranks.

        ``obj`` is cloudpickled now, its big buffers (numpy arrays) copied
        aside as they are now, to travel without further copies; an object
        that cannot be pickled (an open ``h5py.File``, a lock, a socket)
        raises here, on the writer, and every other rank gets :class:`FenceError`.
        """
        if not self.access:
            raise FenceError(f"share() called on rank {self._port.rank}, but only writer rank {self.writer} may share")
        if not self._inside:
            raise FenceError("share() must be called inside the single_write block")
        self._payload = dumps(obj)
        self._shared = obj

    def collect(self) -> Any:
        """After the block, on any rank: the shared object (``None`` if nothing was shared).

        Not collective: any subset of ranks may call it, any number of times,
        until the controller's next ``single_write`` starts; after that it
        raises :class:`FenceError` on every rank, the writer and ranks that
        collected before included.
        """
        return otel.collect(self, self._collect) if otel.HOOKS is not None else self._collect()

    def _collect(self) -> Any:
        if not self._ended:
            raise FenceError("collect() must be called after the single_write block")
        if self._status == FenceStatus.FAILED:
            raise FenceError(f"nothing to collect: the single_write block failed on rank {self.writer}", self.writer)
        if self._port.started() > self.number + 1:
            raise FenceError(
                f"collect() of fence {self.number} must be called before the next single_write of the same "
                f"controller, and fence {self.number + 1} has started"
            )
        if self._shared is not _UNSET:
            return self._shared
        if self._status == FenceStatus.OK_EMPTY:
            return None
        if self._received is None:
            answer = self._port.call(Op.COLLECT, self.number)
            self._received = answer.payload or b""
        try:
            self._shared = loads(self._received)
        except Exception as err:
            try:  # an unpickling error happens again; a signal handler's exception does not (it goes on unchanged)
                loads(self._received)
            except Exception as again:
                if type(again) is type(err) and str(again) == str(err):
                    cause = f"{type(err).__name__}: {err}"
                    raise FenceError(
                        f"could not unpickle the object shared by writer rank {self.writer}: {cause}",
                        self.writer,
                        cause,
                    ) from err
            raise
        self._received = None
        return self._shared

    # -- the with block ------------------------------------------------------
    def __enter__(self) -> Target:
        """Writer: take the write lock. Everyone: return the ``as`` target."""
        return otel.enter_fence(self, self._enter) if otel.HOOKS is not None else self._enter()

    def _enter(self) -> Target:
        if self._used:  # on every rank alike, before anything reaches the server
            raise FenceError(
                f"fence {self.number} was entered already; a fence is used once: call single_write() again"
            )
        self._used = True
        if self.access:
            self._taken = self._port.acquire(self.number, self._site)
        elif keyspace.DEFAULT in self._port.held():
            self._port.send(Op.FENCE_WAIT, self.number, 1, None)  # arrive, so the writer is not kept waiting
            raise FenceError(
                f"rank {self._port.rank} entered single_write while holding the controller's default lock "
                f"(read() or write() without a key), and is not the fence's writer (rank {self.writer}); "
                "the writer could never get the write lock"
            )
        self._inside = True
        if self._handle is _UNSET:
            return cast(Target, self)  # a PlainFence: the target is the fence itself
        return cast(Target, self._handle if self.access else None)  # H | None for Fence[H | None]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        """Writer: publish the outcome and release. Others: wait for the writer."""
        if otel.HOOKS is not None or self._otel is not None:
            return otel.exit_fence(self, partial(self._exit, exc), exc)
        return self._exit(exc)

    def _exit(self, exc: BaseException | None) -> bool:
        self._inside = False
        if self.access:
            return self._exit_writer(exc)
        answer = self._port.call(Op.FENCE_WAIT, self.number)
        self._ended = True
        self._status = FenceStatus(answer.aux)
        if self._status == FenceStatus.FAILED:
            cause = joined(answer.payload).decode(errors="replace")
            raise FenceError(f"single_write failed on writer rank {self.writer}: {cause}", self.writer, cause) from exc
        return exc is None or isinstance(exc, FencedSignal)

    def _exit_writer(self, exc: BaseException | None) -> bool:
        payload = self._payload
        if exc is not None and not isinstance(exc, FencedSignal):
            self._status = FenceStatus.FAILED
            payload = f"{type(exc).__name__}: {exc}".encode()
            self._shared = _UNSET
        elif payload is not None:
            self._status = FenceStatus.OK_PAYLOAD
        port = self._port
        seq = port.send(Op.FENCE_END, self.number, self._status, payload)
        port.release(self._taken)  # free the lock before waiting for the other ranks to arrive
        self._ended = True
        self._payload = payload = None
        port.finish(seq)  # the server has every frame by then: their snapshot is freed
        return exc is None or isinstance(exc, FencedSignal)


PlainFence: TypeAlias = Fence["PlainFence"]
"""The fence of ``single_write()`` without a handle: ``with`` binds the fence itself."""
