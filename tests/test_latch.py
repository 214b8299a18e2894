"""server/latch.py: the close()'s wait for the server that no signal handler's exception can break."""

from __future__ import annotations

import threading
import time

from mpilock.server.latch import Latch


def test_set_wakes_a_waiting_thread_and_a_wait_can_time_out():
    latch = Latch()
    assert not latch.is_set()
    start = time.monotonic()
    assert latch.wait(0.1) is False
    assert time.monotonic() - start >= 0.09
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(latch.wait()))
    waiter.start()
    time.sleep(0.05)
    assert not woke
    latch.set()
    waiter.join(5)
    assert woke == [True]
    latch.set()  # again: nothing, and it does not block
    assert latch.wait() and latch.wait(0)


def test_a_waiter_cut_between_its_acquire_and_release_breaks_neither_set_nor_other_waits():
    # What an exception from a signal handler does to threading.Event: the Condition's lock stays held and
    # the next set() (the server thread's) blocks forever. Here the gate stays shut, and nothing cares.
    latch = Latch()
    latch.set()
    assert latch._gate.acquire(timeout=1)  # a waiter took the gate and was cut before giving it back
    done = threading.Event()
    threading.Thread(target=lambda: (latch.set(), latch.wait(), done.set()), daemon=True).start()
    assert done.wait(2), "set() or wait() blocked on a gate a cut waiter left shut"


def test_clear_unsets_and_shuts_the_gate_again():
    latch = Latch()
    latch.set()
    latch.clear()
    assert not latch.is_set()
    assert latch.wait(0.06) is False  # the gate is shut: no wait returns early
    latch.clear()  # cleared twice: still unset, nothing blocks
    latch.set()
    assert latch.is_set() and latch.wait()


def test_a_wait_that_finds_the_latch_cleared_behind_the_gate_leaves_it_shut():
    latch = Latch()
    latch.set()
    latch._set = False  # cleared after the gate opened, before the waiter looked: clear() could not shut it
    assert latch.wait(0.02) is False
    assert not latch._gate.acquire(blocking=False), "the gate was left open while unset: waits would spin"
