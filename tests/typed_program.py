"""A user program written against mpilock's types; ``make lint`` checks it with ``mypy --strict``.

It is a real program, too (any rank count, ``mpiexec -n N python -m mpi4py
tests/typed_program.py``, or plainly ``python tests/typed_program.py``):
tests/test_typing.py runs it once and type-checks it and its counterpart,
tests/typed_errors.py, whose mistakes the types must catch.
"""

from __future__ import annotations

import os
import sys
import tempfile

from mpi4py import MPI

import mpilock
from mpilock import FenceError, LockTimeout, RankStats, Stats, WindowController, sync


def make_directory(ctrl: WindowController) -> str:
    """The writer makes a directory and shares its path; every rank returns it."""
    with ctrl.single_write() as fence:
        fence.guard()
        fence.share(tempfile.mkdtemp(prefix="mpilock-typed-"))
    path = fence.collect()
    assert isinstance(path, str)  # collect() is Any: the payload's type is the program's business
    return path


def append_line(ctrl: WindowController, path: str, text: str, timeout: float | None = 30.0) -> bool:
    """Append ``text`` to ``path`` under the write lock; False if the lock did not come in time."""
    try:
        with ctrl.write(timeout=timeout), open(path, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    except LockTimeout:
        return False
    return True


def count_lines(ctrl: WindowController, path: str) -> int:
    """Count the lines of ``path`` under the read lock."""
    with ctrl.read(), open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def write_header(ctrl: WindowController, path: str) -> None:
    """Start ``path`` on the writer only, through a handle: the others get ``None``."""
    with ctrl.single_write(handle=path) as target:
        if target is not None:  # str | None: only the writer holds the handle
            with open(target, "w", encoding="utf-8") as f:
                f.write("header\n")


def slowest_rank(stats: Stats) -> RankStats:
    """The rank everybody waited for: the one that held the lock longest."""
    return max(stats["ranks"], key=lambda row: row["hold_total"])


def main() -> int:
    """Every rank appends one line; rank 0 checks the count and prints what the server saw."""
    comm: MPI.Intracomm = MPI.COMM_WORLD
    ctrl = sync(comm)
    directory = make_directory(ctrl)
    path = os.path.join(directory, "lines.txt")
    write_header(ctrl, path)
    ok = append_line(ctrl, path, f"rank {ctrl.rank}")
    comm.Barrier()
    lines = count_lines(ctrl, path)
    try:
        with ctrl.single_write(rank=ctrl.size - 1) as fence:
            fence.guard()
            raise RuntimeError("the last rank's block fails on purpose")
    except RuntimeError:
        assert ctrl.rank == ctrl.size - 1
    except FenceError as err:
        writer: int | None = err.writer
        assert writer == ctrl.size - 1, writer
    row = slowest_rank(ctrl.stats())
    ctrl.close()
    comm.Barrier()
    if ctrl.rank == 0:
        os.remove(path)
        os.rmdir(directory)
        longest = f"longest hold: rank {row['rank']}"
        print(f"mpilock {mpilock.__version__}: {lines} lines from {ctrl.size} rank(s); {longest}")
    return 0 if ok and lines == ctrl.size + 1 else 1


if __name__ == "__main__":
    sys.exit(main())
