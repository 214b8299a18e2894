"""Adaptive waiting for polling loops: spin briefly after activity, then sleep longer.

MPI implementations busy-poll inside blocking waits, which would burn a core on
every idle server and every waiting rank.  Both sides of mpilock therefore poll
with non-blocking tests and call :meth:`Backoff.pause` between polls: right
after activity it only yields the GIL, later it sleeps with a doubling interval
capped at ``longest`` seconds, so an idle process uses well under 2 % of a core.
"""

from __future__ import annotations

import os
import threading
import time

SPIN_SECONDS = float(os.environ.get("MPILOCK_SPIN", "0.0002"))
"""How long after activity a poller only yields instead of sleeping."""
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
        """Wait a little before the next poll; returns early if ``wake`` is set."""
        if time.monotonic() < self._hot_until:
            time.sleep(0)  # let other threads take the GIL
            return
        if wake is None:
            time.sleep(self._sleep)
        else:
            wake.wait(self._sleep)
        self._sleep = min(self._sleep * 2, self.longest)
