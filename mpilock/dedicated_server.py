"""Dedicated-server mode: one rank does nothing but serve the lock.

With the default :func:`mpilock.sync` the lock server is a thread inside the
master's application, so it competes with the application for the GIL.  A
program that can spare a rank gives it to the server instead: grant latency
then no longer depends on what any application thread does::

    from mpilock import dedicated

    with dedicated() as ctrl:          # collective over COMM_WORLD
        if ctrl is not None:           # every rank but the server (rank 0)
            with ctrl.write():
                ...
            ctrl.comm.Barrier()        # ctrl.comm: the ranks that use the lock

On the server rank ``with`` serves until every other rank has left its block
(closing its controller), then hands ``None`` to the body.  This is the idiom
of ``mpi4py.futures.MPICommExecutor``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

from mpi4py import MPI

from .checks import check_args
from .controller import WindowController
from .server import wake
from .server.loop import Channel, serve_until_closed
from .trace import Recorder


@contextmanager
def dedicated(
    comm: MPI.Intracomm | None = None, server: int = 0, *, trace: str | os.PathLike[str] | None = None
) -> Iterator[WindowController | None]:
    """Let rank ``server`` of ``comm`` serve the lock and give the others a controller; collective.

    The controller's ranks, ``rank``/``size``/``comm`` and ``single_write(rank=)``
    count only the ranks that use the lock (``comm`` without the server);
    ``single_write()`` defaults to the first of them.  ``trace`` as for
    :func:`mpilock.sync` (the server rank writes it).
    """
    user, server, path = check_args(comm, server, trace)
    if user.Get_size() < 2:
        raise ValueError("dedicated() needs at least 2 ranks: one serves, the others lock")
    private = user.Dup()
    is_server = user.Get_rank() == server
    # Splitting an intracommunicator gives an intracommunicator (mpi4py's stubs say Comm).
    clients = cast(MPI.Intracomm, user.Split(MPI.UNDEFINED if is_server else 0, user.Get_rank()))
    if is_server:
        recorder = Recorder(private.Get_size(), keep_events=path is not None)
        members = [r for r in range(private.Get_size()) if r != server]
        channel = Channel(private, recorder, members=members, name="the dedicated controller")
        connection = wake.connect(private, server, wake.serve_word())
        channel.set_wakeable(connection.everyone)
        if connection.words is not None:
            channel.set_client_words(connection.words)
        serve_until_closed(channel)
        if path is not None:
            recorder.write_chrome_trace(path)
        private.Free()
        yield None
        return
    ctrl = WindowController._client_of(private, server, clients, wake.connect(private, server, None))
    yield ctrl  # an exception leaves ctrl open: see WindowController.__exit__
    ctrl.close()
    clients.Free()
