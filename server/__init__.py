"""The mpilock lock server: a pure lock-manager core and the MPI loop that drives it.

Installed as ``mpilock.server``.  :mod:`.core` and :mod:`.fences` import no MPI
and can be tested in one process; :mod:`.loop` is the background thread.
"""

from .core import LockCore
from .events import ProtocolError, Send
from .protocol import FenceStatus, Flag, Op, Reply

__all__ = ["FenceStatus", "Flag", "LockCore", "Op", "ProtocolError", "Reply", "Send"]
