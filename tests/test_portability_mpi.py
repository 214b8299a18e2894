"""The MPI under test is the one ``make test-mpi MPI=... TRANSPORT=...`` asked for, as every rank sees it."""

import os

import pytest
from mpi4py import MPI
from mpitools import mpi

COMM = MPI.COMM_WORLD
VENDORS = {"mpich": "MPICH", "openmpi": "Open MPI"}
TCP_SETTINGS = {"MPIR_CVAR_NOLOCAL": "1", "FI_PROVIDER": "tcp", "MPIR_CVAR_CH4_NETMOD": "ofi"}


@mpi()
def test_every_rank_runs_the_requested_mpi_with_threads(mpi_ranks):
    assert COMM.Get_size() == mpi_ranks
    assert MPI.Query_thread() == MPI.THREAD_MULTIPLE
    wanted = os.environ.get("MPILOCK_TEST_MPI")
    if wanted is None:
        pytest.skip("MPILOCK_TEST_MPI is not set (run through make test-mpi)")
    vendor = MPI.get_vendor()[0]
    assert vendor == VENDORS[wanted], MPI.Get_library_version()
    assert COMM.allgather(vendor) == [vendor] * mpi_ranks


@mpi()
def test_every_rank_got_the_transport_settings(mpi_ranks):
    transport = os.environ.get("MPILOCK_TEST_TRANSPORT")
    if transport != "tcp":
        pytest.skip("only TRANSPORT=tcp sets anything")
    seen = COMM.allgather({k: os.environ.get(k) for k in TCP_SETTINGS})
    assert seen == [TCP_SETTINGS] * mpi_ranks
