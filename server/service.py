"""What the process-wide services of both loops share: their lock, their Python thread, pausing and joining.

:class:`~.loop.ServiceLoop` (the Python loop's server thread) and
:class:`~.native_loop.NativeService` (the C thread and the Python thread
beside it) start their threads with their first channel and end them with
the last; :meth:`Service.pause` ends them for good (see :func:`.native.pause`),
and the waiting clients do the threads' work from then on (``drive()``).
What differs is how the threads are told: the Python loop's thread wakes on
an event and its rank's wake word, the C thread through the module.
"""

from __future__ import annotations

import threading

JOIN_TIMEOUT = 10.0
"""Seconds ``close()`` waits for the server thread to end once its last channel finished."""


def join_thread(thread: threading.Thread | None) -> None:
    """Wait up to :data:`JOIN_TIMEOUT` for a service thread to end, unless there is none or it is this one."""
    if thread is not None and thread is not threading.current_thread():
        thread.join(JOIN_TIMEOUT)


class Service:
    """The threads of one loop: started with the first channel, ended with the last, or paused for good."""

    def __init__(self) -> None:
        """No thread yet; the loop's ``add()`` starts it."""
        self._lock = threading.Lock()
        """Held while the channels or the thread change."""
        self._thread: threading.Thread | None = None
        """The Python thread, while it serves."""
        self._paused = False
        """Set by :meth:`pause`: no thread from then on, the waiting clients ``drive()``."""

    @property
    def running(self) -> bool:
        """Whether the Python thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def pause(self) -> None:
        """Stop the threads for good: waiting clients ``drive()`` from now on (see :func:`.native.pause`)."""
        with self._lock:
            self._paused = True
            thread = self._thread
        self._halt()
        self._join(thread)

    def _halt(self) -> None:
        """Tell the threads to look at :attr:`_paused` now (they may sleep)."""
        raise NotImplementedError

    def _join(self, thread: threading.Thread | None) -> None:
        """Wait for the threads to end (``thread``: the Python one, as it was when they were told)."""
        join_thread(thread)
