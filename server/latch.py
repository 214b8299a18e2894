"""A latch that a signal handler's exception cannot break, as it can a ``threading.Event``."""

from __future__ import annotations

import threading
import time

POLL = 0.05
"""Longest single sleep of :meth:`Latch.wait` before it looks at the flag again (seconds)."""


class Latch:
    """A flag set by one thread, looked at or waited on by others; a C lock and stores, no Python locking code.

    ``threading.Event`` is Python code around a ``Condition``: an exception a
    signal handler raises in the main thread just after ``Condition.__enter__``
    took its lock (a ``KeyboardInterrupt`` in ``close()``'s wait, or in a
    ``set()``) leaves that lock held, and the next ``set()`` or ``clear()``,
    the server thread's, blocks forever.  Here ``set()`` and ``clear()`` are a
    store and a non-blocking lock call, and a wait is ``acquire`` calls with a
    timeout, each followed by a look at the flag.
    """

    __slots__ = ("_gate", "_set")

    def __init__(self) -> None:
        """Make an unset flag."""
        self._set = False
        self._gate = threading.Lock()
        self._gate.acquire()

    def set(self) -> None:
        """Set the flag and wake a waiter (setting it again does nothing)."""
        self._set = True
        try:  # noqa: SIM105 - contextlib.suppress is Python code a signal handler could cut
            self._gate.release()
        except RuntimeError:
            pass  # set already

    def clear(self) -> None:
        """Unset the flag (the Python server loop's "look now" flag, after it looked)."""
        self._set = False
        self._gate.acquire(blocking=False)  # shut the gate again if a set() opened it

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set or ``timeout`` seconds pass; return whether it is set."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._set:
            left = POLL if deadline is None else min(POLL, deadline - time.monotonic())
            if left <= 0:
                break
            if self._gate.acquire(timeout=left) and self._set:
                self._gate.release()  # open for the next waiter (cut before this, the gate stays shut: the flag shows)
            # acquired but cleared meanwhile: the gate stays shut, as it should be while unset
        return self._set
