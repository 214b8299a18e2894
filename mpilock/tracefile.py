"""Which file a controller's trace goes to: ``trace=``, else ``MPILOCK_TRACE`` read at each ``sync()``.

A program that makes several controllers with tracing on (``MPILOCK_TRACE``
applies to every one) would have each ``close()`` overwrite the previous
controller's file.  Instead, the first controller that names a file gets it,
and every later controller naming the same file gets ``NAME-2.EXT``,
``NAME-3.EXT``, ... in the order the controllers were made.  Every rank
assigns the master's path of every controller, so the numbering is the same
on every rank, whichever rank is a controller's master.
"""

from __future__ import annotations

import os

from .server import settings

_TAKEN: set[str] = set()
"""Absolute paths already given to a controller of this program."""


def requested(trace: str | os.PathLike[str] | None) -> str | None:
    """Return the trace file asked for by ``trace=``, else ``MPILOCK_TRACE`` as it is now (``None``: no tracing)."""
    if trace is not None:
        return os.fspath(trace)
    return settings.path("MPILOCK_TRACE", os.environ)


def assign(path: str | None) -> str | None:
    """Give a new controller ``path``, or ``NAME-n.EXT`` if an earlier controller of this program has it."""
    if path is None:
        return None
    candidate, number = path, 1
    root, ext = os.path.splitext(path)
    while os.path.abspath(candidate) in _TAKEN:
        number += 1
        candidate = f"{root}-{number}{ext}"
    _TAKEN.add(os.path.abspath(candidate))
    return candidate
