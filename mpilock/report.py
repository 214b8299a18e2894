"""Long-wait reports: a rank that waits too long for a lock logs the server's view of it.

After ``MPILOCK_WAIT_REPORT`` seconds (default 60) of waiting, the waiting
rank asks the server for the table of the lock(s) it waits for and logs one
WARNING on the ``mpilock`` logger: who holds it, in which mode, since when,
taken where, and who is queued ahead.  It asks again after twice as long
(2x, 4x, 8x the threshold...), never in a flood.  This explains the waits the
server cannot break, such as a rank that holds a lock while it sits in an MPI
collective.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable

from .link import Answer, Link, Watcher
from .server.frames import joined
from .server.protocol import Flag, Op
from .table import LockTable

log = logging.getLogger("mpilock")

_KEY_FLAGS = int(Flag.MULTI) | int(Flag.KEYS_IN_PAYLOAD)


class LongWait(Watcher):
    """Reports on one lock request that is taking long."""

    def __init__(
        self,
        rank: str,
        what: str | Callable[[], str],
        request: tuple[bytes, int, bytes | None],
        start: float,
        threshold: float,
        reserve: Callable[[], int],
    ) -> None:
        """Holder ``rank`` (a name) asked for ``what`` (e.g. ``write 'a' at sim.py:44``), sent as key ``request``.

        ``what`` may be a function that names the request: it is called only
        when a report is made, so a wait that ends before costs nothing.
        ``reserve`` gives the waiting thread's next sequence number (its
        question's answer comes back to it).
        """
        self.reserve = reserve
        self.rank = rank
        """Who waits: ``rank 1``, or ``rank 1 / worker-2`` for a thread other than the rank's first."""
        self.what = what
        self.area, flags, self.payload = request
        self.flags = (flags & _KEY_FLAGS) | int(Flag.FILTER)
        self.start = start
        self.threshold = threshold
        self.due = start + threshold
        self.reports = 0

    def ask(self, link: Link) -> int:
        """Ask the server for the table of the awaited lock(s)."""
        return link.send(Op.LOCKS, self.reserve(), self.flags, payload=self.payload, area=self.area)

    def answered(self, answer: Answer) -> None:
        """Log the table; the next report is due after twice the wait so far."""
        waited = time.monotonic() - self.start
        table = LockTable(pickle.loads(joined(answer.payload)))
        if callable(self.what):
            self.what = self.what()
        log.warning("%s has waited %.1f s for %s; the lock server's view:\n%s", self.rank, waited, self.what, table)
        self.reports += 1
        self.due = self.start + self.threshold * 2**self.reports
