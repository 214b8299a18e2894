"""Fences: ``single_write`` blocks that one rank runs while the others wait."""

from __future__ import annotations

import pickle
from types import TracebackType
from typing import TYPE_CHECKING, Any

import cloudpickle

from .errors import FencedSignal, FenceError
from .nesting import LOCAL, PROMOTED
from .server import frames
from .server.frames import Frames, Payload, joined
from .server.protocol import FenceStatus, Op

if TYPE_CHECKING:
    from .controller import WindowController

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


class Fence:
    """One ``single_write`` block: fences off every rank but the writer.

    Use it as ``with controller.single_write() as fence:``, call
    :meth:`guard` first thing in the block, and :meth:`share` on the writer to
    hand an object to the others, who :meth:`collect` it after the block.
    """

    def __init__(self, controller: WindowController, writer: int, number: int, handle: Any = _UNSET) -> None:
        """Fence number ``number`` of ``controller``, written by rank ``writer``."""
        self._ctrl = controller
        self.writer = writer
        """Rank that runs the block."""
        self.number = number
        """Position of this fence among the controller's fences (same on all ranks)."""
        self.access = controller.rank == writer
        """Whether this rank is the writer."""
        self._handle = handle
        self._inside = False
        self._ended = False
        self._status = FenceStatus.OK_EMPTY
        self._payload: Payload | None = None
        self._shared: Any = _UNSET
        self._release = LOCAL

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
            raise FenceError(f"share() called on rank {self._ctrl.rank}, but only writer rank {self.writer} may share")
        if not self._inside:
            raise FenceError("share() must be called inside the single_write block")
        self._payload = dumps(obj)
        self._shared = obj

    def collect(self) -> Any:
        """After the block, on any rank: the shared object (``None`` if nothing was shared).

        Not collective: any subset of ranks may call it, any number of times,
        until the controller's next ``single_write`` starts.
        """
        if not self._ended:
            raise FenceError("collect() must be called after the single_write block")
        if self._status == FenceStatus.FAILED:
            raise FenceError(f"nothing to collect: the single_write block failed on rank {self.writer}", self.writer)
        if self._shared is not _UNSET:
            return self._shared
        if self._status == FenceStatus.OK_EMPTY:
            return None
        if self._ctrl._fences_started > self.number + 1:
            raise FenceError("collect() must be called before the next single_write of the same controller")
        answer = self._ctrl._link_call(Op.COLLECT, self.number)
        self._shared = loads(answer.payload)
        return self._shared

    # -- the with block ------------------------------------------------------
    def __enter__(self) -> Any:
        """Writer: take the write lock. Everyone: return the ``as`` target."""
        if self.access:
            self._release = self._ctrl._fence_acquire(self.number)
        elif self._ctrl._mode is not None:
            self._ctrl._link.send(Op.FENCE_WAIT, self.number, 1)  # arrive, so the writer is not kept waiting
            raise FenceError(
                f"rank {self._ctrl.rank} entered single_write while holding a lock; "
                "the writer could never get the write lock"
            )
        self._inside = True
        if self._handle is _UNSET:
            return self
        return self._handle if self.access else None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        """Writer: publish the outcome and release. Others: wait for the writer."""
        self._inside = False
        if self.access:
            return self._exit_writer(exc)
        answer = self._ctrl._link_call(Op.FENCE_WAIT, self.number)
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
        ctrl, how = self._ctrl, self._release
        seq = ctrl._link.send(Op.FENCE_END, self.number, self._status, payload)
        if how != LOCAL:  # free the lock before waiting for the other ranks to arrive
            ctrl._server_release()
        self._ended = True
        self._payload = payload = None
        ctrl._link.wait(seq)
        ctrl._link.reap()  # the server has every frame by now: free their snapshot
        if how == PROMOTED:
            ctrl._server_acquire(Op.READ, 0, None)
        return exc is None or isinstance(exc, FencedSignal)
