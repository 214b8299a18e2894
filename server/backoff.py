"""Adaptive waiting for polling loops: spin briefly after activity, then sleep longer.

MPI implementations busy-poll inside blocking waits, which would burn a core on
every idle server and every waiting rank.  Both sides of mpilock therefore poll
with non-blocking tests and call :meth:`Backoff.pause` between polls: right
after activity it only yields the GIL and the CPU (``os.sched_yield``, ~1 µs;
``time.sleep(0)`` costs ~80 µs because of the kernel's timer slack), later it
sleeps with a doubling interval capped at ``longest`` seconds, so an idle
process uses well under 2 % of a core.
"""

from __future__ import annotations

import os
import threading
import time

SPIN_SECONDS = float(os.environ.get("MPILOCK_SPIN", "0.0002"))
"""How long after activity the server only yields instead of sleeping."""
CLIENT_SPIN_SECONDS = float(os.environ.get("MPILOCK_CLIENT_SPIN", "0.002"))
"""How long a rank waiting for a reply only yields before it starts sleeping.

Longer than the server's spin: a queued writer that is still spinning when the
lock is handed to it takes it within microseconds, which keeps contended
hand-offs in the fast regime (tens of µs instead of up to one sleep)."""
SHORTEST_SLEEP = 20e-6
LONGEST_SLEEP = float(os.environ.get("MPILOCK_MAX_SLEEP", "0.001"))
"""Upper bound on one sleep: the worst extra latency an idle poller adds."""


class Backoff:
    """Pacing of one polling loop; call :meth:`reset` whenever work was done."""

    def __init__(self, spin: float = SPIN_SECONDS, longest: float = LONGEST_SLEEP) -> None:
        """Spin for ``spin`` seconds after activity; never sleep more than ``longest``."""
        self.spin = spin
        self.longest = longest
        self.reset()

    def reset(self) -> None:
        """Work was done: poll eagerly again."""
        self._hot_until = time.monotonic() + self.spin
        self._sleep = SHORTEST_SLEEP

    def pause(self, wake: threading.Event | None = None) -> None:
        """Wait a little before the next poll; skips the sleep if ``wake`` is already set."""
        if time.monotonic() < self._hot_until:
            os.sched_yield()  # drops the GIL and the CPU for ~1 µs; time.sleep(0) would sleep ~80 µs
            return
        if wake is None or not wake.is_set():  # time.sleep costs ~25 % less CPU than Event.wait
            time.sleep(self._sleep)
        self._sleep = min(self._sleep * 2, self.longest)
