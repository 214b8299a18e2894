"""Adaptive waiting for polling loops: spin briefly after activity, then sleep longer.

MPI implementations busy-poll inside blocking waits, which would burn a core on
every idle server and every waiting rank.  Both sides of mpilock therefore poll
with non-blocking tests and call :meth:`Backoff.pause` between polls: right
after activity it only yields the GIL and the CPU (``os.sched_yield``, ~1 µs;
``time.sleep(0)`` costs ~80 µs because of the kernel's timer slack), later it
sleeps with a doubling interval capped at ``longest`` seconds, so an idle
process uses well under 2 % of a core.

The server thread shares the GIL with the application.  When a pause returns
much later than asked, another thread held the GIL (the application computes
in Python) or the CPU was taken: then every poll costs the application a
forced GIL hand-off (~20 µs of its time, measured), so a ``contended`` backoff
stops spinning and never sleeps less than :data:`CONTENDED_SLEEP` until a
pause returns on time again.
"""

from __future__ import annotations

import os
import time

from .latch import Latch
from .settings import SETTINGS

SPIN_SECONDS = SETTINGS.spin
"""How long after activity the server only yields instead of sleeping."""
CLIENT_SPIN_SECONDS = SETTINGS.client_spin
"""How long a rank waiting for a reply only yields before it starts sleeping.

Longer than the server's spin: a queued writer that is still spinning when the
lock is handed to it takes it within microseconds, which keeps contended
hand-offs in the fast regime (tens of µs instead of up to one sleep)."""
SHORTEST_SLEEP = 20e-6
LONGEST_SLEEP = SETTINGS.max_sleep
"""Upper bound on one sleep: the worst extra latency an idle poller adds."""
CONTENDED_SLEEP = SETTINGS.contended_sleep
"""Shortest sleep of a server whose pauses overrun (the GIL is busy); 0 disables the rule."""
OVERRUN = 0.0002
"""A pause this much longer than asked means the GIL (or the CPU) was busy elsewhere."""


class Backoff:
    """Pacing of one polling loop; call :meth:`reset` whenever work was done."""

    def __init__(self, spin: float = SPIN_SECONDS, longest: float = LONGEST_SLEEP, contended: float = 0.0) -> None:
        """Spin for ``spin`` seconds after activity; never sleep more than ``longest``.

        With ``contended > 0``, a pause that overran by :data:`OVERRUN` makes
        the loop stop spinning and sleep at least ``contended`` seconds until
        a pause is on time again.
        """
        self.spin = spin
        self.longest = longest
        self.contended_sleep = min(contended, longest)
        self.contended = False
        """Whether the last pause overran (only tracked with ``contended > 0``)."""
        self.reset()

    def reset(self) -> None:
        """Work was done: poll eagerly again (as eagerly as a contended GIL allows)."""
        if self.contended:
            self._hot_until = 0.0
            self._sleep = self.contended_sleep
        else:
            self._hot_until = time.monotonic() + self.spin
            self._sleep = SHORTEST_SLEEP

    def spinning(self) -> bool:
        """Whether the loop is still in its spin phase (it only yields between polls)."""
        return time.monotonic() < self._hot_until

    def pause(self, wake: Latch | None = None) -> None:
        """Wait a little before the next poll; skips the sleep if ``wake`` is already set."""
        start = time.monotonic()
        if start < self._hot_until:
            os.sched_yield()  # drops the GIL and the CPU for ~1 µs; time.sleep(0) would sleep ~80 µs
            if self.contended_sleep and time.monotonic() - start > OVERRUN:
                self._enter_contended()
            return
        if wake is None or not wake.is_set():  # time.sleep costs ~25 % less CPU than Event.wait
            time.sleep(self._sleep)
            if self.contended_sleep:
                if time.monotonic() - start - self._sleep > OVERRUN:
                    self._enter_contended()
                else:
                    self.contended = False
        self._sleep = min(self._sleep * 2, self.longest)

    def _enter_contended(self) -> None:
        self.contended = True
        self._hot_until = 0.0
        self._sleep = max(self._sleep, self.contended_sleep)
