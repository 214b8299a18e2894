"""A real HDF5 file shared by all ranks: no lost update under write()."""

import h5py
from mpi4py import MPI
from mpitools import mpi

COMM = MPI.COMM_WORLD
N = 20


@mpi()
def test_counter_in_hdf5_has_no_lost_update(ctrl, mpi_tmp_path, mpi_ranks):
    with ctrl.single_write() as fence:
        fence.guard()
        path = mpi_tmp_path / "counter.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("counter", data=0)
        fence.share(str(path))
    path = fence.collect()
    for _ in range(N):
        with ctrl.write(), h5py.File(path, "r+") as f:
            f["counter"][()] = f["counter"][()] + 1
    COMM.barrier()
    with ctrl.read(), h5py.File(path, "r") as f:
        assert f["counter"][()] == N * COMM.size
