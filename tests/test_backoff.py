"""The polling backoff: eager after activity, gentle when another thread holds the GIL."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from mpilock.server.backoff import OVERRUN, SHORTEST_SLEEP, Backoff


@contextmanager
def gil_held_elsewhere(switch_interval: float = 0.005) -> Iterator[None]:
    """Run a pure-Python loop in another thread, so this thread waits ``switch_interval`` for the GIL."""
    stop = threading.Event()
    started = threading.Event()

    def compute() -> None:
        started.set()
        value = 0
        while not stop.is_set():
            for i in range(1000):
                value = (value * 31 + i) % 1000003

    saved = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval)
    thread = threading.Thread(target=compute, daemon=True)
    thread.start()
    started.wait()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(saved)


def test_spins_after_activity_without_contention():
    def hundred_pauses() -> tuple[bool, float]:
        backoff = Backoff(spin=10.0, longest=0.001, contended=0.0005)
        start = time.monotonic()
        for _ in range(100):
            backoff.pause()
        return backoff.contended, time.monotonic() - start

    # A stray 0.2 ms stall of this process (another VM, an interrupt) reads as contention: best of 3.
    runs = [hundred_pauses() for _ in range(3)]
    assert any(not contended for contended, _ in runs)
    assert min(seconds for _, seconds in runs) < 0.002  # 100 sched_yields, not 100 sleeps of >= 20 µs each


def test_gil_held_elsewhere_stops_the_spin_and_raises_the_shortest_sleep():
    backoff = Backoff(spin=10.0, longest=0.002, contended=0.0005)
    with gil_held_elsewhere():
        give_up = time.monotonic() + 1.0
        while not backoff.contended and time.monotonic() < give_up:
            backoff.pause()  # the first pause that waits a switch interval for the GIL ends the spin
        assert backoff.contended
        backoff.reset()  # activity while contended: no spinning, sleep at least the contended floor
        assert backoff._hot_until == 0.0
        assert backoff._sleep == pytest.approx(0.0005)
    for _ in range(20):  # the other thread is gone: pauses are on time again
        backoff.pause()
        if not backoff.contended:
            break
    assert not backoff.contended
    backoff.reset()
    assert backoff._sleep == SHORTEST_SLEEP
    assert backoff._hot_until > time.monotonic()


def test_without_a_contended_floor_the_backoff_ignores_overruns():
    backoff = Backoff(spin=0.0, longest=0.001)
    with gil_held_elsewhere():
        start = time.monotonic()
        backoff.pause()
        assert time.monotonic() - start > OVERRUN  # it did overrun
    assert not backoff.contended
    backoff.reset()
    assert backoff._sleep == SHORTEST_SLEEP
