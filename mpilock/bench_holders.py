"""How the lock cores scale with the number of holders (threads of ranks): ``python -m mpilock.bench_holders``.

No MPI: each core (the Python :class:`~.server.core.LockCore` and the C one
behind :class:`~.server.native_core.NativeLockCore`) is driven directly.  N
holders are spread as 2 ranks x N/2 thread slots; every holder says hello and
takes and releases the default lock once, then random holders do uncontended
acquire+release pairs.  Reported: server time per request (the native core
through its Python wrapper, so that both carry the same call cost) and memory
per idle holder (``tracemalloc`` for the Python core; for the C core the bytes
it counts for its holders: per-holder arrays, the holder map, graph nodes).
"""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from .server.protocol import SLOT_SHIFT, Op

RANKS = 2
SIZES = (2, 100, 10_000, 100_000)


def _make(kind: str) -> Any:
    if kind == "python":
        from .server.core import LockCore

        return LockCore(RANKS)
    from .server.native_core import NativeLockCore

    return NativeLockCore(RANKS)


def measure(kind: str, holders: int, pairs: int = 20_000, seed: int = 1) -> tuple[float, float]:
    """Return (seconds per request, bytes per idle holder) of core ``kind`` (``python``/``native``) with ``holders``."""
    per_rank = max(1, holders // RANKS)
    threads = [(rank, slot) for slot in range(per_rank) for rank in range(RANKS)]
    seqs = [slot << SLOT_SHIFT for _, slot in threads]
    gc.collect()
    python = kind == "python"
    if python:
        tracemalloc.start()
    core = _make(kind)
    handle: Callable[..., Any] = core.handle
    before = tracemalloc.get_traced_memory()[0] if python else 0
    for i, (rank, _) in enumerate(threads):  # hello, one lock taken once
        handle(rank, Op.HELLO, seqs[i] | 1, rank, 1000 + i)
        handle(rank, Op.READ, seqs[i] | 2)
        handle(rank, Op.RELEASE, seqs[i] | 3)
    if python:
        memory = (tracemalloc.get_traced_memory()[0] - before) / len(threads)
        tracemalloc.stop()
    else:
        memory = core.native.holder_bytes / len(threads)
    rng = random.Random(seed)
    picks = [rng.randrange(len(threads)) for _ in range(pairs)]
    ranks = [threads[i][0] for i in picks]
    asks = [seqs[i] | 4 for i in picks]
    read, release = Op.READ, Op.RELEASE
    start = time.perf_counter()
    for rank, seq in zip(ranks, asks, strict=True):
        handle(rank, read, seq)
        handle(rank, release, seq)
    elapsed = time.perf_counter() - start
    return elapsed / (2 * pairs), memory


def main() -> None:
    """Print the table for both cores (the native one if built)."""
    from .server.native_core import available

    kinds = ["python", "native"] if available() else ["python"]
    print(f"{'core':8} {'holders':>8} {'us/request':>11} {'bytes/holder':>13}")
    for kind in kinds:
        for n in SIZES:
            per_request, memory = measure(kind, n)
            print(f"{kind:8} {n:>8,} {per_request * 1e6:>11.3f} {memory:>13,.0f}")


if __name__ == "__main__":
    main()
