"""A results table in SQLite, appended to by every rank under ``write()`` and read back under ``read()``.

Run it under MPI with any number of ranks::

    mpiexec -n 4 python -m mpi4py examples/results_table.py [DIR] [--trials T]

A typical parameter sweep: every rank runs trials and appends one row per trial
to a shared ``results.sqlite``.  Rank 0 creates the table inside
``single_write``; every rank appends its rows in small transactions, each under
``write()``, and peeks at the table under ``read()`` in between.  At the end
every rank reads the whole table and checks that each rank's rows are there,
exactly once, with the right values.

SQLite is opened with ``timeout=0``: it would raise ``database is locked`` the
moment two processes wrote at once, so a clean run also shows that mpilock
kept the writers apart.  Each connection is opened and closed inside its lock.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sqlite3
import sys
import tempfile
from contextlib import closing

from mpi4py import MPI

import mpilock

BATCH = 3
"""Rows per transaction."""


def trial(rank: int, index: int) -> float:
    """The (deterministic) result of trial ``index`` on ``rank``."""
    return math.sin(rank + 0.1 * index) * 100.0


def connect(path: str) -> closing[sqlite3.Connection]:
    return closing(sqlite3.connect(path, timeout=0, isolation_level=None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default=None, help="directory for the table (default: a temp dir)")
    parser.add_argument("--trials", "-t", type=int, default=12, help="trials per rank (default: 12)")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    ctrl = mpilock.sync(comm)
    rank, size, trials = ctrl.rank, ctrl.size, args.trials

    with ctrl.single_write() as fence:
        fence.guard()
        directory = args.dir or tempfile.mkdtemp(prefix="mpilock-table-")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "results.sqlite")
        with connect(path) as db:
            db.execute("DROP TABLE IF EXISTS results")
            db.execute("CREATE TABLE results (rank INTEGER, trial INTEGER, value REAL, PRIMARY KEY (rank, trial))")
        fence.share((path, directory, args.dir is None))
    path, directory, temporary = fence.collect()

    peeks: list[int] = []
    for first in range(0, trials, BATCH):
        rows = [(rank, i, trial(rank, i)) for i in range(first, min(first + BATCH, trials))]
        with ctrl.write(), connect(path) as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO results VALUES (?, ?, ?)", rows)
            db.execute("COMMIT")
        with ctrl.read(), connect(path) as db:
            peeks.append(db.execute("SELECT COUNT(*) FROM results WHERE rank = ?", (rank,)).fetchone()[0])

    comm.Barrier()  # every rank has appended all its rows
    errors: list[str] = []
    with ctrl.read(), connect(path) as db:
        table = db.execute("SELECT rank, trial, value FROM results ORDER BY rank, trial").fetchall()
        per_rank = db.execute("SELECT rank, COUNT(*), AVG(value) FROM results GROUP BY rank ORDER BY rank").fetchall()
    want = [(r, i, trial(r, i)) for r in range(size) for i in range(trials)]
    if table != want:
        errors.append(f"rank {rank}: read {len(table)} rows, expected {len(want)} (or values differ)")
    if peeks != [min(first + BATCH, trials) for first in range(0, trials, BATCH)]:
        errors.append(f"rank {rank}: saw its own row counts as {peeks}")

    ctrl.close()
    gathered = comm.gather(errors)
    failed = comm.bcast(any(gathered) if rank == 0 else None)
    if rank == 0:
        for errs in gathered:
            for line in errs:
                print("ERROR", line, file=sys.stderr)
        print(
            f"results_table: {size} rank(s) appended {trials} rows each in batches of {BATCH}; "
            f"table has {len(table)} rows: {'FAILED' if failed else 'OK'}"
        )
        for r, count, mean in per_rank:
            print(f"  rank {r}: {count} rows, mean value {mean:8.3f}")
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
