"""The native ``Sender``: a client's header-only request, marked sent and started in one C call.

``mpilock.link.Link.send`` uses it for every request without a payload when
the native module is built for mpi4py's MPI (``MPILOCK_NATIVE=0`` keeps the
Python path).  These tests check what the server relies on: the message is
the header ``HEADER`` packs (payload size 0) followed by the key area, the
mark is set, the buffer stays valid until the send completes, bad arguments
are refused before anything is sent, and after ``finish()`` nothing goes out.
"""

from __future__ import annotations

import pytest
from mpi4py import MPI
from mpitools import mpi

from mpilock.server.native_core import NATIVE
from mpilock.server.protocol import HEADER, MAX_MESSAGE, TAG_REQUEST, Op

pytestmark = pytest.mark.skipif(NATIVE is None, reason="the native module is not built")


@pytest.fixture
def comm():
    """A communicator of this test's own (every rank sends to itself on it)."""
    own = MPI.COMM_WORLD.Dup()
    yield own
    own.Free()


def _received(comm: MPI.Intracomm, source: int) -> bytes:
    """Receive one request message from ``source``, whole."""
    status = MPI.Status()
    buffer = bytearray(MAX_MESSAGE)
    comm.Recv([buffer, MPI.BYTE], source, TAG_REQUEST, status)
    return bytes(buffer[: status.Get_count(MPI.BYTE)])


@mpi()
def test_a_request_arrives_as_header_and_key_area_and_is_marked(comm: MPI.Intracomm) -> None:
    rank = comm.Get_rank()
    sender = NATIVE.Sender(comm.py2f(), rank)  # to itself: every rank checks its own messages
    mark = [0, False, 0]
    assert sender.send(int(Op.WRITE), (3 << 40) | 17, 5, 6, 9, b"key-\x00", mark, 1) is True
    assert mark == [0, True, 0]
    assert sender.send(int(Op.RELEASE), 18, 0, 0, 0, b"", None, 0) is True
    first, second = _received(comm, rank), _received(comm, rank)
    assert HEADER.unpack_from(first) == (int(Op.WRITE), (3 << 40) | 17, 5, 6, 0, 9, 5)
    assert first[HEADER.size :] == b"key-\x00"
    assert HEADER.unpack_from(second) == (int(Op.RELEASE), 18, 0, 0, 0, 0, 0) and len(second) == HEADER.size
    assert sender.reap() == 0  # both sends completed once received
    sender.finish()
    assert sender.send(int(Op.RELEASE), 19, 0, 0, 0, b"", mark, 0) is False
    assert mark[0] == 0  # refused: not marked either
    assert not comm.Iprobe(rank, TAG_REQUEST)


@mpi()
def test_many_requests_in_flight_keep_their_buffers(comm: MPI.Intracomm) -> None:
    """More sends than one reap keeps arrive intact, in order (their buffers are reused only once sent)."""
    rank = comm.Get_rank()
    sender = NATIVE.Sender(comm.py2f(), rank)
    count = 300
    for n in range(count):
        sender.send(int(Op.READ), n, 0, 0, 0, n.to_bytes(4, "little"), None, 0)
    for n in range(count):
        message = _received(comm, rank)
        assert HEADER.unpack_from(message)[1] == n
        assert message[HEADER.size :] == n.to_bytes(4, "little")
    sender.finish()


@mpi()
def test_bad_arguments_are_refused_and_send_nothing(comm: MPI.Intracomm) -> None:
    rank = comm.Get_rank()
    sender = NATIVE.Sender(comm.py2f(), rank)
    with pytest.raises(ValueError, match="key area"):
        sender.send(1, 1, 0, 0, 0, bytes(MAX_MESSAGE), None, 0)
    with pytest.raises(ValueError, match="key area"):
        sender.send(1, 1, 0, 0, 0, "text", None, 0)
    with pytest.raises(ValueError, match="mark"):
        sender.send(1, 1, 0, 0, 0, b"", [False], 1)
    with pytest.raises(TypeError, match="8 arguments"):
        sender.send(1, 1, 0)
    with pytest.raises(ValueError, match="not a communicator"):
        NATIVE.Sender(comm.py2f(), comm.Get_size())
    assert not comm.Iprobe(rank, TAG_REQUEST)
    sender.finish()
