"""Which lock server loop this process runs (see :mod:`mpilock.server.native`).

``mpilock.native.LOOP`` is ``"native"`` (the C loop of ``server/_native.c``)
or ``"python"`` (the pure-Python loop), and ``mpilock.native.REASON`` says
why.  Importing this module imports mpi4py, and builds the native module at
first use if the install built none (``mpilock/server/native_build.py``).

``python -m mpilock.native`` prints both: run it with ``MPICC`` naming the
``mpicc`` of the MPI that mpi4py loads to build the native loop for it.
"""

from __future__ import annotations

from .server.native import LOOP, REASON

__all__ = ["LOOP", "REASON"]

if __name__ == "__main__":
    print(LOOP, "loop:", REASON)
