"""The transactional outbox in the store: completion events written with their results,
numbered once, read back after a crash, and forgotten once the event log has them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kmpray.event_log import MemoryEventLog, SqliteEventLog
from kmpray.store import SqliteTaskStore


def test_completion_events_are_stored_with_their_results_until_the_log_has_them(tmp_path: Path) -> None:
    """The transactional outbox: an event written with its result survives a crash before
    it is published; after the ack it is forgotten."""
    store = SqliteTaskStore(tmp_path / "tasks.db")
    assert store.write([], events=[b"e1", b"e2"]) == [1, 2]
    assert store.write([], events=[b"e3"]) == [3]
    store.close()
    store = SqliteTaskStore(tmp_path / "tasks.db")  # "restarted"
    assert store.pending_events() == [(1, b"e1"), (2, b"e2"), (3, b"e3")]
    store.ack_events(2)
    assert store.pending_events() == [(3, b"e3")]
    store.ack_events(3)
    assert store.write([], events=[b"e4"]) == [4]  # numbers are never reused


def test_the_event_log_appends_a_re_sent_event_once(tmp_path: Path) -> None:
    for log in (SqliteEventLog(tmp_path / "events.db"), MemoryEventLog()):
        assert log.append([b"a", b"b"], [1, 2]) == [1, 2]
        # The scheduler died before the ack: it sends 1..3 again after its restart.
        assert log.append([b"a", b"b", b"c", b"p"], [1, 2, 3, None]) == [3, 4]
        assert [body for _c, body in log.read(0, 10)] == [b"a", b"b", b"c", b"p"]
        assert log.append([b"w"]) == [5]  # an event from worker code has no origin
        assert log.last_origin() == 3  # what a restarted scheduler need not send again
        assert log.append([b"s"], [7], source=1) == [6] and log.last_origin(1) == 7 and log.last_origin(2) == 0


def test_acknowledged_events_leave_the_outbox_with_the_next_write(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "tasks.db")
    store.write([], events=[b"e1", b"e2", b"e3"])
    assert store.write([], events=[b"e4"], acked=2) == [4]
    assert [n for n, _b in store.pending_events()] == [3, 4]
    # One row per write: the first write's row stays until all its events are acknowledged.
    db = sqlite3.connect(tmp_path / "tasks.db")
    assert db.execute("SELECT first, seq FROM outbox ORDER BY seq").fetchall() == [(1, 3), (4, 4)]
    store.close()
    # A new store object (a restart) does not know the acknowledgement: the row's events come
    # back whole, and the scheduler drops those the event log says it has (``taken``).
    again = SqliteTaskStore(tmp_path / "tasks.db")
    assert again.pending_events() == [(1, b"e1"), (2, b"e2"), (3, b"e3"), (4, b"e4")]
    again.ack_events(3)
    assert again.pending_events() == [(4, b"e4")]
    assert db.execute("SELECT seq FROM outbox").fetchall() == [(4,)]
    db.close()


def test_a_version_3_outbox_of_one_event_per_row_is_read_and_numbered_on_from(tmp_path: Path) -> None:
    """A store written before outbox rows held a write's events: its rows are one event
    each (``first`` NULL, added at open); new events are numbered after the last of them,
    and one acknowledgement spans both kinds of row."""
    path = tmp_path / "tasks.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)")
    conn.executemany("INSERT INTO outbox (body) VALUES (?)", [(b"old1",), (b"old2",), (b"old3",)])
    conn.execute("DELETE FROM outbox WHERE seq = 1")  # acknowledged before the upgrade
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    store = SqliteTaskStore(path)
    assert store.pending_events() == [(2, b"old2"), (3, b"old3")]
    assert store.write([], events=[b"new4", b"new5"]) == [4, 5]
    assert store.pending_events() == [(2, b"old2"), (3, b"old3"), (4, b"new4"), (5, b"new5")]
    store.ack_events(4)
    assert store.pending_events() == [(5, b"new5")]
    store.ack_events(5)
    assert store.write([], events=[b"new6"]) == [6]  # never a number used before


def test_a_damaged_outbox_row_is_skipped_and_the_others_are_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tasks.db"
    store = SqliteTaskStore(path)
    store.write([], events=[b"a", b"b"])
    store.write([], events=[b"c"])
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE outbox SET body = ? WHERE seq = 2", (b"\xc1 not msgpack",))
    conn.commit()
    conn.close()
    with caplog.at_level("WARNING", logger="kmpray.store"):
        assert SqliteTaskStore(path).pending_events() == [(3, b"c")]
    assert "outbox events 1..2 are damaged, skipped" in caplog.text
