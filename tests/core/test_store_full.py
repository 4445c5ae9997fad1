"""A store write that fails (a full disk, an I/O error) changes nothing and says why: the
files hold exactly the writes that returned, and the error raised is SQLite's own
(kmpray/store_files.py's ``_transaction``). SQLite's ``max_page_count`` caps a file the
way a full disk does: SQLITE_FULL, "database or disk is full"."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kmpray import StoreRefused, TaskTrigger
from kmpray.event_log import SqliteEventLog
from kmpray.store import SqliteTaskStore

from .conftest import Harness


def _capped(conn: sqlite3.Connection, extra_pages: int) -> None:
    """Room for ``extra_pages`` more pages in the file, as a disk about to fill."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + extra_pages}")


def test_a_task_write_the_disk_has_no_room_for_stores_nothing_and_names_the_cause(tmp_path: Path) -> None:
    h = Harness()
    store = SqliteTaskStore(tmp_path / "tasks.db")
    _capped(store._conn, 40)
    written: list[str] = []
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        for batch in range(100):
            for i in range(20):
                h.core.submit(f"t{batch}-{i}", TaskTrigger.OneTime(initial_delay_ms=60_000), "Ok", "x" * 2000)
            fx = h.drain()
            store.write(fx.persist.values(), fx.delete)
            written += [r.key for r in fx.persist.values()]
    assert 0 < len(written) < 2000 and not store._conn.in_transaction
    store.write([], [written[0]])  # the same connection writes on where there is room
    store.close()
    again = SqliteTaskStore(tmp_path / "tasks.db")
    assert sorted(r.key for r in again.load()) == sorted(written[1:])  # none of the failed write's rows
    again.close()


def test_an_event_append_the_disk_has_no_room_for_stores_nothing(tmp_path: Path) -> None:
    log = SqliteEventLog(tmp_path / "events.db")
    assert log.append([b"a"], [1], 0) == [1]
    _capped(log._conn, 2)
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        log.append([b"x" * 20_000], [2], 0)
    assert log.read(0, 10) == [(1, b"a")] and log.last_origin(0) == 1  # the re-send is not skipped
    assert log.append([b"b"], [2], 0) == [2]  # a small one fits: cursors stay dense
    log.close()


def test_a_store_that_cannot_be_created_is_refused_in_one_line(tmp_path: Path) -> None:
    """A state dir this process cannot make (here under a file; a typo, a read-only mount,
    another user's) is a refusal naming the file and the cause, not an OSError traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for make, name in ((SqliteTaskStore, "tasks.db"), (SqliteEventLog, "events.db")):
        path = blocker / "state" / name
        with pytest.raises(StoreRefused) as refused:
            make(path)
        said = str(refused.value)
        assert said.startswith(f"store {path}: cannot be created or opened here ([Errno 20] Not a dir"), said
        assert said.endswith("pass a state_dir this engine's processes can write")
