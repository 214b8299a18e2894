"""mpilock: a readers-writer lock for the ranks of an MPI program.

Many readers at once, one writer at a time, writers first.  The lock lives on
a server thread on the master rank; ranks talk to it with two-sided messages
on a private duplicate of the communicator::

    from mpilock import sync

    ctrl = sync()
    with ctrl.write():
        ...  # only this rank writes now
"""

from ._version import __version__ as __version__
from .controller import WindowController, sync
from .dedicated import dedicated
from .errors import ClosedError, FencedSignal, FenceError, LockTimeout, MpilockError
from .fence import Fence

__all__ = [
    "ClosedError",
    "Fence",
    "FenceError",
    "FencedSignal",
    "LockTimeout",
    "MpilockError",
    "WindowController",
    "dedicated",
    "sync",
]
