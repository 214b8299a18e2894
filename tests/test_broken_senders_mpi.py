"""Broken senders: a malformed, misaligned or truncated request is refused to its sender alone; the server serves on.

A rank plays a broken client: it sends raw bytes on the controller's private
communicator and reads its ERROR reply raw.  Afterwards every rank still takes
the lock in turn and the lock table ends empty: the server thread did not die
and the job was not aborted.  The loop is the one the environment chooses
(``MPILOCK_NATIVE=0`` for the pure-Python one).
"""

from __future__ import annotations

import logging
import time
from array import array
from logging import WARNING

import pytest
from mpi4py import MPI
from mpitools import mpi

import mpilock
from mpilock.server import wire
from mpilock.server.protocol import (
    HEADER,
    MAX_MESSAGE,
    TAG_FRAMES,
    TAG_PAYLOAD,
    TAG_REPLY,
    TAG_REPLY_PAYLOAD,
    TAG_REQUEST,
    Flag,
    Op,
    Reply,
)

COMM = MPI.COMM_WORLD
SEQ = 4242
"""The sequence number of every broken request (the client's own are far below)."""


def header(op: int = Op.STATS, seq: int = SEQ, arg: int = 0, nbytes: int = 0, keys: int = 0) -> bytes:
    """A request header: ``code, seq, arg, aux, nbytes, site, keys``."""
    return HEADER.pack(op, seq, arg, 0, nbytes, 0, keys)


def send_raw(ctrl: mpilock.WindowController, *messages: tuple[int, bytes]) -> list[MPI.Request]:
    """Send ``(tag, bytes)`` messages to the server as they are; return the sends."""
    comm = ctrl._private
    return [comm.Isend([data, MPI.BYTE], ctrl.master, tag) for tag, data in messages]


def read_reply(ctrl: mpilock.WindowController, timeout: float = 20.0) -> tuple[int, int, str]:
    """Receive one reply raw: ``(code, seq, text)``."""
    comm = ctrl._private
    buffer = bytearray(HEADER.size)
    request = comm.Irecv([buffer, MPI.BYTE], ctrl.master, TAG_REPLY)
    deadline = time.monotonic() + timeout
    while not request.Test():
        if time.monotonic() > deadline:
            request.Cancel()
            request.Wait()
            pytest.fail("the server sent no reply")
        time.sleep(0.001)
    code, seq, _, _, nbytes, _, _ = HEADER.unpack(buffer)
    text = bytearray(max(nbytes, 0))
    if nbytes > 0:
        comm.Recv([text, MPI.BYTE], ctrl.master, TAG_REPLY_PAYLOAD)
    return code, seq, text.decode()


def everyone_still_locks(ctrl: mpilock.WindowController) -> None:
    """Every rank takes the write lock in turn; the lock table ends empty."""
    for rank in range(COMM.size):
        COMM.barrier()
        if ctrl.rank == rank:
            with ctrl.write(timeout=10):
                pass
            with ctrl.write("after", timeout=10):
                pass
    COMM.barrier()
    deadline = time.monotonic() + 10
    while (table := ctrl.locks()) and time.monotonic() < deadline:  # releases are fire-and-forget
        time.sleep(0.01)
    assert not table, table


def refused(
    ctrl: mpilock.WindowController,
    caplog: pytest.LogCaptureFixture,
    sender: int,
    messages: list[tuple[int, bytes]],
    expected: str,
    seq: int = SEQ,
) -> None:
    """``sender`` sends ``messages``; it gets an ERROR reply with ``seq`` whose text holds ``expected``.

    The master logged the refusal as a warning on ``mpilock.server``, and
    everyone locks afterwards.
    """
    caplog.set_level(logging.WARNING, logger="mpilock.server")
    COMM.barrier()
    if ctrl.rank == sender:
        sends = send_raw(ctrl, *messages)
        code, got, text = read_reply(ctrl)
        MPI.Request.Waitall(sends)
        assert (code, got) == (Reply.ERROR, seq), (code, got, text)
        assert expected in text, text
    COMM.barrier()
    if ctrl.rank == ctrl.master:
        warnings = [r.getMessage() for r in caplog.records if r.name == "mpilock.server" and r.levelno >= WARNING]
        assert any(f"from rank {sender}: " in w and expected in w for w in warnings), warnings
    everyone_still_locks(ctrl)


@mpi(min_ranks=2)
def test_a_message_shorter_than_the_header_is_refused_with_seq_0(ctrl, caplog, mpi_ranks):
    refused(ctrl, caplog, 1, [(TAG_REQUEST, b"\1" * 20)], "a request message of 20 bytes, shorter than the 56", seq=0)


@mpi(min_ranks=2)
@pytest.mark.parametrize("sender", [1, 0])
def test_a_message_longer_than_the_receive_is_refused(ctrl, caplog, mpi_ranks, sender):
    """MPI reports the truncation; the first 256 bytes hold the header.  From another rank and the master's client."""
    message = header(Op.WRITE) + b"x" * (MAX_MESSAGE + 44 - HEADER.size)
    refused(ctrl, caplog, sender, [(TAG_REQUEST, message)], f"a request message longer than {MAX_MESSAGE} bytes")


@mpi(min_ranks=2)
@pytest.mark.parametrize(
    ("keys", "area", "expected"),
    [
        (-1, b"", "the header announces a key area of -1 bytes, 0 arrived after it"),
        (100, b"\3abcdefghi", "the header announces a key area of 100 bytes, 10 arrived after it"),
        (9, b"\3abc", "the header announces a key area of 9 bytes, 4 arrived after it"),
    ],
)
def test_a_key_length_that_does_not_fit_is_refused(ctrl, caplog, mpi_ranks, keys, area, expected):
    refused(ctrl, caplog, 1, [(TAG_REQUEST, header(Op.WRITE, keys=keys) + area)], expected)


@mpi(min_ranks=2)
def test_a_malformed_multi_key_area_is_refused(ctrl, caplog, mpi_ranks):
    area = b"\5\0ab"  # a key of 5 bytes announced, 2 there
    message = header(Op.WRITE, arg=Flag.MULTI, keys=len(area)) + area
    refused(ctrl, caplog, 1, [(TAG_REQUEST, message)], "truncated key list")


@mpi(min_ranks=2)
@pytest.mark.parametrize("op", [99, -3, 2**33 + Op.WRITE])  # the last is WRITE in its low 32 bits
def test_an_unknown_op_is_refused(ctrl, caplog, mpi_ranks, op):
    refused(ctrl, caplog, 1, [(TAG_REQUEST, header(op))], f"unknown op {op} from rank 1")


@mpi(min_ranks=2)
@pytest.mark.parametrize(("announced", "sent"), [(100, 10), (10, 100)])
def test_a_payload_of_another_size_than_announced_is_taken_whole_and_refused(ctrl, caplog, mpi_ranks, announced, sent):
    messages = [(TAG_REQUEST, header(nbytes=announced)), (TAG_PAYLOAD, b"p" * sent)]
    refused(ctrl, caplog, 1, messages, f"payload of {sent} bytes, header announced {announced}")


@mpi(min_ranks=2)
def test_an_absurd_payload_size_is_refused_at_once(ctrl, caplog, mpi_ranks):
    nbytes = 2 * wire.MAX_PAYLOAD
    start = time.monotonic()
    refused(ctrl, caplog, 1, [(TAG_REQUEST, header(nbytes=nbytes))], f"a payload of {nbytes} bytes, over the limit")
    assert time.monotonic() - start < wire.PAYLOAD_GRACE


GRACE = 3.0


@mpi(min_ranks=2)
def test_a_payload_that_never_comes_is_refused_after_the_grace_and_others_are_served_meanwhile(
    ctrl, caplog, mpi_ranks, monkeypatch
):
    monkeypatch.setattr(wire, "PAYLOAD_GRACE", GRACE)  # read by the master's server when the header arrives
    caplog.set_level(logging.WARNING, logger="mpilock.server")
    COMM.barrier()
    if ctrl.rank == 1:
        start = time.monotonic()
        sends = send_raw(ctrl, (TAG_REQUEST, header(nbytes=10)))
        COMM.barrier()
        code, seq, text = read_reply(ctrl)
        waited = time.monotonic() - start
        MPI.Request.Waitall(sends)
        assert (code, seq) == (Reply.ERROR, SEQ), (code, seq, text)
        assert f"a payload of 10 bytes, which did not arrive within {GRACE:g} s" in text, text
        assert waited >= GRACE * 0.9, waited
        with ctrl.write(timeout=10):  # the rank's later requests go ahead
            pass
    else:
        COMM.barrier()
        start = time.monotonic()
        with ctrl.write(timeout=10):  # served while rank 1's payload is awaited
            pass
        # Not ``ctrl.locks() == []`` here: from 3 ranks on another non-sender may hold the lock by now
        # (everyone_still_locks checks that the table ends empty).
        assert time.monotonic() - start < GRACE * 0.8
    COMM.barrier()
    if ctrl.rank == ctrl.master:
        assert any("did not arrive within" in r.getMessage() for r in caplog.records), caplog.records
    everyone_still_locks(ctrl)


def write_lock(ctrl: mpilock.WindowController, timeout: float) -> float:
    """Take and release the write lock from one call site; return when it was granted."""
    with ctrl.write(timeout=timeout):
        return time.monotonic()


@mpi(min_ranks=2)
def test_a_payload_held_back_holds_back_only_its_own_ranks_later_requests(ctrl, caplog, mpi_ranks, monkeypatch):
    """Rank 1's write, sent after its header whose payload never comes, is granted only after the grace.

    The write's call site is named to the server beforehand: its name travels as a ``SITE`` request's
    payload, which the server would take as the payload the broken header announced.
    """
    monkeypatch.setattr(wire, "PAYLOAD_GRACE", GRACE)
    caplog.set_level(logging.WARNING, logger="mpilock.server")
    COMM.barrier()
    if ctrl.rank == 1:
        write_lock(ctrl, timeout=10)
        start = time.monotonic()
        sends = send_raw(ctrl, (TAG_REQUEST, header(nbytes=10)))
        granted = write_lock(ctrl, timeout=30)  # its ERROR reply (seq 4242) comes first and is dropped by the client
        waited = granted - start
        MPI.Request.Waitall(sends)
        assert waited >= GRACE * 0.9, waited
    COMM.barrier()
    if ctrl.rank == ctrl.master:
        warnings = [r.getMessage() for r in caplog.records if r.name == "mpilock.server" and r.levelno >= WARNING]
        expected = f"a payload of 10 bytes, which did not arrive within {GRACE:g} s"
        assert len(warnings) == 1 and expected in warnings[0], warnings
    everyone_still_locks(ctrl)


def table(*words: int) -> bytes:
    """A frame table: ``chunk``, then the frame sizes, as int64."""
    return array("q", words).tobytes()


@mpi(min_ranks=2)
@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        ([b"abc"], "frame table of 3 bytes, header announced 2 frames (24 bytes)"),
        ([table(1000, 5)], "frame table of 16 bytes, header announced 2 frames (24 bytes)"),
        ([table(1000, 5, -7)], "bad frame table [1000, 5, -7] (chunk, then the frame sizes) for 2 frames"),
        ([table(0, 5, 3)], "bad frame table [0, 5, 3]"),
        ([table(1000, 5, 3), b"12345", b"1234"], "frame message of 4 bytes, the frame table announced 3"),
        ([table(2, 5, 3), b"12", b"123456"], "frame message of 6 bytes, the frame table announced 2"),
    ],
)
def test_garbage_frames_are_refused(ctrl, caplog, mpi_ranks, frames, expected):
    messages = [(TAG_REQUEST, header(nbytes=-2))] + [(TAG_FRAMES, f) for f in frames]
    refused(ctrl, caplog, 1, messages, expected)


@mpi(min_ranks=2)
def test_frames_after_a_refused_table_are_drained_and_a_good_payload_follows(ctrl, mpi_ranks):
    """The pieces a bad frame message leaves behind are dropped, so the rank's next fence payload arrives whole.

    The frames go first: once the header is there, so are they (MPICH delivers a sender's messages in order).
    """
    COMM.barrier()
    if ctrl.rank == 1:
        frames = [table(2, 6), b"123", b"45", b"45"]  # 3 pieces of 2 bytes announced; the first has 3
        sends = send_raw(ctrl, *[(TAG_FRAMES, f) for f in frames], (TAG_REQUEST, header(nbytes=-1)))
        code, seq, text = read_reply(ctrl)
        MPI.Request.Waitall(sends)
        assert (code, seq) == (Reply.ERROR, SEQ) and "frame message of 3 bytes" in text, text
    COMM.barrier()
    with ctrl.single_write(rank=1) as fence:
        fence.guard()
        fence.share(bytes(range(200)) * 50)
    assert fence.collect() == bytes(range(200)) * 50
    everyone_still_locks(ctrl)


@mpi(min_ranks=2)
def test_a_dedicated_server_refuses_a_broken_sender_and_serves_on(mpi_ranks):
    """The dedicated server rank runs the same loop in its main thread: the refusal does not end its block."""
    with mpilock.dedicated(server=0) as ctrl:
        if ctrl is not None and ctrl.rank == 0:
            sends = send_raw(ctrl, (TAG_REQUEST, header(nbytes=10)), (TAG_PAYLOAD, b"p" * 100))
            code, seq, text = read_reply(ctrl)
            MPI.Request.Waitall(sends)
            assert (code, seq) == (Reply.ERROR, SEQ) and "payload of 100 bytes, header announced 10" in text, text
        if ctrl is not None:
            ctrl.comm.barrier()
            with ctrl.write(timeout=10):
                pass
    COMM.barrier()
