"""Keyed, multi-key and bounded locks with real MPI processes, at every rank count.

Exclusion is checked on ``time.monotonic()`` intervals recorded inside the
locks (a write of a key never overlaps another rank's hold of that key; a
bounded key never has more than ``n`` holders at once); parallelism with a
non-blocking barrier that every rank must reach while holding its lock; and
an order of events with handshakes (``wait_until_queued``), never a sleep.
"""

import json
import os
import random
import shutil
import tempfile
from contextlib import ExitStack, nullcontext
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI
from mpitools import (
    Intervals,
    KeyedIntervals,
    most_at_once,
    mpi,
    overlaps,
    site,
    wait_all_inside,
    wait_until_queued,
)

import mpilock

COMM = MPI.COMM_WORLD

KEYS = ["alpha", b"beta", ("gamma", 3), 7, None]
"""Keys of the exclusion test, in the order nested locks take them (``None``: the default lock)."""


def lock(ctrl, kind, key):
    """``ctrl.read(key)``/``ctrl.write(key)``, or of the default lock for ``None``."""
    method = ctrl.write if kind == "write" else ctrl.read
    return method() if key is None else method(key)


@mpi()
def test_writers_of_one_key_never_overlap(ctrl, mpi_ranks):
    rng = random.Random(ctrl.rank)
    spans = KeyedIntervals()
    for _ in range(24):
        at = rng.randrange(len(KEYS))
        key = KEYS[at]
        shape = rng.choice(["write", "read", "promote", "nested"])
        if shape in ("write", "read"):
            with lock(ctrl, shape, key), spans.hold(key, shape, 0.001):
                pass
        elif shape == "promote":  # write inside read of the same key: the read is released meanwhile
            with lock(ctrl, "read", key):
                with spans.hold(key, "read", 0.0005):
                    pass
                with lock(ctrl, "write", key), spans.hold(key, "write", 0.001):
                    pass
                with spans.hold(key, "read", 0.0005):
                    pass
        else:  # holding one key while taking a later one (in one global order: no deadlock)
            inner = KEYS[rng.randrange(at, len(KEYS))]
            with lock(ctrl, "write", key), spans.hold(key, "write"):
                with lock(ctrl, "write", inner), spans.hold(inner, "write", 0.001):  # local if inner == key
                    pass
    gathered = spans.gather(COMM)
    assert sum(len(s) for s in gathered.values()) >= 24 * COMM.size
    for key, key_spans in gathered.items():
        assert overlaps(key_spans) == [], key


@mpi()
def test_different_keys_are_held_at_once(ctrl, mpi_ranks):
    rank, size = ctrl.rank, ctrl.size
    with ctrl.write(f"own-{rank}"):
        # Every rank must hold its own key's write lock at the same time to pass this barrier.
        assert wait_all_inside(COMM), "writers of different keys were not admitted together"
    with ExitStack() as stack:
        stack.enter_context(ctrl.write(("pair", rank), ("pair", rank + size)))  # one multi-key request
        stack.enter_context(ctrl.write(f"own-{rank}"))
        stack.enter_context(ctrl.bounded(f"own-{(rank + 1) % size}", 1))  # a namespace apart from write("own-..")
        stack.enter_context(ctrl.bounded("everyone", size))
        stack.enter_context(ctrl.read("shared"))
        stack.enter_context(ctrl.write() if rank == 0 else nullcontext())  # the default lock is one more key
        assert wait_all_inside(COMM), "locks of different keys were not admitted together"
        table = ctrl.locks(("pair", rank), ("pair", rank + size), f"own-{rank}")
        assert {e["key"] for e in table} == {f"('pair', {rank})", f"('pair', {rank + size})", f"'own-{rank}'"}
        assert all([(h["rank"], h["mode"]) for h in e["holders"]] == [(rank, "write")] for e in table)


def hold_all(stack, spans, keys, kind):
    for key in keys:
        stack.enter_context(spans.hold(key, kind, 0.0005))


@mpi()
def test_multi_key_write_excludes_writers_of_each_key(ctrl, mpi_ranks):
    rng = random.Random(100 + ctrl.rank)
    spans = KeyedIntervals()
    for _ in range(20):
        choice = rng.randrange(5)
        with ExitStack() as stack:
            if choice == 0:
                keys = rng.sample(["a", "b", "c"], 2)
                stack.enter_context(ctrl.write(*keys))
                hold_all(stack, spans, keys, "write")
            elif choice == 1:
                keys = ["c", "a", "b"]
                stack.enter_context(ctrl.write(keys))  # a list is several keys too
                hold_all(stack, spans, keys, "write")
            elif choice == 2:
                key = rng.choice("abc")
                stack.enter_context(ctrl.write(key))
                hold_all(stack, spans, [key], "write")
            else:
                keys = rng.sample(["a", "b", "c"], 2)
                stack.enter_context(ctrl.read(*keys))
                hold_all(stack, spans, keys, "read")
    gathered = spans.gather(COMM)
    assert sorted(gathered) == ["a", "b", "c"]
    for key, key_spans in gathered.items():
        assert overlaps(key_spans) == [], key


@mpi(min_ranks=2)
def test_a_waiting_multi_key_request_holds_none_of_its_keys(ctrl, mpi_ranks):
    if ctrl.rank == 0:
        with ctrl.write("m2"):
            COMM.barrier()
            wait_until_queued(ctrl, "'m1'", 1)
            table = {e["key"]: e for e in ctrl.locks("m1", "m2")}
            assert table["'m1'"]["holders"] == []  # rank 1 waits for m2 without holding m1
            assert [w["rank"] for w in table["'m1'"]["waiters"]] == [1]
            assert table["'m1'"]["waiters"][0]["keys"] == ["'m1'", "'m2'"]
            assert [h["rank"] for h in table["'m2'"]["holders"]] == [0]
    elif ctrl.rank == 1:
        COMM.barrier()
        with ctrl.write("m1", "m2"):
            table = ctrl.locks("m1", "m2")  # granted both at once
            assert [(e["key"], [(h["rank"], h["mode"]) for h in e["holders"]]) for e in table] == [
                ("'m1'", [(1, "write")]),
                ("'m2'", [(1, "write")]),
            ]
    else:
        COMM.barrier()
    COMM.barrier()
    assert ctrl.locks() == []


@mpi()
def test_a_bounded_key_never_admits_more_than_n(ctrl, mpi_ranks):
    limits = {"io": 2, "mutex": 1}
    spans = KeyedIntervals()
    rng = random.Random(ctrl.rank)
    for i in range(24):
        key = "io" if i % 2 else "mutex"
        with ctrl.bounded(key, limits[key]), spans.hold(key, "slot", 0.001):
            if rng.random() < 0.3:
                with ctrl.bounded(key, limits[key]):  # nested on the same key: local, no second place
                    pass
    gathered = spans.gather(COMM)
    for key, limit in limits.items():
        assert len(gathered[key]) == 12 * COMM.size
        assert most_at_once(gathered[key]) <= limit, key
    with ctrl.bounded("all", COMM.size):  # and it does admit n at once
        assert wait_all_inside(COMM), "a key bounded to the number of ranks did not admit them all"


@mpi(min_ranks=3)
def test_bounded_waiters_get_in_in_arrival_order(ctrl, mpi_ranks):
    spans = Intervals()
    rank = ctrl.rank
    if rank == 0:
        with ctrl.bounded("fifo", 1):
            COMM.barrier()
            wait_until_queued(ctrl, "bounded 'fifo'", COMM.size - 1)
    else:
        COMM.barrier()
        if rank > 1:
            wait_until_queued(ctrl, "bounded 'fifo'", rank - 1)  # ranks 1, 2, ... queue in turn
        with ctrl.bounded("fifo", 1), spans.hold("slot", 0.001):
            pass
    everything = sorted(spans.gather(COMM), key=lambda s: s[2])
    assert [s[0] for s in everything] == list(range(1, COMM.size))


@mpi(min_ranks=2)
def test_timeouts_withdraw_per_key(ctrl, mpi_ranks):
    if ctrl.rank == 0:
        with ctrl.write("busy"), ctrl.bounded("slots", 1):
            COMM.barrier()  # the others try now
            COMM.barrier()  # and are done trying
            table = {e["key"]: e for e in ctrl.locks()}
            assert sorted(table) == ["'busy'", "bounded 'slots'"]  # nothing of 'free' is left
            assert all(e["waiters"] == [] for e in table.values())  # every request was withdrawn
            assert all([h["rank"] for h in e["holders"]] == [0] for e in table.values())
            COMM.barrier()  # checked: the others may queue now
    else:
        COMM.barrier()
        attempts = [
            lambda: ctrl.write("busy", timeout=0),
            lambda: ctrl.read("busy", timeout=0.05),
            lambda: ctrl.write("free", "busy", timeout=0),  # nothing of 'free' is kept either
            lambda: ctrl.write(["busy", "free"], timeout=0.05),
            lambda: ctrl.bounded("slots", 1, timeout=0),
            lambda: ctrl.bounded("slots", 1, timeout=0.05),
        ]
        for attempt in attempts:
            with pytest.raises(mpilock.LockTimeout, match=r"'busy'|'slots'"):
                with attempt():
                    pytest.fail("granted a lock that rank 0 holds")
            with ctrl.write("free", timeout=10):  # another key stays usable
                pass
        COMM.barrier()
        COMM.barrier()
    with ctrl.write("busy", timeout=10), ctrl.bounded("slots", 1, timeout=10), ctrl.write("free", timeout=10):
        pass  # free again once rank 0 let go
    COMM.barrier()
    assert ctrl.locks() == []


@mpi()
def test_fresh_keys_leave_the_table_empty(ctrl, mpi_ranks):
    rank = ctrl.rank
    for i in range(500):
        key = [f"fresh-{rank}-{i}", ("fresh", rank, i), 10**6 * rank + i, f"fresh-{rank}-{i}".encode()][i % 4]
        if i % 5 == 0:
            with ctrl.read(key):
                pass
        elif i % 5 == 1:
            with ctrl.bounded(key, 1 + i % 3):
                pass
        else:
            with ctrl.write(key):
                pass
    spans = KeyedIntervals()
    for i in range(60):  # keys every rank uses, created and dropped as ranks come and go
        with ctrl.write(("shared", i)), spans.hold(i, "write"):
            pass
    for key_spans in spans.gather(COMM).values():
        assert overlaps(key_spans) == []
    COMM.barrier()
    assert ctrl.locks() == []
    row = ctrl.stats()["ranks"][rank]
    assert (row["reads"], row["writes"], row["slots"]) == (100, 300 + 60, 100)
    if ctrl._channel is not None:  # on the master: the server's table holds no key any more
        assert ctrl._channel.core.lock_count() == 0
        assert list(ctrl._channel.core.keys) == [b""]  # only the default lock's (always there)


BAD_INPUT = [
    (lambda c: c.write({"a": 1}), TypeError, "not dict"),
    (lambda c: c.read(["ok", {}]), TypeError, "not dict"),
    (lambda c: c.write([["a"]]), TypeError, "not list"),
    (lambda c: c.write(("t", [1])), TypeError, "not list"),
    (lambda c: c.write(1.5), TypeError, "timeout="),
    (lambda c: c.read(None), TypeError, "not NoneType"),
    (lambda c: c.write(True), TypeError, "bool"),
    (lambda c: c.bounded({}, 2), TypeError, "not dict"),
    (lambda c: c.bounded("x", 2.0), TypeError, "integer"),
    (lambda c: c.bounded("x", 0), ValueError, ">= 1"),
    (lambda c: c.bounded("x", -3), ValueError, ">= 1"),
    (lambda c: c.write([]), ValueError, "empty"),
    (lambda c: c.read(set()), ValueError, "empty"),
    (lambda c: c.write("a", "a"), ValueError, "twice"),
    (lambda c: c.write(["a", "b", "a"]), ValueError, "twice"),
    (lambda c: c.read(3, np.int64(3)), ValueError, "twice"),
    (lambda c: c.write("x" * 70000), ValueError, "at most"),
]


@mpi()
def test_bad_input_fails_on_the_calling_rank_only_and_holds_nothing(ctrl, mpi_ranks):
    bad = COMM.size - 1
    spans = KeyedIntervals()
    if ctrl.rank == bad:
        for make, error, text in BAD_INPUT:
            with pytest.raises(error, match=text):
                with make(ctrl):
                    pytest.fail("a bad request was granted")
            assert ctrl._holder().held == {}
        with ctrl.write("3", 3):  # "3" and 3 are two keys, not a duplicate
            pass
    else:  # the others keep locking meanwhile
        for i in range(10):
            with ctrl.write("a", "b", "x"), spans.hold(i, "write"):
                pass
    for key_spans in spans.gather(COMM).values():
        assert overlaps(key_spans) == []
    assert ctrl.locks() == []  # the bad rank holds and awaits nothing (after the gather: nor does anyone)
    COMM.barrier()
    with ctrl.write("a", "b", "x", timeout=10), ctrl.bounded("x", 2, timeout=10):
        pass


@mpi(min_ranks=2)
def test_a_disagreeing_limit_fails_the_rank_that_disagrees_only(ctrl, mpi_ranks):
    rank, size = ctrl.rank, ctrl.size
    holder, bad, queued = 0, size - 1, list(range(1, size - 1))
    spans = Intervals()
    if rank == holder:
        with ctrl.bounded("lim", 1):
            COMM.barrier()
            COMM.recv(source=bad, tag=1)  # the bad rank had its error
            table = [e for e in ctrl.locks() if e["key"] == "bounded 'lim'"]
            assert [h["rank"] for h in table[0]["holders"]] == [holder]  # everyone kept their place
            assert [w["rank"] for w in table[0]["waiters"]] == queued
            assert table[0]["limit"] == 1
            COMM.send(None, dest=bad, tag=2)
    elif rank == bad:
        COMM.barrier()
        if queued:
            wait_until_queued(ctrl, "bounded 'lim'", queued[-1])
        with pytest.raises(mpilock.LimitError, match=rf"admits 1 holder.*rank {bad} asked for a limit of 2") as info:
            with ctrl.bounded("lim", 2):
                pytest.fail("granted a second limit")
        assert isinstance(info.value, ValueError)
        assert ctrl._holder().held == {}
        COMM.send(None, dest=holder, tag=1)
        COMM.recv(source=holder, tag=2)
        with ctrl.bounded("lim", 1), spans.hold("slot"):
            pass
    else:
        COMM.barrier()
        if rank > 1:
            wait_until_queued(ctrl, "bounded 'lim'", rank - 1)
        with ctrl.bounded("lim", 1), spans.hold("slot"):
            pass
    order = [s[0] for s in sorted(spans.gather(COMM), key=lambda s: s[2])]
    assert order == [*queued, bad]  # the queued ranks kept their places; the bad rank came last
    with ctrl.bounded("lim", 5):  # once nobody uses it, a key may take another limit
        pass


@mpi()
def test_stats_locks_and_trace_name_the_keys(mpi_ranks):
    folder = COMM.bcast(tempfile.mkdtemp(prefix="mpilock-keys-") if COMM.rank == 0 else None)
    path = os.path.join(folder, "trace.json")
    ctrl = mpilock.sync(trace=path)
    rank, size = ctrl.rank, ctrl.size
    for _ in range(3):
        with ctrl.write(f"file-{rank}.h5"):
            pass
    with ctrl.read(("grid", rank)), ctrl.bounded("fs", 2), ctrl.write():
        pass
    COMM.barrier()
    stats = ctrl.stats()
    COMM.barrier()  # before rank 0 takes 'shown'
    shown = ""
    if rank == 0:
        with ctrl.write("shown"):  # site: holder
            COMM.barrier()
            if size > 1:
                wait_until_queued(ctrl, "'shown'", 1)
            shown = str(ctrl.locks("shown"))
    else:
        COMM.barrier()
        if rank == 1:
            with ctrl.read("shown"):  # site: waiter
                pass
    COMM.barrier()
    idle = str(ctrl.locks("never-used"))
    ctrl.close()  # the master writes the trace now
    document = json.loads(Path(path).read_text()) if rank == 0 else None
    COMM.barrier()
    if rank == 0:
        shutil.rmtree(folder)

    by_key = {k["key"]: k for k in stats["keys"]}
    for r in range(size):
        assert by_key[f"'file-{r}.h5'"]["writes"] == 3
        assert by_key[f"('grid', {r})"]["reads"] == 1
    assert by_key["bounded 'fs'"]["slots"] == size
    assert len(by_key) == 2 * size + 1  # the default lock is not a named key
    assert all((row["reads"], row["writes"], row["slots"]) == (1, 4, 1) for row in stats["ranks"])
    assert idle == "no lock is held or awaited"
    if rank == 0:
        assert "'shown'" in shown and "rank 0" in shown and "write" in shown
        assert site(__file__, "holder") in shown
        if size > 1:
            assert "queued #1" in shown and "rank 1" in shown and site(__file__, "waiter") in shown
        spans = [e for e in document["traceEvents"] if e["ph"] == "X"]
        named = {e["args"]["key"] for e in spans if "args" in e}
        assert {f"'file-{r}.h5'" for r in range(size)} | {"bounded 'fs'", "'shown'"} <= named
        assert {e["name"] for e in spans if e.get("args", {}).get("key") == "bounded 'fs'"} == {"wait slot", "slot"}
        assert any("args" not in e and e["name"] == "write" for e in spans)  # the default lock's spans
