"""One HDF5 file shared by every rank, guarded by mpilock (the ``make demo`` example).

Run it under MPI with any number of ranks::

    mpiexec -n 4 python -m mpi4py examples/h5py_shared_file.py [DIR] [--trace T.json] [--plot T.png]

1. Rank 0 creates the file inside ``single_write`` and shares its path and the
   layout of the datasets with the other ranks (``fence.share``/``collect``).
2. Every rank fills its own dataset, one block of rows per ``write()``, and
   between blocks reads the progress of every other rank under ``read()``.
3. Every rank reads every dataset under ``read()`` and checks each value.

The file is opened and closed inside each lock: HDF5 caches metadata in the
open handle, so a handle kept open across another rank's write would read
stale or corrupt structures.  Without DIR the file goes to a temporary
directory that is removed at the end.  Exit status 0 means every rank saw
exactly the data every other rank wrote.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import h5py
import numpy as np
from mpi4py import MPI

import mpilock

BLOCKS = 4
"""Blocks of rows each rank writes, one write() each."""
ROWS_PER_BLOCK = 8
COLS = 16


def expected(rank: int, rows: int, cols: int) -> np.ndarray:
    """The data rank ``rank`` writes: a pattern no other rank could produce."""
    return np.arange(rows * cols, dtype="f8").reshape(rows, cols) + 1000.0 * rank


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", default=None, help="directory for the file (default: a temp dir)")
    parser.add_argument("--trace", default=None, help="write a Chrome trace of the locks to this JSON file")
    parser.add_argument("--plot", default=None, help="draw the lock timeline to this PNG (needs matplotlib)")
    parser.add_argument("--hold-ms", type=float, default=2.0, help="extra time each lock is held (simulated work)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    comm = MPI.COMM_WORLD
    trace = args.trace or os.environ.get("MPILOCK_TRACE") or None
    scratch_trace = bool(args.plot) and trace is None
    if scratch_trace:  # --plot alone: trace to a temporary file, removed after plotting
        trace = comm.bcast(os.path.join(tempfile.gettempdir(), f"mpilock-demo-{os.getpid()}.json"))
    ctrl = mpilock.sync(comm, trace=trace)
    rank, size = ctrl.rank, ctrl.size
    hold = args.hold_ms / 1000.0

    # 1. rank 0 (the master) creates the file; the others wait at the end of the block
    with ctrl.single_write() as fence:
        fence.guard()
        directory = args.dir or tempfile.mkdtemp(prefix="mpilock-h5py-")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "shared.h5")
        layout = {"rows": BLOCKS * ROWS_PER_BLOCK, "cols": COLS, "names": [f"rank_{r}" for r in range(size)]}
        with h5py.File(path, "w") as f:
            f.attrs["ranks"] = size
            for name in layout["names"]:
                f.create_dataset(name, shape=(layout["rows"], layout["cols"]), dtype="f8", fillvalue=np.nan)
                f[name].attrs["blocks_written"] = 0
        fence.share({"path": path, "directory": directory, "temporary": args.dir is None, **layout})
    info = fence.collect()
    path, rows, cols, names = info["path"], info["rows"], info["cols"], info["names"]

    # 2. each rank fills its own dataset block by block; other ranks may read in between
    mine = expected(rank, rows, cols)
    progress_seen: list[list[int]] = []
    for block in range(BLOCKS):
        lo, hi = block * ROWS_PER_BLOCK, (block + 1) * ROWS_PER_BLOCK
        with ctrl.write(), h5py.File(path, "r+") as f:
            dset = f[names[rank]]
            dset[lo:hi] = mine[lo:hi]
            dset.attrs["blocks_written"] = block + 1
            time.sleep(hold)
        with ctrl.read(), h5py.File(path, "r") as f:
            progress_seen.append([int(f[name].attrs["blocks_written"]) for name in names])
            time.sleep(hold)

    # 3. once everyone is done, every rank reads every dataset and checks it
    comm.Barrier()
    errors: list[str] = []
    with ctrl.read(), h5py.File(path, "r") as f:
        for other, name in enumerate(names):
            data = f[name][()]
            if not np.array_equal(data, expected(other, rows, cols)):
                errors.append(f"rank {rank}: dataset {name} differs from what rank {other} wrote")
            if f[name].attrs["blocks_written"] != BLOCKS:
                errors.append(f"rank {rank}: dataset {name} reports {f[name].attrs['blocks_written']} blocks")
        time.sleep(hold)
    for seen in progress_seen:  # a reader saw whole blocks only, and its own progress exactly
        if any(not 0 <= n <= BLOCKS for n in seen):
            errors.append(f"rank {rank}: impossible progress {seen}")
    if [seen[rank] for seen in progress_seen] != list(range(1, BLOCKS + 1)):
        errors.append(f"rank {rank}: read back its own progress as {[seen[rank] for seen in progress_seen]}")

    stats = ctrl.stats()  # collective: every rank gets the server's figures
    ctrl.close()  # collective: the master writes the trace file now
    gathered = comm.gather(errors)
    all_errors = [e for errs in gathered for e in errs] if rank == 0 else []
    failed = comm.bcast(bool(all_errors))

    if rank == 0:
        for line in all_errors:
            print("ERROR", line, file=sys.stderr)
        print(
            f"h5py_shared_file: {size} rank(s) wrote {BLOCKS} blocks each to {os.path.basename(path)}; "
            f"every rank read back all {size} datasets: {'FAILED' if failed else 'OK'}"
        )
        print_stats(stats)
        if trace is not None and not scratch_trace:
            print(f"trace: {trace}")
        if args.plot:
            from mpilock.plot import load_spans, plot_timeline, read_trace

            spans, labels = load_spans(read_trace(trace))
            plot_timeline(
                spans,
                args.plot,
                labels=labels,
                title=f"h5py_shared_file.py, {size} ranks: {BLOCKS} write + {BLOCKS + 1} read locks each",
            )
            print(f"timeline: {args.plot}")
            if scratch_trace:
                os.remove(trace)
        if info["temporary"]:
            shutil.rmtree(info["directory"], ignore_errors=True)
    return 1 if failed else 0


def print_stats(stats: dict) -> None:
    """Print the per-rank figures of ``ctrl.stats()`` as a small table."""
    print(f"{'rank':>4} {'reads':>6} {'writes':>6} {'wait p50':>10} {'wait p99':>10} {'wait max':>10} {'held':>9}")
    for r in stats["ranks"]:
        print(
            f"{r['rank']:>4} {r['reads']:>6} {r['writes']:>6} {r['wait_p50'] * 1e3:>8.2f}ms "
            f"{r['wait_p99'] * 1e3:>8.2f}ms {r['wait_max'] * 1e3:>8.2f}ms {r['hold_total'] * 1e3:>7.1f}ms"
        )
    print("(writes include single_write blocks; waits are request-to-grant times seen by the lock server)")


if __name__ == "__main__":
    sys.exit(main())
