"""Code written for mpilock 1.x/2.x, in its own test style: ``single_write`` fences."""

import unittest

import mpi4py.MPI as mpi

from mpilock import FencedSignal, sync

rank = mpi.COMM_WORLD.Get_rank()
size = mpi.COMM_WORLD.Get_size()


class TestFences(unittest.TestCase):
    def setUp(self):
        self.controller = sync()
        self.controller._comm.Barrier()

    def tearDown(self):
        self.controller.close()
        self.controller._comm.Barrier()

    def test_collective_fence(self):
        spy = False
        with self.controller.single_write() as fence:
            fence.guard()
            spy = True
        if rank == 0:
            self.assertEqual(True, spy, "Master didn't enter collective write.")
        else:
            self.assertEqual(False, spy, "Non-master entered collective write.")

    def test_fence_collecting(self):
        with self.controller.single_write() as fence:
            fence.guard()
            fence.share(5)
        r = fence.collect()
        self.assertEqual(5, r, "Fenced resource was not correctly collected.")

    def test_writer_collects_the_object_itself(self):
        shared = {"path": "hello.world"}
        with self.controller.single_write() as fence:
            fence.guard()
            fence.share(shared)
        r = fence.collect()
        self.assertEqual(shared, r)
        self.assertEqual(rank == 0, r is shared)

    def test_nothing_shared_collects_none(self):
        with self.controller.single_write() as fence:
            fence.guard()
        self.assertIsNone(fence.collect())

    def test_collective_handle(self):
        essential = 5
        spy = False
        with self.controller.single_write(handle=essential) as handle:
            if handle is not None:
                spy = True
                self.assertEqual(essential, handle)
        if rank == 0:
            self.assertEqual(True, spy, "Master didn't utilize handle.")
        else:
            self.assertEqual(False, spy, "Non-master utilized handle.")

    def test_other_writer_rank(self):
        writer = size - 1
        with self.controller.single_write(rank=writer) as fence:
            fence.guard()
            fence.share(rank)
        self.assertEqual(writer, fence.collect())

    def test_guard_in_a_try_statement(self):
        entered = False
        with self.controller.single_write() as fence:
            try:
                fence.guard()
                entered = True
            except FencedSignal:
                pass
        self.assertEqual(rank == 0, entered)

    def test_fence_then_locks(self):
        c = self.controller
        with c.single_write() as fence:
            fence.guard()
            fence.share([1, 2, 3])
        data = fence.collect()
        with c.read():
            total = sum(data)
        with c.write():
            total += 1
        c._comm.Barrier()
        self.assertEqual(7, total)


if __name__ == "__main__":
    unittest.main()
