"""A one-way latch that a signal handler's exception in a waiting thread cannot break (``threading.Event`` can)."""

from __future__ import annotations

import threading
import time

POLL = 0.05
"""Longest single sleep of :meth:`Latch.wait` before it looks at the flag again (seconds)."""


class Latch:
    """Set once by one thread, waited on by others; made of a C lock and a store, not of Python locking code.

    ``threading.Event`` is Python code around a ``Condition``: an exception a
    signal handler raises in a waiting thread just after ``Condition.__enter__``
    took its lock (a ``KeyboardInterrupt`` in ``close()``, say) leaves that lock
    held, and the next ``set()``, the server thread's, blocks forever.  Here
    ``set()`` is a store and a release, which never blocks, and a wait is
    ``acquire`` calls with a timeout, each followed by a look at the flag.
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
            if self._gate.acquire(timeout=left):
                self._gate.release()  # a waiter cut before this release leaves the gate shut: the flag still shows
        return self._set
