"""Code written for mpilock 1.x/2.x, in its own test style: the controller's surface.

Run serially (``python -m unittest discover -s tests/compat``) and under MPI
(``mpiexec -n 4 python -m unittest discover -s tests/compat``).  Every test
ends with collective work before it asserts, so a failing assertion on one
rank cannot leave the others waiting in a collective call.
"""

import unittest

import mpi4py.MPI as mpi

import mpilock
from mpilock import Fence, FencedSignal, WindowController, sync

rank = mpi.COMM_WORLD.Get_rank()
size = mpi.COMM_WORLD.Get_size()


class TestWindowControllerSurface(unittest.TestCase):
    def setUp(self):
        self.controller = sync()
        self.controller._comm.Barrier()

    def tearDown(self):
        self.controller.close()
        self.controller._comm.Barrier()  # _comm is the user's communicator: still usable after close()

    def test_private_attributes_of_1x(self):
        c = self.controller
        self.assertIs(mpi.COMM_WORLD, c._comm)
        self.assertEqual(rank, c._rank)
        self.assertEqual(size, c._size)
        self.assertEqual(0, c._master)

    def test_rank(self):
        self.assertEqual(mpi.COMM_WORLD.Get_rank(), self.controller.rank, "rank")

    def test_master(self):
        self.assertEqual(0, self.controller.master, "master")
        if size > 1:
            with sync(master=1) as ctrl:
                self.assertEqual(1, ctrl.master, "non default master")
        else:  # 1.x/2.x accepted a master outside the communicator; here it is a ValueError on every rank
            with self.assertRaises(ValueError):
                sync(master=1)

    def test_closed(self):
        self.assertFalse(self.controller.closed, "closed")
        with self.controller as ctrl:
            self.assertFalse(ctrl.closed, "closed")
        self.assertTrue(ctrl.closed, "closed")

    def test_controller_context(self):
        with self.controller as ctrl:
            self.assertEqual(self.controller, ctrl, "context return value")
        self.assertTrue(self.controller.closed, "context didn't close controller")

    def test_close_twice(self):
        self.controller.close()
        self.controller.close()
        self.assertTrue(self.controller.closed)

    def test_closed_controller_refuses_locks(self):
        self.controller.close()
        with self.assertRaises(mpilock.ClosedError):
            with self.controller.write():
                pass

    def test_pump_arguments_of_2x_are_accepted(self):
        for ctrl in (
            sync(mpi.COMM_WORLD, 0, False, 0.5),  # positional, as in 2.x
            sync(pump=True, pump_interval=1e-3),
            WindowController(mpi.COMM_WORLD, 0, None, 1e-4),
            WindowController(comm=None, master=0, pump=False),
        ):
            with ctrl:
                with ctrl.write():
                    pass
                with ctrl.read():
                    pass
                ctrl._comm.Barrier()
            self.assertTrue(ctrl.closed)

    def test_controller_on_another_communicator(self):
        comm = mpi.COMM_WORLD.Split(rank % 2, rank)
        ctrl = sync(comm, comm.Get_size() - 1)
        with ctrl.write():
            pass
        ctrl.close()
        ctrl._comm.Barrier()
        self.assertIs(comm, ctrl._comm)
        self.assertEqual(comm.Get_size() - 1, ctrl.master)
        comm.Free()


class TestModuleSurface(unittest.TestCase):
    def test_names_of_1x(self):
        for name in ("sync", "WindowController", "Fence", "FencedSignal"):
            self.assertIn(name, mpilock.__all__)
            self.assertTrue(hasattr(mpilock, name), name)

    def test_fenced_signal_is_an_exception(self):
        self.assertTrue(issubclass(FencedSignal, Exception))
        self.assertTrue(isinstance(Fence, type))

    def test_version(self):
        self.assertIsInstance(mpilock.__version__, str)
        self.assertRegex(mpilock.__version__, r"^\d+\.\d+")


if __name__ == "__main__":
    unittest.main()
