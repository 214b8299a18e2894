"""Deadlock detection: the wait-for graph of every lock one process serves.

Pure state, no MPI.  A *node* is one thread of one rank: ``(world rank,
thread token)`` once the rank said hello (``Op.HELLO``), so that the locks a
thread holds in one controller and the request it waits for in another are
seen as one node.  Each :class:`~mpilock.server.core.LockCore` served by the
process joins the same :class:`WaitGraph`.

A queued request waits for the holders that block it ("hard" waits) and,
under writer priority or arrival order, for the request queued just ahead of
it, which waits in turn for the ones ahead ("soft" waits).  Soft waits alone
never close a cycle here: queues are ordered by one priority per request
(:mod:`.locks`), and whenever a request that could be waited for is queued,
:meth:`WaitGraph.order` moves every queued request ahead of the requests
that wait for locks its thread holds, as PostgreSQL's lock manager
rearranges its wait queues for "soft" deadlocks.  Every wait then points at
an earlier request, and the only cycles left are cycles of holders: real
deadlocks.  Only a thread that holds a lock can be waited for, so nothing of
this runs unless such a thread queues a request (or a writer queues behind
waiting readers that hold locks).  The request that closes a cycle is the
victim (PostgreSQL likewise refuses the waiter that detects the deadlock): it
is refused with the cycle's description, as if it had never been made.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from .events import Send
    from .locks import Request

Node = tuple[int, int]
"""A thread of a rank: ``(world rank, thread token)``, or a stand-in unique to one core before hello."""


class Core(Protocol):
    """What the graph needs of a lock core.

    The ``rank`` of a core here is its *holder* id: a thread of a rank
    (:mod:`.holders`; slot 0 of rank ``r`` is id ``r``).
    """

    name: str
    nodes: list[Node]
    held: list[int]
    waiting: dict[int, Request]
    outbox: list[Send]

    def blockers(self, rank: int, hard: bool = False) -> Iterator[tuple[int, bytes, bool]]:
        """``(rank waited for, key, queued ahead)`` for ``rank``'s queued request (holders only if ``hard``)."""

    def reprioritize(self, request: Request, priority: float) -> None:
        """Move queued ``request`` to ``priority`` in every queue it waits in."""

    def describe_hold(self, rank: int, key: bytes, queued: bool) -> str:
        """Say what ``rank`` holds of ``key`` (or how it is queued ahead for it), for a message."""

    def describe_wait(self, rank: int, key: bytes) -> str:
        """Say what ``rank``'s queued request asks for on ``key``, for a message."""

    def name_of(self, holder: int) -> str:
        """Name ``holder`` for a message: ``rank 2``, ``rank 2 / worker`` for a rank's other threads."""


class Edge(NamedTuple):
    """``waiter`` (rank ``waiter_rank`` of ``core``) waits for ``target`` (rank ``target_rank``) on ``key``."""

    waiter: Node
    target: Node
    core: Core
    waiter_rank: int
    target_rank: int
    key: bytes
    queued: bool
    """The target is a request queued ahead, not a holder."""


class WaitGraph:
    """The cores of one process, the nodes behind their ranks, and the priorities of their queued requests."""

    def __init__(self) -> None:
        """Start with no core."""
        self._members: dict[Node, list[tuple[Core, int]]] = {}
        self._arrivals = 0.0
        self._reordered: dict[tuple[Core, bytes], None] = {}
        """The queues the last :meth:`order` changed, in the order it changed them (a dict: a set's order is not)."""

    def join(self, core: Core) -> None:
        """Add every rank of ``core`` under its current node."""
        for rank, node in enumerate(core.nodes):
            self._members.setdefault(node, []).append((core, rank))

    def add(self, core: Core, holder: int) -> None:
        """Add ``core``'s new holder ``holder`` under its current node (a thread first seen)."""
        self._members.setdefault(core.nodes[holder], []).append((core, holder))

    def leave(self, core: Core) -> None:
        """Forget ``core`` (it closed)."""
        for node in set(core.nodes):
            left = [(c, r) for c, r in self._members.get(node, []) if c is not core]
            if left:
                self._members[node] = left
            else:
                self._members.pop(node, None)

    def move(self, core: Core, rank: int, node: Node) -> None:
        """Rank ``rank`` of ``core`` said it is thread ``node``."""
        old = core.nodes[rank]
        if old == node:
            return
        entries = [(c, r) for c, r in self._members.get(old, []) if not (c is core and r == rank)]
        if entries:
            self._members[old] = entries
        else:
            self._members.pop(old, None)
        core.nodes[rank] = node
        self._members.setdefault(node, []).append((core, rank))

    def next_arrival(self) -> float:
        """Return the priority of a newly queued writer (or request for a bounded key): after every queued one."""
        self._arrivals += 1.0
        return self._arrivals

    def holds_anything(self, node: Node) -> bool:
        """Whether the thread ``node`` holds a lock in any core."""
        members = self._members.get(node)
        if members is None:
            return False
        if len(members) == 1:
            core, rank = members[0]
            return core.held[rank] > 0
        return any(core.held[rank] for core, rank in members)

    def edges(self, node: Node, hard: bool = False) -> Iterator[Edge]:
        """Yield the waits of ``node``'s queued request (holders only if ``hard``; it waits in one place at a time)."""
        for core, rank in self._members.get(node, ()):
            for target_rank, key, queued in core.blockers(rank, hard):
                yield Edge(node, core.nodes[target_rank], core, rank, target_rank, key, queued)

    def find_cycle(self, start: Node, hard: bool = False) -> list[Edge] | None:
        """Return a cycle of waits through ``start`` (its edges, starting at ``start``), or ``None``."""
        path: list[Edge] = []
        pending: list[Iterator[Edge]] = [self.edges(start, hard)]
        seen = {start}
        while pending:
            edge = next(pending[-1], None)
            if edge is None:
                pending.pop()
                if path:
                    path.pop()
                continue
            if edge.target == start:
                return [*path, edge]
            if edge.target in seen:
                continue
            seen.add(edge.target)
            path.append(edge)
            pending.append(self.edges(edge.target, hard))
        return None

    def order(self, start: Node) -> list[Edge] | None:
        """After ``start`` queued a request: return a deadlock it closed, or reorder the queues so none can form.

        A deadlock is a cycle of waits for holders ("hard" waits).  Without
        one, every queued request is given a priority ahead of the queued
        requests that wait (directly or through others) for locks its thread
        holds, keeping its place otherwise; then every wait, for a holder or
        for a request queued ahead, points at an earlier request, so no cycle
        of waits can form.  :meth:`reordered` tells which queues moved.
        """
        self._reordered = {}
        cycle = self.find_cycle(start, hard=True)
        if cycle is not None:
            return cycle
        queued: dict[Node, tuple[Core, Request]] = {}
        for node, members in self._members.items():
            for core, rank in members:
                request = core.waiting.get(rank)
                if request is not None:
                    queued[node] = (core, request)
        # Insertion-ordered dicts, not sets, here and below: the order of this walk decides the priorities
        # given, and the native core (server/_native.c) must give the same ones.
        waits_for: dict[Node, dict[Node, None]] = {}
        count = dict.fromkeys(queued, 0)  # how many queued nodes wait for each one
        for node, (core, request) in queued.items():
            blocking = (core.nodes[r] for r, _, _ in core.blockers(request.rank, hard=True))
            targets = dict.fromkeys(n for n in blocking if n in queued and n != node)
            waits_for[node] = targets
            for target in targets:
                count[target] += 1
        ready = [node for node, n in count.items() if n == 0]
        limit = dict.fromkeys(queued, math.inf)  # the priority each one must stay ahead of
        while ready:  # the waiters before what they wait for (the wait graph of holders has no cycle now)
            node = ready.pop()
            core, request = queued[node]
            if request.priority >= limit[node] < math.inf:
                priority = self._just_before(limit[node], queued)
                if priority is None:  # the gaps ran out of float precision: space the priorities out, again
                    self._renumber(queued)
                    return self.order(start)
                core.reprioritize(request, priority)
                self._reordered.update(dict.fromkeys((core, key) for key in request.keys))
            for target in waits_for[node]:
                limit[target] = min(limit[target], request.priority)
                count[target] -= 1
                if count[target] == 0:
                    ready.append(target)
        return None

    def reordered(self) -> list[tuple[Core, bytes]]:
        """Return the queues (core, key) that the last :meth:`order` changed, in the order it changed them."""
        return list(self._reordered)

    def _just_before(self, limit: float, queued: dict[Node, tuple[Core, Request]]) -> float | None:
        """Return a priority just ahead of ``limit``: behind every other queued request ahead of it (None: no room)."""
        below = max((r.priority for _, r in queued.values() if r.priority < limit), default=limit - 2.0)
        middle = (below + limit) / 2
        return middle if below < middle < limit else None

    def _renumber(self, queued: dict[Node, tuple[Core, Request]]) -> None:
        ordered = sorted((item for item in queued.values() if item[1].priority < math.inf), key=lambda i: i[1].priority)
        for position, (core, request) in enumerate(ordered, 1):
            core.reprioritize(request, 4.0 * position)
        self._arrivals = 4.0 * len(ordered) + 4.0


def rank_name(core: Core, holder: int) -> str:
    """``rank 2``, with its world rank if that differs, and ``/ <thread name>`` for a rank's other threads."""
    return core.name_of(holder)


def describe_cycle(cycle: list[Edge]) -> str:
    """``deadlock: rank 1 holds write 'a' (taken at sim.py:42) and waits for write 'b' ...; ...``."""
    several = len({id(edge.core) for edge in cycle}) > 1
    parts = []
    for i, edge in enumerate(cycle):
        came = cycle[i - 1]  # the wait that points at this edge's waiter
        holds = came.core.describe_hold(came.target_rank, came.key, came.queued)
        waits = edge.core.describe_wait(edge.waiter_rank, edge.key)
        where = f" of {came.core.name}" if several else ""
        parts.append(f"{rank_name(edge.core, edge.waiter_rank)} {holds}{where} and {waits}")
    victim = cycle[0]
    return (
        "deadlock: " + "; ".join(parts) + f". Refused the request that closed the cycle "
        f"({rank_name(victim.core, victim.waiter_rank)}'s); it holds nothing new, release and retry"
    )
