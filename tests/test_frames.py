"""Frames in one process: what is handed over between the threads of a rank, and when it is copied."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from mpilock.fence import OUT_OF_BAND, dumps, loads
from mpilock.server import frames
from mpilock.server.frames import Frames, joined

TAG = 11


def test_owned_frames_are_kept_and_others_copied():
    comm = MPI.COMM_SELF.Dup()
    try:
        snapshot = frames.copied(b"abc" * 1000)
        pending: list = []
        owned = Frames([b"stream", snapshot], owned=True)
        assert frames.announce(comm, 0, TAG, owned, pending) == -2
        frames.isend(comm, 0, owned, pending, 100)
        assert pending == []  # nothing goes through MPI to this very rank
        kept = frames.recv(comm, 0, TAG, 2)
        assert kept.buffers[1].obj is snapshot.obj and not kept.owned  # the receiver's now, not to give again

        frames.announce(comm, 0, TAG, kept, pending)
        copy = frames.recv(comm, 0, TAG, 2)
        assert copy.buffers[1].obj is not snapshot.obj
        assert bytes(copy.buffers[1]) == b"abc" * 1000 and bytes(copy.buffers[0]) == b"stream"
    finally:
        comm.Free()


def test_owned_frames_still_read_by_a_send_are_copied():
    comm = MPI.COMM_SELF.Dup()
    try:
        memory = frames.copied(bytes(4096))
        sending = comm.Irecv([bytearray(1), MPI.BYTE], 0, 99)  # a request that will not complete by itself
        pending = [(sending, memory[:100])]  # as if a send of these frames were in flight
        owned = Frames([b"s", memory], owned=True)
        frames.announce(comm, 0, TAG, owned, pending)
        got = frames.recv(comm, 0, TAG, 2)
        assert got.buffers[1].obj is not memory.obj  # copied: another rank may still be reading it
        sending.Cancel()
        sending.Wait()
        owned = Frames([b"s", memory], owned=True)
        frames.announce(comm, 0, TAG, owned, pending)  # the request is done now
        assert frames.recv(comm, 0, TAG, 2).buffers[1].obj is memory.obj
    finally:
        comm.Free()


def test_big_buffers_go_out_of_band_as_a_snapshot():
    array = np.arange(OUT_OF_BAND, dtype=np.uint8)
    payload = dumps({"a": array, "small": np.arange(3), "text": "x"})
    assert isinstance(payload, Frames) and payload.owned
    assert len(payload.buffers) == 2 and payload.buffers[1].nbytes == array.nbytes
    array[:] = 0  # after share(): must not show
    got = loads(payload)
    assert got["a"][1] == 1 and got["a"].flags.writeable and list(got["small"]) == [0, 1, 2]
    assert np.shares_memory(got["a"], np.frombuffer(payload.buffers[1], np.uint8))  # built on the frame, no copy
    assert payload.nbytes == sum(b.nbytes for b in payload.buffers)


def test_small_objects_stay_plain_bytes():
    payload = dumps({"a": np.arange(10), "f": len})
    assert isinstance(payload, bytes)
    assert loads(payload)["f"] is len
    assert joined(Frames([b"ab", b"c"])) == b"abc"
    assert joined(None) == b"" and joined(b"x") == b"x"
