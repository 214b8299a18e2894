"""Code written for mpilock 1.x/2.x, in its own test style: read, write and nesting.

No test trusts a sleep alone: a rank that must wait for another's lock
learns from a barrier that the other holds it, and the test compares when
the lock was granted with when the holder let go, as wall-clock times of
one machine.
"""

import itertools
import os
import tempfile
import time
import unittest

import mpi4py.MPI as mpi

from mpilock import sync

rank = mpi.COMM_WORLD.Get_rank()
size = mpi.COMM_WORLD.Get_size()

multi_rank = unittest.skipIf(size < 2, "requires at least 2 MPI ranks")


def all_arrive(comm, seconds):
    """Barrier with a deadline: whether every rank arrived within ``seconds`` (all ranks finish it)."""
    request = comm.Ibarrier()
    deadline = time.time() + seconds
    while not request.Test():
        if time.time() > deadline:
            return False
        time.sleep(0.001)
    return True


class TestLocking(unittest.TestCase):
    def setUp(self):
        self.controller = sync()
        self.controller._comm.Barrier()

    def tearDown(self):
        self.controller.close()
        self.controller._comm.Barrier()

    def test_single_read_lock(self):
        if rank == size - 1:
            with self.controller.read() as target:
                self.assertIsNone(target)

    def test_single_write_lock(self):
        if rank == 0:
            with self.controller.write() as target:
                self.assertIsNone(target)

    def test_concurrent_read_locks(self):
        # Every rank reaches a barrier while holding the read lock: only possible if reads are shared.
        c = self.controller
        request = None
        with c.read():
            request = c._comm.Ibarrier()
            deadline = time.time() + 10
            while not request.Test() and time.time() < deadline:
                time.sleep(0.001)
            together = request.Test()
        if not together:
            request.Wait()
        everyone = c._comm.allreduce(together, op=mpi.LAND)
        self.assertTrue(everyone, "read locks were not held at the same time")

    def test_write_locks_run_serially(self):
        c = self.controller
        with c.write():
            start = time.time()
            time.sleep(0.05)
            end = time.time()
        spans = sorted(c._comm.allgather((start, end)))
        c._comm.Barrier()
        for (_, first_end), (second_start, _) in itertools.pairwise(spans):
            self.assertLessEqual(first_end, second_start, spans)

    @multi_rank
    def test_write_blocks_reads(self):
        c = self.controller
        released = granted = None
        if rank == 0:
            with c.write():
                c._comm.Barrier()  # the others start asking only while rank 0 holds the lock
                time.sleep(0.1)
                released = time.time()
        else:
            c._comm.Barrier()
            with c.read():
                granted = time.time()
        times = c._comm.allgather((released, granted))
        for _, other in times[1:]:
            self.assertGreaterEqual(other, times[0][0], "read lock granted while a write lock was held")

    @multi_rank
    def test_reads_block_write(self):
        c = self.controller
        released = granted = None
        if rank == 0:
            with c.read():
                c._comm.Barrier()  # the others start asking only while rank 0 holds the lock
                time.sleep(0.1)
                released = time.time()
        else:
            c._comm.Barrier()
            with c.write():
                granted = time.time()
        times = c._comm.allgather((released, granted))
        for _, other in times[1:]:
            self.assertGreaterEqual(other, times[0][0], "write lock granted while a read lock was held")

    def test_write_lock_prevents_lost_updates(self):
        c = self.controller
        path = None
        if rank == 0:
            fd, path = tempfile.mkstemp(suffix=".txt")
            os.write(fd, b"0")
            os.close(fd)
        path = c._comm.bcast(path, root=0)
        for _ in range(5):
            with c.write():
                with open(path) as f:
                    value = int(f.read())
                time.sleep(0.001)
                with open(path, "w") as f:
                    f.write(str(value + 1))
        c._comm.Barrier()
        with c.read(), open(path) as f:
            result = int(f.read())
        c._comm.Barrier()
        if rank == 0:
            os.unlink(path)
        self.assertEqual(5 * size, result, "lost update")


class TestNestedLocks(unittest.TestCase):
    def setUp(self):
        self.controller = sync()
        self.controller._comm.Barrier()

    def tearDown(self):
        self.controller.close()
        self.controller._comm.Barrier()

    def test_double_read(self):
        with self.controller.read() as ctrl:
            with self.controller.read() as ctrl:
                pass
        self.assertIsNone(ctrl)

    def test_double_write(self):
        with self.controller.write() as ctrl:
            with self.controller.write() as ctrl:
                pass
        self.assertIsNone(ctrl)

    def test_read_write(self):
        with self.controller.read() as outer:
            with self.controller.write() as inner:
                pass
        self.assertEqual((None, None), (outer, inner))

    def test_write_read(self):
        with self.controller.write() as outer:
            with self.controller.read() as inner:
                pass
        self.assertEqual((None, None), (outer, inner))

    def test_deep_nesting(self):
        c = self.controller
        for _ in range(5):
            with c.write():
                with c.read():
                    with c.write():
                        pass
            with c.read():
                with c.write():
                    with c.read():
                        pass
        c._comm.Barrier()

    @multi_rank
    def test_nested_read_inside_write_keeps_others_out(self):
        c = self.controller
        released = granted = None
        if rank == 0:
            with c.write():
                with c.read():
                    c._comm.Barrier()
                    time.sleep(0.1)
                    released = time.time()
        else:
            c._comm.Barrier()
            with c.write():
                granted = time.time()
        times = c._comm.allgather((released, granted))
        for _, other in times[1:]:
            self.assertGreaterEqual(other, times[0][0], "write granted inside another rank's write+read")


if __name__ == "__main__":
    unittest.main()
