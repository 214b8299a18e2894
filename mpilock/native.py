"""Which lock server loop this process runs (see :mod:`mpilock.server.native`).

``mpilock.native.LOOP`` is ``"native"`` (the C loop of ``server/_native.c``)
or ``"python"`` (the pure-Python loop), and ``mpilock.native.REASON`` says
why.  Importing this module imports mpi4py.
"""

from __future__ import annotations

from .server.native import LOOP, REASON

__all__ = ["LOOP", "REASON"]
