"""The service loop's channel in one process: a waiting client on the master serves its own requests."""

from __future__ import annotations

import itertools
import sys
import threading
import time

from mpi4py import MPI

from mpilock.link import Link
from mpilock.server.loop import Channel
from mpilock.server.protocol import Op, Reply


def in_a_thread(function):
    """Run ``function`` in a thread other than the main one (help() never serves in the main thread)."""
    result, errors = [], []

    def run():
        try:
            result.append(function())
        except BaseException as err:  # reported by the test
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "hung"
    if errors:
        raise errors[0]
    return result[0]


def test_a_waiting_client_serves_its_request_without_a_server_thread():
    comm = MPI.COMM_SELF.Dup()
    channel = Channel(comm)  # never added to the service loop: no server thread polls it
    link = Link(comm, 0, channel.help)
    link.open_box(0)
    numbers = itertools.count(1)  # sequence numbers of slot 0 (the rank's first thread)
    try:
        seq = link.send(Op.WRITE, next(numbers))
        assert channel.help() is False  # never in the main thread: a signal handler's exception could strike
        with channel._lock:  # as if the server thread were polling: help() must not wait for it
            assert in_a_thread(channel.help) is False
        answer = in_a_thread(lambda: link.wait(seq, deadline=time.monotonic() + 10))
        assert answer is not None and answer.code == Reply.GRANTED and answer.seq == seq
        assert channel.core.holds(0) and channel.core.state().write_hold[0] == seq

        link.send(Op.RELEASE, next(numbers))
        answer = in_a_thread(lambda: link.wait(link.send(Op.CLOSE, next(numbers)), deadline=time.monotonic() + 10))
        assert answer is not None and answer.code == Reply.CLOSED
        assert not channel.core.holds(0)  # the release was served before the close
        assert channel.finished.is_set()
        assert channel.poll() is False  # a finished channel's receive is freed: polling it is a no-op
    finally:
        link.finish()
        comm.Free()


def test_without_help_the_client_only_waits():
    comm = MPI.COMM_SELF.Dup()
    channel = Channel(comm)
    link = Link(comm, 0)  # a rank other than the master: nothing to help with
    link.open_box(0)
    numbers = itertools.count(1)
    try:
        seq = link.send(Op.READ, next(numbers))
        assert link.wait(seq, deadline=time.monotonic() + 0.05) is None  # nobody serves it
        assert channel.poll() is True  # the server's poll does
        answer = link.wait(seq, deadline=time.monotonic() + 10)
        assert answer is not None and answer.code == Reply.GRANTED
        link.send(Op.RELEASE, next(numbers))
        seq = link.send(Op.CLOSE, next(numbers))
        assert link.wait(seq, deadline=0.0) is None  # posts the receive the CLOSED reply needs (MPI self-sends)
        while not channel.finished.is_set():
            channel.poll()
        assert link.wait(seq, deadline=time.monotonic() + 10) is not None
    finally:
        link.finish()
        comm.Free()


def test_the_master_lowers_the_switch_interval_until_its_last_controller_closes():
    from mpilock import sync
    from mpilock.server.loop import SWITCH_INTERVAL
    from mpilock.server.native import LOOP

    saved = sys.getswitchinterval()
    lowered = min(saved, SWITCH_INTERVAL) if LOOP == "python" else saved  # the native loop needs no GIL hand-offs
    first, second = sync(MPI.COMM_SELF), sync(MPI.COMM_SELF)
    try:
        with first.write():  # served by this thread's own wait (help) or the server thread
            assert sys.getswitchinterval() == lowered
        first.close()
        assert sys.getswitchinterval() == lowered  # the second is still open
        time.sleep(0.05)  # the server thread backs off to 1 ms sleeps; this thread's close serves itself
        second.close()
    finally:
        first.close()
        second.close()
    assert sys.getswitchinterval() == saved  # back as soon as close() returns


def test_the_server_settles_only_when_no_client_thread_polls():
    """settle() (before the server thread sleeps) must not race a master's client thread that polls (help()).

    Both touch the replies in flight and the set of ranks to poke; iterating the set while
    a helper adds to it killed the Python loop's server thread (32 ranks x 4 threads stress).
    """
    comm = MPI.COMM_SELF.Dup()
    channel = Channel(comm)
    link = Link(comm, 0, channel.help)
    link.open_box(0)
    try:
        seq = link.send(Op.WRITE, 1)
        answer = in_a_thread(lambda: link.wait(seq, deadline=time.monotonic() + 10))
        assert answer is not None and answer.code == Reply.GRANTED
        channel._replied.add(0)
        with channel._lock:  # a client thread is polling
            assert channel.settle() is False
            assert channel._replied == {0}  # left alone
        assert channel.settle() is True
        assert channel._replied == set()
        link.send(Op.RELEASE, 2)
        in_a_thread(lambda: link.wait(link.send(Op.CLOSE, 3), deadline=time.monotonic() + 10))
    finally:
        link.finish()
        comm.Free()
