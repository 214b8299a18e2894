"""mpilock: a readers-writer lock for the ranks of an MPI program.

Many readers at once, one writer at a time, writers first.  The lock lives on
a server thread on the master rank; ranks talk to it with two-sided messages
on a private duplicate of the communicator::

    from mpilock import sync

    ctrl = sync()
    with ctrl.write():
        ...  # only this rank writes now
"""

from .controller import Lock, WindowController, sync
from .dedicated import dedicated
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
from .fence import Fence
from .table import LockTable

__all__ = [
    "ClosedError",
    "ConfigError",
    "DeadlockError",
    "Fence",
    "FenceError",
    "FencedSignal",
    "LimitError",
    "Lock",
    "LockTable",
    "LockTimeout",
    "MpilockError",
    "WindowController",
    "dedicated",
    "sync",
]
__version__ = "1.1.0"
