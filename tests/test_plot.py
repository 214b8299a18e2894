"""``python -m mpilock.plot`` on traces of keyed locks (no MPI): readable with hundreds of keys."""

import json

import pytest

from mpilock.plot import OTHER_KEYS, TOP_KEYS, key_summary, load_spans, main, plot_timeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KEYS = 300


def event(rank, name, start_ms, duration_ms, key=None):
    span = {"name": name, "cat": "wait" if name.startswith("wait") else "hold", "ph": "X", "pid": 0, "tid": rank}
    span["ts"], span["dur"] = start_ms * 1000, duration_ms * 1000
    if key is not None:
        span["args"] = {"key": key}
    return span


def many_keys_trace():
    """4 ranks, 300 keys: key 'k{i}' made its rank wait i µs (so 'k299' waited most), then was held 0.5 ms."""
    events = [{"name": "thread_name", "ph": "M", "pid": 0, "tid": r, "args": {"name": f"rank {r}"}} for r in range(4)]
    clock = [0.0] * 4
    for i in range(KEYS):
        rank, key = i % 4, f"'k{i}'"
        kind = ["write", "read", "write", "slot"][i % 4]
        if kind == "slot":
            key = f"bounded 'k{i}'"
        events.append(event(rank, f"wait {kind}", clock[rank], i / 1000, key))
        clock[rank] += i / 1000
        events.append(event(rank, kind, clock[rank], 0.5, key))
        clock[rank] += 0.5
    events.append(event(0, "wait write", clock[0], 0.0))  # the default lock, too
    events.append(event(0, "write", clock[0], 1.0))
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def test_spans_carry_their_key_and_bounded_places_are_holds():
    spans, labels = load_spans(many_keys_trace())
    assert len(spans) == 2 * KEYS + 2 and labels[3] == "rank 3"
    assert {s.state for s in spans} == {"waiting", "reading", "writing", "slot"}
    assert spans[0].key == "'k0'" and spans[-1].key is None
    assert {s.key for s in spans if s.state == "slot"} == {f"bounded 'k{i}'" for i in range(3, KEYS, 4)}


def test_the_summary_keeps_the_top_keys_by_total_wait_and_merges_the_rest():
    spans, _ = load_spans(many_keys_trace())
    rows = key_summary(spans)
    assert len(rows) == TOP_KEYS + 1
    top = [f"'k{i}'" if i % 4 != 3 else f"bounded 'k{i}'" for i in range(KEYS - 1, KEYS - 1 - TOP_KEYS, -1)]
    assert [r.key for r in rows[:-1]] == top
    assert rows[0].wait_total == pytest.approx(0.299) and rows[0].holds == 1
    rest = rows[-1]
    assert rest.key == OTHER_KEYS and rest.keys == KEYS - TOP_KEYS
    assert rest.holds == KEYS - TOP_KEYS  # every key is accounted for; the default lock is not a key
    assert rest.waits == KEYS - TOP_KEYS - 1  # key 'k0' waited 0 ms: an immediate grant is no wait
    assert sum(r.wait_total for r in rows) == pytest.approx(sum(range(KEYS)) / 1000)
    assert key_summary(spans, top=KEYS) == sorted(key_summary(spans, top=KEYS), key=lambda r: -r.wait_total)
    assert all(r.key != OTHER_KEYS for r in key_summary(spans, top=KEYS))


def test_three_hundred_keys_plot_with_at_most_top_plus_one_key_entries(tmp_path):
    pytest.importorskip("matplotlib")
    spans, labels = load_spans(many_keys_trace())
    png = tmp_path / "keys.png"
    drawn = plot_timeline(spans, png, labels=labels)
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert len(drawn.keys) == TOP_KEYS + 1 and drawn.keys[-1] == OTHER_KEYS
    key_entries = [label for label in drawn.labels if "waited" in label]
    assert len(key_entries) == TOP_KEYS + 1
    assert key_entries[0].startswith("bounded 'k299'") and key_entries[-1].startswith(f"{KEYS - TOP_KEYS} other keys")
    assert len(drawn.labels) <= 3 + TOP_KEYS + 1  # waiting, the default lock's read and write, the keys
    assert any("default lock" in label for label in drawn.labels)


def test_a_trace_without_keys_plots_as_before(tmp_path):
    pytest.importorskip("matplotlib")
    trace = {"traceEvents": [event(0, "wait read", 0, 0), event(0, "read", 0, 3), event(1, "write", 3, 1)]}
    spans, _ = load_spans(trace)
    drawn = plot_timeline(spans, tmp_path / "old.png")
    assert drawn.keys == []
    assert drawn.labels == ["waiting for a lock (1)", "read lock held (1)", "write lock held (1)"]
    assert key_summary(spans) == []


def test_the_command_prints_the_top_keys(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(many_keys_trace()))
    assert main([str(path), "-o", str(tmp_path / "t.png"), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert f"{KEYS} keys; the 3 with the most total wait:" in out
    table = out.split("most total wait:\n")[1].splitlines()
    assert len(table) == 2 + 3 + 1  # header, rule, 3 keys, the merged rest
    assert table[2].startswith("bounded 'k299'") and table[-1].startswith(f"(other keys) ({KEYS - 3} keys)")
    assert main([str(path), "-o", str(tmp_path / "u.png"), "--top", "0"]) == 1
