"""The exceptions mpilock raises; all derive from :class:`MpilockError`."""

from __future__ import annotations


class MpilockError(Exception):
    """Base class of every error mpilock raises on purpose."""


class LockTimeout(MpilockError, TimeoutError):
    """``read(timeout=)``/``write(timeout=)`` gave up; the request was withdrawn."""


class FenceError(MpilockError):
    """A ``single_write`` block failed on its writer rank, or a fence was misused.

    ``writer`` is the writer's rank (``None`` for misuse detected locally) and
    ``cause`` the writer's error text.
    """

    def __init__(self, message: str, writer: int | None = None, cause: str | None = None) -> None:
        """Create the error; ``writer`` and ``cause`` describe the failed block."""
        super().__init__(message)
        self.writer = writer
        self.cause = cause


class ClosedError(MpilockError):
    """A lock call on a controller that has been closed."""


class DeadlockError(MpilockError):
    """The lock server refused a request whose wait would close a cycle of waits.

    The message names every rank and lock of the cycle and where each lock
    was taken.  The refused call holds nothing new; release what you hold
    and retry.
    """


class LimitError(MpilockError, ValueError):
    """``bounded(key, n)`` with an ``n`` that differs from the one the key is in use with."""


class ConfigError(MpilockError, ValueError):
    """An environment variable mpilock reads has a malformed value."""


class FencedSignal(Exception):
    """Raised by :meth:`Fence.guard` on every rank except the writer.

    The fence's ``with`` block swallows it, so the non-writers jump to the end
    of the block and wait there for the writer.
    """
