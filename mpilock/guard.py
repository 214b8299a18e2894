"""The base of :class:`~mpilock.controller.Lock`: an ``__enter__``/``__exit__`` that no signal handler can split.

Python runs a signal handler (and so raises its ``KeyboardInterrupt``,
``SystemExit`` or timeout exception) between any two bytecodes of Python code,
but never inside a call to C.  A ``with`` block only protects what follows
``__enter__``'s return; a Python ``__enter__`` or ``__exit__`` can be cut at
its first line, before it did anything, or between the grant and its return.
So the two are C methods (``Guard`` of the native module): ``__enter__`` makes
a fresh list, the *token* of this acquire, and calls ``self._take(token)``; if
any exception leaves it, it calls ``self._undo(token)`` until one call
completes, then raises that exception.  ``__exit__`` calls
``self._give(exc, token)`` (a token of its own) until one call completes, then
raises the first exception a handler raised meanwhile.  ``_take`` notes its
progress in the token, so ``_undo`` and ``_give`` can tell how far a cut call
got and be called again; a token per call lets several threads use one lock.

Without the native module (not built, see :mod:`mpilock.server.native_build`)
the same logic runs in Python: then an exception can still strike between the
``with`` statement and the first line of ``__exit__`` (one bytecode wide).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .server.native_core import NATIVE

TRIES = 100_000
"""How many times ``_undo``/``_give`` are called at most (each call that an exception cut short counts)."""


class PythonGuard:
    """The pure-Python fallback of the native ``Guard`` (see the module's docstring for the window it leaves)."""

    __slots__ = ()

    def _take(self, token: list[Any]) -> None:
        raise NotImplementedError

    def _undo(self, token: list[Any]) -> None:
        raise NotImplementedError

    def _give(self, exc: BaseException | None, token: list[Any]) -> BaseException | None:
        raise NotImplementedError

    def __enter__(self) -> None:
        """Acquire with ``_take``; if anything leaves it, finish ``_undo`` and raise."""
        token: list[Any] = []
        try:
            self._take(token)
        except BaseException:
            _finish(lambda: self._undo(token))
            raise

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        """Release with ``_give(exc, token)``, finished whatever interrupts it."""
        token: list[Any] = []
        error = _finish(lambda: self._give(exc, token))
        if error is not None:
            raise error


def _finish(call: Any) -> Any:
    first: BaseException | None = None
    for _ in range(TRIES):
        try:
            result = call()
        except BaseException as error:
            first = first or error
            continue
        if first is not None:
            raise first
        return result
    raise RuntimeError(f"mpilock: gave up finishing {call} after {TRIES} tries")


if TYPE_CHECKING:
    Guard = PythonGuard
else:
    Guard = NATIVE.Guard if NATIVE is not None and hasattr(NATIVE, "Guard") else PythonGuard
    """The native ``Guard`` if the module loads, else :class:`PythonGuard`."""

__all__ = ["TRIES", "Guard", "PythonGuard"]
