"""The client side of the wire: send requests to the master, poll for replies."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from mpi4py import MPI

from .errors import MpilockError
from .server import wire
from .server.backoff import CLIENT_SPIN_SECONDS, Backoff
from .server.frames import Payload, joined
from .server.protocol import TAG_REPLY, TAG_REQUEST, Op, Reply

_REPLIES = {int(r): r for r in Reply}
"""Reply codes to members, a dict lookup: ``Reply(code)`` costs ~0.2 µs."""


class Answer(NamedTuple):
    """A reply as received by a client (a tuple: cheap on the hot path)."""

    code: Reply
    seq: int
    arg: int
    aux: int
    payload: Payload | None


class Link:
    """One rank's connection to the lock server over the private communicator."""

    def __init__(self, comm: MPI.Intracomm, master: int, local: Callable[[], bool] | None = None) -> None:
        """Talk to the server on rank ``master`` of the private ``comm``.

        On the master itself, ``local`` polls its server once (returning
        whether it handled a request); waits call it between their tests.
        """
        self.comm = comm
        self.master = master
        self._local = local
        self._seq = 0
        self._sends: wire.Pending = []
        self._header = wire.header_buffer()
        self._recv = comm.Recv_init([self._header, MPI.INT64_T], master, TAG_REPLY)
        """One persistent receive for the replies, started when a wait needs it."""
        self._started = False

    def send(self, op: Op, arg: int = 0, aux: int = 0, payload: Payload | None = None, seq: int | None = None) -> int:
        """Send a request without waiting; return its sequence number."""
        if seq is None:
            self._seq += 1
            seq = self._seq
        sends = self._sends
        wire.isend(self.comm, self.master, TAG_REQUEST, op, seq, arg, aux, payload, sends)
        if len(sends) >= wire.REAP_AFTER:
            self._sends = wire.reap(sends)
        return seq

    def wait(self, seq: int, accept: frozenset[Reply] | None = None, deadline: float | None = None) -> Answer | None:
        """Poll for the reply to ``seq`` (with a code in ``accept``) until ``deadline``.

        Replies to other requests (left over from a withdrawn request) are
        dropped.  Returns ``None`` if ``deadline`` (``time.monotonic()``) passes.
        """
        backoff: Backoff | None = None
        recv = self._recv
        while True:
            if not self._started:
                recv.Start()
                self._started = True
            if recv.Test():
                self._started = False
                answer = self._take()
                if answer.seq == seq and (accept is None or answer.code in accept or answer.code == Reply.ERROR):
                    if answer.code == Reply.ERROR:
                        text = joined(answer.payload).decode(errors="replace")
                        raise MpilockError(f"lock server rejected the request: {text}")
                    return answer
                if backoff is not None:
                    backoff.reset()
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return None
            if self._local is not None and self._local():
                continue  # served a request here (perhaps ours): test again at once
            if backoff is None:  # created only when the reply is not there at once
                backoff = Backoff(spin=CLIENT_SPIN_SECONDS)
            backoff.pause()

    def call(self, op: Op, arg: int = 0, aux: int = 0, payload: Payload | None = None) -> Answer:
        """Send a request and wait for its reply."""
        answer = self.wait(self.send(op, arg, aux, payload))
        assert answer is not None  # no deadline
        return answer

    def _take(self) -> Answer:
        code, seq, arg, aux, nbytes = self._header.tolist()
        return Answer(_REPLIES[code], seq, arg, aux, wire.recv_payload(self.comm, self.master, nbytes))

    def reap(self) -> None:
        """Complete the sends that have finished, releasing their buffers (a shared payload's, say)."""
        self._sends = wire.reap(self._sends)

    def finish(self) -> None:
        """Complete every send still in flight (before the communicator is freed)."""
        MPI.Request.Waitall([r for r, _ in self._sends])
        self._sends.clear()
        if self._started:  # a reply nobody waits for any more (never after a CLOSE reply)
            self._recv.Cancel()
            self._recv.Wait()
            self._started = False
        self._recv.Free()
