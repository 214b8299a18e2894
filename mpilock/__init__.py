"""mpilock: a readers-writer lock for the ranks of an MPI program.

Many readers at once, one writer at a time, writers first.  The lock lives on
a server thread on the master rank; ranks talk to it with two-sided messages
on a private duplicate of the communicator::

    from mpilock import sync

    ctrl = sync()
    with ctrl.write():
        ...  # only this rank writes now

Importing this package does not load MPI: the names that need ``mpi4py``
(:func:`sync`, :class:`WindowController`, :func:`dedicated`, :class:`Fence`)
are imported on first use (PEP 562), so :mod:`mpilock.plot`,
:mod:`mpilock.errors`, :mod:`mpilock.types` and :mod:`mpilock.server.core`
work on a machine without an MPI library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__
from .errors import (
    ClosedError,
    ConfigError,
    DeadlockError,
    FencedSignal,
    FenceError,
    LimitError,
    LockTimeout,
    MpilockError,
)
from .table import LockTable
from .types import KeyStats, RankStats, Stats, ThreadStats

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports them
    from .controller import Lock, WindowController, sync
    from .dedicated_server import dedicated
    from .fence import Fence

__all__ = [
    "ClosedError",
    "ConfigError",
    "DeadlockError",
    "Fence",
    "FenceError",
    "FencedSignal",
    "KeyStats",
    "LimitError",
    "Lock",
    "LockTable",
    "LockTimeout",
    "MpilockError",
    "RankStats",
    "Stats",
    "ThreadStats",
    "WindowController",
    "dedicated",
    "sync",
]

_LAZY = {
    "Fence": ".fence",
    "Lock": ".controller",
    "WindowController": ".controller",
    "dedicated": ".dedicated_server",
    "sync": ".controller",
}
"""Public names whose modules import ``mpi4py`` (or ``cloudpickle``), by module."""


if not TYPE_CHECKING:  # hidden from type checkers: they would give every misspelt name its type, Any

    def __getattr__(name: str) -> Any:
        """Import a public name that needs MPI the first time it is used."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value


def __dir__() -> list[str]:
    """List the lazy names too, as if they had been imported."""
    return sorted(set(globals()) | set(__all__))
