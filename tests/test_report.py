"""The long-wait report's watcher on its own (no MPI job): what it logs, and what it costs a wait that ends early."""

import logging
import pickle

from mpilock.link import Answer
from mpilock.report import LongWait
from mpilock.server.protocol import Reply
from mpilock.table import LockTable

TABLE = [
    {
        "key": "'a'",
        "limit": 0,
        "holders": [{"rank": 0, "mode": "write", "held": 2.0, "site": "sim.py:42"}],
        "waiters": [{"rank": 1, "mode": "write", "waited": 1.5, "site": "sim.py:44", "keys": ["'a'"]}],
    }
]


def test_the_request_is_named_only_when_a_report_is_made(caplog):
    named = []

    def what():
        named.append(1)
        return "write 'a' (asked at sim.py:44)"

    watch = LongWait("rank 1", what, (b"sa", 0, None), start=100.0, threshold=0.5, reserve=lambda: 1)
    assert named == []  # every wait that is not answered at once makes a watcher: naming it then would cost each
    assert watch.due == 100.5
    with caplog.at_level(logging.WARNING, logger="mpilock"):
        watch.answered(Answer(Reply.PAYLOAD, 7, 0, 0, pickle.dumps(TABLE)))
        watch.answered(Answer(Reply.PAYLOAD, 8, 0, 0, pickle.dumps(TABLE)))
    assert named == [1]  # once, however many reports
    assert len(caplog.records) == 2
    text = caplog.records[0].getMessage()
    assert text.startswith("rank 1 has waited") and "for write 'a' (asked at sim.py:44)" in text
    assert "rank 0  write" in text and "sim.py:42" in text
    assert watch.due == 100.0 + 0.5 * 4  # after 2 reports: due at 4x the threshold


def test_a_plain_text_still_works(caplog):
    watch = LongWait("rank 2", "read 'b' (asked at ?)", (b"sb", 0, None), start=0.0, threshold=1.0, reserve=lambda: 1)
    with caplog.at_level(logging.WARNING, logger="mpilock"):
        watch.answered(Answer(Reply.PAYLOAD, 1, 0, 0, pickle.dumps([])))
    assert "for read 'b' (asked at ?)" in caplog.records[0].getMessage()
    assert "no lock is held or awaited" in caplog.records[0].getMessage()


def test_the_table_names_a_bounded_key_and_its_limit_once():
    table = LockTable(
        [
            {
                "key": "bounded 'fs'",
                "limit": 2,
                "holders": [{"rank": 3, "mode": "slot", "held": 0.25, "site": "io.py:7"}],
                "waiters": [{"rank": 0, "mode": "slot", "waited": 61.0, "site": "io.py:7", "keys": ["bounded 'fs'"]}],
            }
        ]
    )
    lines = str(table).splitlines()
    assert lines[2].startswith("bounded 'fs' (limit 2)  holds")
    assert lines[2].split()[4:] == ["holds", "rank", "3", "slot", "250.0", "ms", "io.py:7"]
    assert lines[3].split() == ["queued", "#1", "rank", "0", "slot", "61.0", "s", "io.py:7"]
