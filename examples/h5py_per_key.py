"""Per-category HDF5 files appended to by every rank at once, each file under its own lock key.

Run it under MPI with any number of ranks::

    mpiexec -n 4 python -m mpi4py examples/h5py_per_key.py [DIR] [--trials T] [--categories C] [--trace T.json]

(then ``python -m mpilock.plot T.json`` draws the timeline coloured by key).

1. Every rank runs trials; each result belongs to a category and is appended
   as one row to that category's file ``cat-C.h5`` under
   ``ctrl.write("cat-C.h5")``: ranks append to different files at the same
   time and take turns only on the same file.  An append is a
   read-modify-write of the dataset's length (grow it by one, write the last
   row), so two unguarded appenders would lose rows or corrupt the file.
2. A heavier phase once every rank is done: each rank writes a checkpoint of
   8 MiB to a file of its own, at most 2 ranks at a time
   (``ctrl.bounded("fs", 2)``), to throttle the filesystem.
3. Every rank reads every category file under ``ctrl.read(key)`` and checks
   that each row of every rank is there exactly once with its value; every
   snapshot is checked, and that no more than 2 ranks were in the heavy phase
   at once.

Each file is opened and closed inside its lock: HDF5 caches metadata in an
open handle, and closing flushes the file before the next rank opens it.
Without DIR the files go to a temporary directory that is removed at the end.
Exit status 0 means every check passed on every rank.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter

import h5py
import numpy as np
from mpi4py import MPI

import mpilock
from mpilock.table import format_rows

ROW = np.dtype([("rank", "i4"), ("trial", "i4"), ("value", "f8")])
FS_LIMIT = 2
"""Ranks allowed in the heavy phase at once."""
SNAPSHOT = 1024 * 1024
"""Values of each rank's snapshot (8 MiB of float64), written and flushed in ``PIECES`` pieces."""
PIECES = 8


def category(rank: int, trial: int, categories: int) -> int:
    """The category of trial ``trial`` of rank ``rank``: every rank hits every file, in its own order."""
    return (rank * 7 + trial * 3) % categories


def result(rank: int, trial: int) -> float:
    """The (deterministic) result of a trial."""
    return math.sin(rank + 0.1 * trial) * 100.0


def append(path: str, row: tuple[int, int, float]) -> None:
    """Append one row to the ``results`` dataset of ``path``, creating file and dataset if needed."""
    with h5py.File(path, "a") as f:
        if "results" not in f:
            f.create_dataset("results", shape=(0,), maxshape=(None,), dtype=ROW, chunks=(64,))
        rows = f["results"]
        rows.resize((rows.shape[0] + 1,))
        rows[-1] = row


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` intervals open at one instant."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default=None, help="directory for the files (default: a temp dir)")
    parser.add_argument("--trials", "-t", type=int, default=20, help="trials per rank (default: 20)")
    parser.add_argument("--categories", "-c", type=int, default=5, help="category files (default: 5)")
    parser.add_argument("--work-ms", type=float, default=1.0, help="simulated work per trial (default: 1 ms)")
    parser.add_argument("--trace", default=None, help="write a Chrome trace of the locks to this JSON file")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    ctrl = mpilock.sync(comm, trace=args.trace)
    rank, size, trials, categories = ctrl.rank, ctrl.size, args.trials, args.categories

    with ctrl.single_write() as fence:  # rank 0 picks the directory and clears files of an earlier run
        fence.guard()
        directory = args.dir or tempfile.mkdtemp(prefix="mpilock-per-key-")
        os.makedirs(directory, exist_ok=True)
        for old in glob.glob(os.path.join(directory, "cat-*.h5")) + glob.glob(os.path.join(directory, "snap-*.h5")):
            os.remove(old)
        fence.share((directory, args.dir is None))
    directory, temporary = fence.collect()

    # 1. append each result to its category's file, under that file's key
    for trial in range(trials):
        time.sleep(args.work_ms / 1000.0)  # the trial's computation
        name = f"cat-{category(rank, trial, categories)}.h5"
        with ctrl.write(name):
            append(os.path.join(directory, name), (rank, trial, result(rank, trial)))

    # 2. the heavy phase, a checkpoint once every rank is done appending: at most FS_LIMIT ranks at a time
    snapshot = np.arange(SNAPSHOT, dtype="f8") + rank
    comm.Barrier()
    with ctrl.bounded("fs", FS_LIMIT):
        began = time.monotonic()
        with h5py.File(os.path.join(directory, f"snap-{rank}.h5"), "w") as f:
            dset = f.create_dataset("snapshot", shape=snapshot.shape, dtype=snapshot.dtype)
            for piece in np.array_split(np.arange(SNAPSHOT), PIECES):
                dset[piece[0] : piece[-1] + 1] = snapshot[piece[0] : piece[-1] + 1]
                f.flush()
        heavy = (began, time.monotonic())

    # 3. once everyone is done, every rank checks every file
    comm.Barrier()
    errors: list[str] = []
    for c in range(categories):
        name = f"cat-{c}.h5"
        want = {(r, t): result(r, t) for r in range(size) for t in range(trials) if category(r, t, categories) == c}
        if not want:
            continue
        with ctrl.read(name), h5py.File(os.path.join(directory, name), "r") as f:
            rows = f["results"][()]
        seen = Counter((int(r), int(t)) for r, t, _ in rows)
        lost = sorted(set(want) - set(seen))
        doubled = sorted(k for k, n in seen.items() if n > 1)
        wrong = sorted((int(r), int(t)) for r, t, v in rows if want.get((int(r), int(t))) != v)
        if lost or doubled or wrong or len(rows) != len(want):
            errors.append(
                f"rank {rank}: {name} has {len(rows)} rows, expected {len(want)}; lost {lost[:5]}, "
                f"duplicated {doubled[:5]}, wrong {wrong[:5]}"
            )
    other = (rank + 1) % size
    with h5py.File(os.path.join(directory, f"snap-{other}.h5"), "r") as f:  # written before the barrier
        if not np.array_equal(f["snapshot"][()], np.arange(SNAPSHOT, dtype="f8") + other):
            errors.append(f"rank {rank}: the snapshot of rank {other} differs from what it wrote")
    stats = ctrl.stats()
    ctrl.close()

    gathered = comm.gather((errors, heavy))
    if rank == 0:
        all_errors = [e for errs, _ in gathered for e in errs]
        most = most_at_once([span for _, span in gathered])
        if most > FS_LIMIT:
            all_errors.append(f"{most} ranks were in the heavy phase at once (bounded to {FS_LIMIT})")
    failed = comm.bcast(bool(all_errors) if rank == 0 else None)
    if rank == 0:
        for line in all_errors:
            print("ERROR", line, file=sys.stderr)
        print(
            f"h5py_per_key: {size} rank(s) appended {trials} rows each to {categories} files, one lock key per "
            f"file; every file has all its rows, none lost or duplicated; heavy phase: at most {most} of {size} "
            f"ranks at once (bounded to {FS_LIMIT}): {'FAILED' if failed else 'OK'}"
        )
        print_keys(stats)
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
    return 1 if failed else 0


def print_keys(stats: dict) -> None:
    """Print the per-key figures of ``ctrl.stats()``, most total wait first."""
    rows = [
        (
            k["key"],
            str(k["writes"]),
            str(k["reads"]),
            str(k["slots"]),
            f"{k['wait_total'] * 1e3:.1f} ms",
            f"{k['wait_max'] * 1e3:.1f} ms",
            f"{k['hold_total'] * 1e3:.1f} ms",
        )
        for k in stats["keys"]
    ]
    print(format_rows(("key", "writes", "reads", "places", "waited", "longest wait", "held"), rows))


if __name__ == "__main__":
    sys.exit(main())
