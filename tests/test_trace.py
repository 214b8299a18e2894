"""Unit tests of mpilock.trace.Recorder (no MPI): fed the way the server thread feeds it."""

import json

import pytest

from mpilock.plot import load_spans
from mpilock.server import Flag, LockCore, Op, Reply, Send
from mpilock.server import keys as keyspace
from mpilock.trace import Recorder, percentile, percentiles


def granted(rank, seq=1):
    return [Send(rank, Reply.GRANTED, seq)]


def spans(recorder):
    return [e for e in recorder.chrome_trace()["traceEvents"] if e["ph"] == "X"]


def simple(recorder):
    """(rank, name, start ms, end ms) of every span, rounded."""
    return [
        (e["tid"], e["name"], round(e["ts"] / 1000, 6), round((e["ts"] + e["dur"]) / 1000, 6)) for e in spans(recorder)
    ]


def reader_then_writer(keep_events=True):
    """Rank 0 reads from t=0 to t=3; rank 1 asks to write at t=1, is granted at t=3, releases at t=4."""
    rec = Recorder(2, keep_events=keep_events)
    rec.observe(0.0, 0, Op.READ, 1, granted(0))
    rec.observe(1.0, 1, Op.WRITE, 1, [])
    rec.observe(3.0, 0, Op.RELEASE, 2, granted(1))
    rec.observe(4.0, 1, Op.RELEASE, 2, [])
    return rec


def test_counts_waits_and_hold_times():
    ranks = reader_then_writer().stats()["ranks"]
    assert [(r["rank"], r["reads"], r["writes"]) for r in ranks] == [(0, 1, 0), (1, 0, 1)]
    assert ranks[0]["wait_p50"] == ranks[0]["wait_max"] == 0.0
    assert ranks[1]["wait_p50"] == ranks[1]["wait_p99"] == ranks[1]["wait_max"] == pytest.approx(2.0)
    assert ranks[0]["hold_total"] == pytest.approx(3.0)
    assert ranks[1]["hold_total"] == pytest.approx(1.0)


def test_wait_percentiles():
    rec = Recorder(2)
    now = 0.0
    for i, wait in enumerate([w / 1000 for w in range(100, -1, -1)]):  # 101 waits, 100 ms down to 0 ms
        rec.observe(now, 0, Op.WRITE, 2 * i + 1, [])
        now += wait
        # the grant comes with the replies to another rank's request, as when its release frees the lock
        rec.observe(now, 1, Op.RELEASE, i + 1, granted(0, 2 * i + 1))
        now += 0.001
        rec.observe(now, 0, Op.RELEASE, 2 * i + 2, [])
    stats = rec.stats()["ranks"][0]
    assert stats["writes"] == 101
    assert stats["wait_p50"] == pytest.approx(0.050)
    assert stats["wait_p90"] == pytest.approx(0.090)
    assert stats["wait_p99"] == pytest.approx(0.099)
    assert stats["wait_max"] == pytest.approx(0.100)
    assert stats["hold_total"] == pytest.approx(0.101)
    assert rec.stats()["ranks"][1]["hold_total"] == 0.0


def test_percentiles_interpolate_between_the_samples_around_them():
    assert percentiles([4.0, 1.0, 3.0, 2.0], (0, 50, 100)) == [1.0, 2.5, 4.0]
    assert percentile([0.0, 10.0], 25) == 2.5
    assert percentile(range(101), 90) == 90  # a sample at every percentile: no interpolation
    assert percentiles([], (50, 99)) == [0.0, 0.0]
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("q", [-1, 101, 50.5, True])
def test_percentiles_reject_what_is_not_an_integer_percent(q):
    with pytest.raises(ValueError, match="integers from 0 to 100"):
        percentile([1.0, 2.0], q)


def test_stats_of_an_idle_recorder_are_zero():
    ranks = Recorder(3).stats()["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1, 2]
    assert all(r["reads"] == r["writes"] == 0 and r["wait_max"] == r["hold_total"] == 0.0 for r in ranks)


def test_chrome_trace_spans():
    assert sorted(simple(reader_then_writer())) == [
        (0, "read", 0.0, 3000.0),
        (0, "wait read", 0.0, 0.0),
        (1, "wait write", 1000.0, 3000.0),
        (1, "write", 3000.0, 4000.0),
    ]
    document = reader_then_writer().chrome_trace()
    assert document["displayTimeUnit"] == "ms"
    meta = {e["tid"]: e["args"]["name"] for e in document["traceEvents"] if e["name"] == "thread_name"}
    assert meta == {0: "rank 0", 1: "rank 1"}
    assert all(e["cat"] in ("wait", "hold") for e in spans(reader_then_writer()))
    json.dumps(document)  # plain JSON types only


def test_times_are_relative_to_the_first_event():
    rec = Recorder(1, keep_events=True)
    rec.observe(1000.5, 0, Op.WRITE, 1, granted(0))
    rec.observe(1000.75, 0, Op.RELEASE, 2, [])
    assert simple(rec) == [(0, "wait write", 0.0, 0.0), (0, "write", 0.0, 250.0)]


def test_without_keep_events_only_statistics():
    rec = reader_then_writer(keep_events=False)
    assert rec.events == []
    assert spans(rec) == []
    assert rec.stats()["ranks"][1]["writes"] == 1


def test_fence_begin_counts_as_a_write():
    rec = Recorder(1, keep_events=True)
    rec.observe(0.0, 0, Op.FENCE_BEGIN, 1, granted(0))
    rec.observe(0.5, 0, Op.RELEASE, 2, [])
    assert rec.stats()["ranks"][0]["writes"] == 1
    assert [s[1] for s in simple(rec)] == ["wait write", "write"]


def test_cancelled_wait_ends_at_the_cancel_and_counts_nothing():
    rec = Recorder(2, keep_events=True)
    rec.observe(0.0, 0, Op.WRITE, 1, granted(0))
    rec.observe(0.001, 1, Op.READ, 1, [])
    rec.observe(0.003, 1, Op.CANCEL, 1, [Send(1, Reply.CANCELLED, 1)])
    rec.observe(0.004, 0, Op.RELEASE, 2, [])
    assert (1, "wait read", 1.0, 3.0) in simple(rec)
    assert rec.stats()["ranks"][1]["reads"] == 0


def test_denied_try_ends_its_wait_at_once():
    rec = Recorder(2, keep_events=True)
    rec.observe(0.0, 0, Op.WRITE, 1, granted(0))
    rec.observe(0.001, 1, Op.READ, 1, [Send(1, Reply.DENIED, 1)])
    rec.observe(0.005, 0, Op.RELEASE, 2, [])
    rec.observe(0.009, 1, Op.READ, 2, granted(1, 2))
    rec.observe(0.010, 1, Op.RELEASE, 3, [])
    assert sorted(simple(rec)) == [
        (0, "wait write", 0.0, 0.0),
        (0, "write", 0.0, 5.0),
        (1, "read", 9.0, 10.0),
        (1, "wait read", 1.0, 1.0),  # ends when denied, not at the next request (9 ms)
        (1, "wait read", 9.0, 9.0),
    ]
    assert rec.stats()["ranks"][1]["reads"] == 1


def test_close_while_holding_ends_the_hold():
    rec = Recorder(1, keep_events=True)
    rec.observe(0.0, 0, Op.WRITE, 1, granted(0))
    rec.observe(0.002, 0, Op.CLOSE, 2, [Send(0, Reply.CLOSED, 2)])
    assert simple(rec)[-1] == (0, "write", 0.0, 2.0)
    assert rec.stats()["ranks"][0]["hold_total"] == pytest.approx(0.002)


def test_write_chrome_trace(tmp_path):
    path = tmp_path / "trace.json"
    reader_then_writer().write_chrome_trace(path)
    assert json.loads(path.read_text()) == reader_then_writer().chrome_trace()


def test_driven_by_the_real_core_writes_never_overlap():
    """Feed a LockCore and the recorder a scripted run, as the server loop does."""
    core, rec = LockCore(3), Recorder(3, keep_events=True)
    seqs = [0, 0, 0]
    now = 0.0

    def request(rank, op, arg=0):
        nonlocal now
        now += 0.001
        seqs[rank] += 1
        replies = core.handle(rank, op, seqs[rank], arg)
        rec.observe(now, rank, op, seqs[rank], replies)
        return replies

    request(0, Op.READ)
    request(1, Op.READ)
    request(2, Op.WRITE)  # waits for both readers
    request(0, Op.RELEASE)
    assert request(0, Op.READ, Flag.TRY)[0].code == Reply.DENIED  # writer waiting: readers refused
    request(1, Op.RELEASE)  # the writer gets it
    request(0, Op.READ)  # waits for the writer
    request(1, Op.WRITE)
    request(2, Op.RELEASE)  # writer priority: rank 1 writes before rank 0 reads
    request(1, Op.RELEASE)
    request(0, Op.RELEASE)
    for rank in range(3):
        request(rank, Op.CLOSE)
    assert core.closed
    counts = [(r["reads"], r["writes"]) for r in rec.stats()["ranks"]]
    assert counts == [(2, 0), (1, 1), (0, 1)]
    holds = [(e["tid"], e["name"], e["ts"], e["ts"] + e["dur"]) for e in spans(rec) if e["cat"] == "hold"]
    assert len(holds) == 5
    for i, a in enumerate(holds):
        for b in holds[i + 1 :]:
            if "write" in (a[1], b[1]):
                assert a[3] <= b[2] + 1e-6 or b[3] <= a[2] + 1e-6, (a, b)
    order = [name for _, name, _, _ in sorted(holds, key=lambda h: h[2])]
    assert order == ["read", "read", "write", "write", "read"]


def test_plot_reads_back_what_the_recorder_wrote():
    found, labels = load_spans(reader_then_writer().chrome_trace())
    assert labels == {0: "rank 0", 1: "rank 1"}
    assert sorted((s.rank, s.state, s.start, s.duration) for s in found) == [
        (0, "reading", 0.0, 3000.0),
        (0, "waiting", 0.0, 0.0),
        (1, "waiting", 1000.0, 2000.0),
        (1, "writing", 3000.0, 1000.0),
    ]


def test_plot_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from mpilock.plot import main

    trace = tmp_path / "trace.json"
    reader_then_writer().write_chrome_trace(trace)
    out = tmp_path / "timeline.png"
    assert main([str(trace), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wait_samples_are_bounded_but_counts_and_max_are_not():
    from mpilock.server.events import Send
    from mpilock.server.protocol import Reply
    from mpilock.trace import WAIT_SAMPLES

    recorder = Recorder(2)
    now = 0.0
    for i in range(WAIT_SAMPLES + 500):
        recorder.observe(now, 1, Op.WRITE, i, [Send(1, Reply.GRANTED, i)])  # rank 1 writes
        recorder.observe(now, 0, Op.READ, i, [])  # rank 0 queues behind it
        now += 5.0 if i == 0 else 0.001
        recorder.observe(now, 1, Op.RELEASE, i, [Send(0, Reply.GRANTED, i)])  # and gets the lock
        recorder.observe(now, 0, Op.RELEASE, i, [])
    assert len(recorder.waits[0]) == WAIT_SAMPLES
    stats = recorder.stats()["ranks"][0]
    assert stats["reads"] == WAIT_SAMPLES + 500
    assert stats["wait_max"] == 5.0  # the first wait fell out of the samples, not out of the max
    assert abs(stats["wait_p99"] - 0.001) < 1e-9


def lock_key(recorder, key, wait, now=0.0):
    """Rank 0 writes ``key`` (after waiting ``wait`` seconds for rank 1's release if > 0), holds it 1 s."""
    key = keyspace.encode(key)
    if wait:
        recorder.observe(now, 0, Op.WRITE, 1, [], (key,))
        recorder.observe(now + wait, 1, Op.RELEASE, 1, [Send(0, Reply.GRANTED, 1)])
    else:
        recorder.observe(now, 0, Op.WRITE, 1, [Send(0, Reply.GRANTED, 1)], (key,))
    recorder.observe(now + wait + 1.0, 0, Op.RELEASE, 2, [], (key,))


def test_a_full_key_table_makes_room_by_merging_the_keys_nobody_waited_for():
    from mpilock.trace import STATS_KEYS

    rec = Recorder(2)
    for i in range(STATS_KEYS):
        lock_key(rec, f"s{i}", 0.0)
    lock_key(rec, "s1", 0.5)  # waited for now: it keeps its place
    lock_key(rec, "new", 0.25)
    lock_key(rec, "newer", 0.0)
    stats = rec.stats()
    names = [k["key"] for k in stats["keys"]]
    assert names == ["'s1'", "'new'", "'newer'"]  # most total wait first; the unwaited keys made room
    assert stats["keys"][0]["writes"] == 2
    rest = stats["other_keys"]
    assert (rest["writes"], rest["hold_total"], rest["wait_total"]) == (STATS_KEYS - 1, STATS_KEYS - 1.0, 0.0)


def test_a_key_table_full_of_waited_keys_sends_new_keys_to_the_rest():
    from mpilock.trace import STATS_KEYS

    rec = Recorder(2)
    for i in range(STATS_KEYS):
        lock_key(rec, f"w{i}", 0.001)
    for i in range(3 * STATS_KEYS):  # each must not rescan the table (it did: ~0.2 ms per new key)
        lock_key(rec, f"f{i}", 0.0)
    stats = rec.stats()
    assert {k["key"] for k in stats["keys"]} == {f"'w{i}'" for i in range(STATS_KEYS)}
    assert stats["other_keys"]["writes"] == 3 * STATS_KEYS
    assert sum(k["writes"] for k in stats["keys"]) + stats["other_keys"]["writes"] == 4 * STATS_KEYS
    assert not rec._unwaited


def test_threads_of_a_rank_get_stats_rows_and_trace_rows_of_their_own():
    """Two threads of rank 0 (slots 0 and 1) read the same key at once: each its own span, row and counts."""
    rec = Recorder(2, keep_events=True)
    rec.thread_name = lambda rank, slot: {(0, 0): "MainThread", (0, 1): "pool-1"}.get((rank, slot))
    key = keyspace.encode("k")
    worker = 1 << 40 | 1  # slot 1's first request
    rec.observe(0.0, 0, Op.READ, 1, granted(0, 1), (key,))
    rec.observe(1.0, 0, Op.READ, worker, [Send(0, Reply.GRANTED, worker)], (key,))
    rec.observe(2.0, 0, Op.RELEASE, 2, [], (key,))
    rec.observe(4.0, 0, Op.RELEASE, worker + 1, [], (key,))
    rec.observe(5.0, 1, Op.WRITE, 1, granted(1, 1), (key,))
    threads = rec.stats()["threads"]
    rows = [(t["rank"], t["slot"], t["thread"], t["reads"], t["writes"], t["hold_total"]) for t in threads]
    assert rows == [(0, 0, "MainThread", 1, 0, 2.0), (0, 1, "pool-1", 1, 0, 3.0), (1, 0, "thread 0", 0, 1, 0.0)]
    assert rec.stats()["ranks"][0]["reads"] == 2  # the rank's row sums its threads
    document = rec.chrome_trace()
    names = {e["tid"]: e["args"]["name"] for e in document["traceEvents"] if e["name"] == "thread_name"}
    assert names[0] == "rank 0" and names[2] == "rank 0 / pool-1"
    held = sorted((e["tid"], e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6) for e in spans(rec) if e["name"] == "read")
    assert held == [(0, 0.0, 2.0), (2, 1.0, 4.0)]  # overlapping reads of one key, one per thread
