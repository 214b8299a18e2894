"""The idiom of the mpilock 1.0 README, made to work on a real HDF5 file.

Run it under MPI with any number of ranks::

    mpiexec -n 4 python -m mpi4py examples/seed_idiom.py [DIR]

The 1.0 README sketched four steps: a fence in which the master creates the
file and shares it, a read under ``read()``, a write under ``write()``, and a
last fence in which the master closes the file.  It shared the open
``h5py.File`` itself, which cannot work:

* h5py refuses to pickle its objects (``TypeError: h5py objects cannot be
  pickled``), and ``fence.share`` must pickle what it sends to other
  processes: an ``h5py.File`` is a handle to HDF5 library state (open file
  descriptor, metadata cache, free-space tracking) inside *one* process; none
  of that can travel to another process;
* even a handle each rank opened itself must not stay open across other ranks'
  writes: HDF5 caches metadata in the handle, so it would read stale or
  corrupt structures, and two processes flushing their caches to one file
  destroy it.

So here the fence shares the *path*, and every rank opens the file inside each
lock and closes it before the lock is released.  The last fence does what
closing did in 1.0: the master finalises the file (marks it complete) and
shares a summary that every rank checks.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import cloudpickle
import h5py
import numpy as np
from mpi4py import MPI

import mpilock


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    comm = MPI.COMM_WORLD
    ctrl = mpilock.sync(comm)

    # Step 1, fence: only the master runs the block, the others jump to its end at guard()
    with ctrl.single_write() as fence:
        fence.guard()
        directory = argv[0] if argv else tempfile.mkdtemp(prefix="mpilock-seed-")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "hello.world.h5")
        with h5py.File(path, "w") as f:
            f.create_dataset("my_data", data=np.arange(10.0))
            try:  # what 1.0's fence.share(f) would have done
                cloudpickle.dumps(f)
                refusal = "h5py pickled an open file?!"
            except TypeError as err:
                refusal = f"{type(err).__name__}: {err}"
        fence.share({"path": path, "directory": directory, "temporary": not argv, "refusal": refusal})
    shared = fence.collect()
    path = shared["path"]

    errors: list[str] = []
    # Step 2, read: many ranks at once, nobody writes meanwhile
    with ctrl.read(), h5py.File(path, "r") as f:
        data = f["my_data"][()]
    # Step 3, write: one rank at a time
    with ctrl.write(), h5py.File(path, "r+") as f:
        f.create_dataset(str(ctrl.rank), data=data * (ctrl.rank + 1))

    # Step 4, fence: the master finalises the file once everyone has written
    comm.Barrier()  # the fence's writer does not wait for the others to *enter* the block
    with ctrl.single_write() as fence:
        fence.guard()
        with h5py.File(path, "r+") as f:
            f.attrs["complete"] = True
            fence.share(sorted(name for name in f if name != "my_data"))
    names = fence.collect()

    if names != sorted(str(r) for r in range(ctrl.size)):
        errors.append(f"rank {ctrl.rank}: datasets {names}")
    with ctrl.read(), h5py.File(path, "r") as f:
        if not f.attrs.get("complete", False):
            errors.append(f"rank {ctrl.rank}: file not marked complete")
        for r in range(ctrl.size):
            if not np.array_equal(f[str(r)][()], np.arange(10.0) * (r + 1)):
                errors.append(f"rank {ctrl.rank}: dataset {r} is wrong")

    ctrl.close()
    gathered = comm.gather(errors)
    failed = comm.bcast(any(gathered) if ctrl.rank == 0 else None)
    if ctrl.rank == 0:
        for errs in gathered:
            for line in errs:
                print("ERROR", line, file=sys.stderr)
        print(f"seed_idiom: sharing the open h5py.File is refused ({shared['refusal']}); shared its path instead")
        print(
            f"seed_idiom: {ctrl.size} rank(s) read my_data and wrote datasets {names}: {'FAILED' if failed else 'OK'}"
        )
        if shared["temporary"]:
            shutil.rmtree(shared["directory"], ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
