"""Thread safety of the server: the master locks heavily from two threads, each with its own controller.

The master's application threads poll their channel themselves (help), the
server loop's threads serve the other ranks, and Python-side work (acquire
sites, stats) interleaves with them; no write may overlap another hold of the
same controller.  Runs with either loop (CI runs it at 8 ranks with both).
"""

import threading
import time

from mpi4py import MPI
from mpitools import Intervals, mpi, overlaps

import mpilock


def hammer(ctrl: mpilock.WindowController, spans: Intervals, until: float, kinds: tuple[str, ...]) -> int:
    count = 0
    while time.monotonic() < until:
        kind = kinds[count % len(kinds)]
        lock = ctrl.write if kind == "write" else ctrl.read
        with lock(), spans.hold(kind):
            pass
        if count % 50 == 0:
            with lock("k", count % 3):  # other locks (not recorded: they may overlap), new acquire sites
                pass
            ctrl.stats()
        count += 1
    return count


@mpi(min_ranks=2)
def test_the_master_locking_from_two_controllers_never_overlaps(mpi_ranks):
    comm = MPI.COMM_WORLD
    first, second = mpilock.sync(), mpilock.sync()
    spans = (Intervals(), Intervals())
    comm.barrier()
    until = time.monotonic() + 3.0
    counts = []
    if comm.rank == 0:
        helper = threading.Thread(
            target=lambda: counts.append(hammer(second, spans[1], until, ("write", "read", "write")))
        )
        helper.start()
        counts.append(hammer(first, spans[0], until, ("write", "write", "read")))
        helper.join()
    else:
        ctrl, span = (first, spans[0]) if comm.rank % 2 else (second, spans[1])
        counts.append(hammer(ctrl, span, until, ("write", "read")))
    comm.barrier()
    for ctrl, span in zip((first, second), spans, strict=True):
        assert overlaps(span.gather(comm)) == []
        ctrl.close()
    assert sum(comm.allgather(sum(counts))) > 0
