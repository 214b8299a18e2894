"""Checking what users pass in, before anything reaches the lock server."""

from __future__ import annotations

import math
import operator
import os
from typing import Any

from mpi4py import MPI

from . import tracefile
from .errors import MpilockError

_KINDS: dict[str, type[Exception]] = {"TypeError": TypeError, "ValueError": ValueError}


def rank_index(value: object, size: int, what: str) -> int:
    """``value`` as a rank of a communicator of ``size`` (any integral type); ``TypeError``/``ValueError``."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer rank, not {value!r}")
    try:
        index = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be an integer rank, not {value!r}") from None
    if not 0 <= index < size:
        raise ValueError(f"{what}={index} is not a rank of a communicator of size {size}")
    return index


def timeout_seconds(timeout: object) -> float | None:
    """``timeout`` as seconds: ``None`` waits forever, ``0.0`` tries once; checked before any request is sent.

    Any real number works (``int``, ``float``, ``Decimal``, ``Fraction``,
    NumPy scalars); negative means try once; one too large for a float, or
    infinity, waits forever.  ``NaN`` is a ``ValueError``, anything else a
    ``TypeError``.
    """
    if timeout is None:
        return None
    if isinstance(timeout, (bool, str, bytes)) or _is_numpy_bool(timeout):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    try:
        value = float(timeout)  # type: ignore[arg-type]
    except OverflowError:
        return None  # 10**400 seconds: longer than any job
    except (TypeError, ValueError):
        if _is_nan(timeout):  # Decimal("sNaN") refuses float() instead of becoming a NaN
            raise ValueError(f"timeout must be a number of seconds or None, not {timeout!r}") from None
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}") from None
    if math.isnan(value):
        raise ValueError("timeout must be a number of seconds or None, not NaN")
    if value == math.inf:
        return None
    return max(0.0, value)


def _is_numpy_bool(value: object) -> bool:
    """Whether ``value`` is NumPy's bool scalar (``numpy.bool_``), refused like ``bool`` without importing NumPy."""
    kind = type(value)
    return kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_")


def _is_nan(value: object) -> bool:
    """Whether ``value`` is a NaN that ``float()`` refuses (a signalling ``Decimal`` NaN)."""
    is_nan = getattr(value, "is_nan", None)
    try:
        return callable(is_nan) and bool(is_nan())
    except Exception:
        return False


def writable_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the trace file ``path`` could not be written at close, or ``None`` if it can."""
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as err:
        return f"cannot write the trace file {os.fspath(path)!r}: {err.strerror or err}"
    if not existed:
        os.unlink(path)
    return None


def check_args(
    comm: Any, master: Any, trace: str | os.PathLike[str] | None = None
) -> tuple[MPI.Intracomm, int, str | None]:
    """Validate ``comm``, ``master`` and the trace file identically on every rank (collective).

    Returns the communicator (``COMM_WORLD`` for ``None``), the master's
    rank and the file the master writes the trace to (``None``: no tracing;
    see :mod:`mpilock.tracefile`).  Every rank raises the same kind of error
    if any rank found a problem, so nobody is left waiting in a collective
    call.  A non-integer ``master`` is a ``TypeError``, a rank outside
    ``comm`` or ranks that disagree a ``ValueError``.
    """
    if comm is None:
        comm = MPI.COMM_WORLD
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
        raise TypeError(f"comm must be an MPI intracommunicator such as MPI.COMM_WORLD, not {comm!r}")
    problem: tuple[str, str] | None = None
    index = -1
    try:
        index = rank_index(master, comm.Get_size(), "master")
    except (TypeError, ValueError) as err:
        problem = (type(err).__name__, str(err))
    if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        problem = (
            "MpilockError",
            "mpilock needs MPI_THREAD_MULTIPLE but MPI was initialised with a lower thread level; "
            "do not set mpi4py.rc.thread_level (its default is 'multiple') or set it to 'multiple' "
            "before importing mpi4py.MPI, and use an MPI library built with thread support",
        )
    path = tracefile.requested(trace)
    if problem is None and path is not None and comm.Get_rank() == index:
        text = writable_problem(path)
        if text is not None:
            problem = ("ValueError", text)
    views = comm.allgather((index, problem, path))
    for rank, (_, found, _) in enumerate(views):
        if found is not None:
            kind, text = found
            error = _KINDS.get(kind, MpilockError)
            raise error(text if rank == comm.Get_rank() else f"on rank {rank}: {text}")
    if len({m for m, _, _ in views}) > 1:
        raise ValueError(f"ranks disagree on master: {[m for m, _, _ in views]}")
    return comm, index, tracefile.assign(views[index][2])
