"""Lost updates: a counter in a JSON file, incremented by every rank, without and with a lock.

Run it under MPI with any number of ranks::

    mpiexec -n 4 python -m mpi4py examples/lost_updates.py [DIR] [--increments K]

Every rank adds 1 to the counter K times: read the file, think a little, write
the file back.  Without a lock two ranks read the same value and one increment
overwrites the other, so the final count falls short of K x ranks (how short
depends on timing; with one rank nothing can be lost, and the example does not
fail when no update happens to be lost).  With ``ctrl.write()`` around each
read-modify-write the count must be exact, or the example exits with status 1.

The file is replaced atomically (write a temporary file, ``os.replace``), so a
reader never sees half a file: the updates lost without a lock are lost to the
race between reading and writing, not to torn writes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from mpi4py import MPI

import mpilock

THINK = 0.001
"""Seconds between reading and writing the counter: widens the race window."""


def read_count(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return int(json.load(f)["count"])


def write_count(path: str, count: int, rank: int) -> None:
    scratch = f"{path}.{rank}.tmp"
    with open(scratch, "w", encoding="utf-8") as f:
        json.dump({"count": count, "last_writer": rank}, f)
    os.replace(scratch, path)


def increment_all(
    path: str, increments: int, rank: int, lock: Callable[[], AbstractContextManager[None]] | None
) -> float:
    """Do ``increments`` read-think-write cycles, each inside a fresh ``lock()``; return seconds taken."""
    start = time.perf_counter()
    for _ in range(increments):
        with lock() if lock is not None else nullcontext():
            value = read_count(path)
            time.sleep(THINK)
            write_count(path, value + 1, rank)
    return time.perf_counter() - start


def run_phase(
    ctrl: mpilock.WindowController, comm: MPI.Intracomm, path: str, increments: int, locked: bool
) -> tuple[int, float]:
    """Reset the counter, let every rank increment it, return (final count, slowest rank's seconds)."""
    with ctrl.single_write() as fence:
        fence.guard()
        write_count(path, 0, ctrl.rank)
    comm.Barrier()  # nobody starts before the reset is done
    seconds = increment_all(path, increments, ctrl.rank, ctrl.write if locked else None)
    slowest = comm.allreduce(seconds, op=MPI.MAX)
    comm.Barrier()  # every increment is done
    with ctrl.read():
        count = read_count(path)
    return count, slowest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default=None, help="directory for the counter (default: a temp dir)")
    parser.add_argument("--increments", "-k", type=int, default=50, help="increments per rank (default: 50)")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    ctrl = mpilock.sync(comm)
    k, size = args.increments, ctrl.size

    with ctrl.single_write() as fence:
        fence.guard()
        directory = args.dir or tempfile.mkdtemp(prefix="mpilock-counter-")
        os.makedirs(directory, exist_ok=True)
        fence.share((os.path.join(directory, "counter.json"), directory, args.dir is None))
    path, directory, temporary = fence.collect()

    unlocked, t_unlocked = run_phase(ctrl, comm, path, k, locked=False)
    locked, t_locked = run_phase(ctrl, comm, path, k, locked=True)
    ctrl.close()

    expected = k * size
    ok = locked == expected
    if ctrl.rank == 0:
        lost = expected - unlocked
        print(f"lost_updates: {size} rank(s) x {k} increments = {expected} expected")
        print(f"  without a lock: count {unlocked:>5}, {lost} update(s) lost ({t_unlocked:.2f} s)")
        print(
            f"  with write():   count {locked:>5}, {expected - locked} update(s) lost ({t_locked:.2f} s): "
            f"{'OK' if ok else 'FAILED'}"
        )
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
