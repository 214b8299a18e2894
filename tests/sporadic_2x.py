"""write() every PERIOD s from rank 1, master idle or computing: the sporadic rows, runnable with mpilock 2.2.1 too.

Written against the 1.x/2.x API (``sync()``, ``write()``), so the same file
measures this project and, in a venv of its own (``pip install mpich mpi4py
mpilock==2.2.1``), the RMA-window mpilock 2.2.1:

    mpiexec -n 2 python -m mpi4py tests/sporadic_2x.py 0.2 40 idle        # or: computing; 0.02 40 idle
"""

import sys
import time

from mpi4py import MPI

import mpilock

comm = MPI.COMM_WORLD
period, n, mode = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
c = mpilock.sync()
comm.Barrier()
lat = []
if comm.rank == 1:
    for _ in range(n):
        time.sleep(period)
        t = time.perf_counter()
        with c.write():
            lat.append(time.perf_counter() - t)
    comm.send(None, dest=0, tag=77)
elif comm.rank == 0:
    req = comm.irecv(source=1, tag=77)
    while not req.Test():
        if mode == "computing":
            end = time.perf_counter() + 0.05
            x = 0
            while time.perf_counter() < end:
                x += 1
        else:
            time.sleep(0.005)
comm.Barrier()
if comm.rank == 1:
    lat.sort()
    p50, p90 = lat[n // 2] * 1e6, lat[int(n * 0.9)] * 1e6
    version = getattr(mpilock, "__version__", "?")
    print(f"mpilock {version}: write() every {period * 1e3:g} ms, master {mode}: p50 {p50:,.0f} us, p90 {p90:,.0f} us")
c.close()
