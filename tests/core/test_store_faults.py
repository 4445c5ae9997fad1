"""A disk that fails for now (an I/O error, a file system gone read-only) is not a damaged
or unusable store: opening the store raises the disk's error for the caller to try again
(a scheduler restarts, the broker too), where a state dir that can never be used is
refused in one line. What `bench chaos --scenario io` (bench/faultfs.py) found in session
63: a read-only disk at a scheduler's start was a StoreRefused for good, which told the
user to move a sound store aside."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from kmpray.actors import store_room

from kmpray import StoreRefused, store_files
from kmpray.event_log import SqliteEventLog
from kmpray.store import SqliteTaskStore


def _failing_hold(no: int) -> Any:
    def hold(*_a: Any, **_k: Any) -> None:
        raise OSError(no, f"{errno.errorcode[no]} (made by the test)")

    return hold


def test_a_read_only_disk_under_a_store_already_there_is_the_disks_fault_for_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for make, name in ((SqliteTaskStore, "tasks.db"), (SqliteEventLog, "events.db")):
        make(tmp_path / name).close()
        monkeypatch.setattr(store_files, "hold", _failing_hold(errno.EROFS))
        with pytest.raises(OSError) as raised:
            make(tmp_path / name)
        assert raised.type is OSError and raised.value.errno == errno.EROFS  # not a StoreRefused
        monkeypatch.undo()
        make(tmp_path / name).close()  # and once the disk is writable again, it opens


def test_a_read_only_disk_where_no_store_is_yet_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store_files, "hold", _failing_hold(errno.EROFS))
    with pytest.raises(StoreRefused, match=r"cannot be created or opened here .*pass a state_dir"):
        SqliteTaskStore(tmp_path / "new" / "tasks.db")
    monkeypatch.setattr(store_files, "hold", _failing_hold(errno.EIO))  # an I/O error: for now, either way
    with pytest.raises(OSError) as raised:
        SqliteTaskStore(tmp_path / "new" / "tasks.db")
    assert raised.type is OSError and raised.value.errno == errno.EIO


def test_sqlite_unable_to_open_or_write_a_file_is_the_disks_fault_not_a_damaged_store(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError) as cannot_open:
        sqlite3.connect(str(tmp_path / "no-such-dir" / "x.db")).execute("SELECT 1")
    assert cannot_open.value.sqlite_errorcode & 0xFF == store_files.SQLITE_CANTOPEN
    assert store_files.disk_error(cannot_open.value)
    ro = sqlite3.connect(f"file:{tmp_path / 'ro.db'}?mode=rwc", uri=True)
    ro.execute("CREATE TABLE t (x)")
    ro.close()
    with pytest.raises(sqlite3.OperationalError) as read_only:
        sqlite3.connect(f"file:{tmp_path / 'ro.db'}?mode=ro", uri=True).execute("INSERT INTO t VALUES (1)")
    assert read_only.value.sqlite_errorcode & 0xFF == store_files.SQLITE_READONLY
    assert store_files.disk_error(read_only.value)
    with pytest.raises(sqlite3.DatabaseError) as not_a_db:
        (tmp_path / "text.db").write_bytes(b"not a database at all" * 100)
        sqlite3.connect(str(tmp_path / "text.db")).execute("SELECT * FROM sqlite_master")
    assert not store_files.disk_error(not_a_db.value)  # a damaged file stays a refusal


def test_a_lock_whose_holder_could_not_be_written_is_not_kept_by_a_lost_file_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An I/O error after the lock was taken (writing who holds it) used to leave the lock
    held by a descriptor no one had: the same process's next try was refused as "in use by
    another engine" naming itself."""
    store = tmp_path / "tasks.db"

    def fails(*_a: Any) -> str:
        raise OSError(errno.EIO, "made by the test")

    monkeypatch.setattr(store_files.socket, "gethostname", fails)
    with pytest.raises(OSError, match="made by the test"):
        store_files.hold(store, wait_s=0.1)
    monkeypatch.undo()
    store_files.hold(store, wait_s=0.1)  # taken: not "in use by another engine (pid <this one>)"
    store_files.release(store)


def test_a_start_failed_on_a_failing_disk_ends_once_a_probe_can_be_written_twice(tmp_path: Path) -> None:
    assert store_room.writable(str(tmp_path)) and not list(tmp_path.iterdir())  # (its probe removed)
    assert not store_room.writable(str(tmp_path / "gone"))
    looks = iter([True, False, True, True])
    twice = store_room._twice(lambda: next(looks))
    assert [twice(), twice(), twice(), twice()] == [False, False, False, True]


def test_what_to_fix_names_the_full_disk_or_the_failing_one() -> None:
    assert store_room.what_to_fix(OSError(errno.ENOSPC, "full")) == "free space on that disk"
    assert store_room.what_to_fix(OSError(errno.EROFS, "ro")) == "the disk failed an I/O call or is read-only"
    assert store_room.what_to_fix(OSError(errno.EIO, "io")) == "the disk failed an I/O call or is read-only"


def test_a_disk_error_past_the_restore_refuses_for_now_and_ends_the_scheduler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The start after the restore (events sent again, spooled results read, runs adopted)
    reading or writing a failing disk used to fail the scheduler's ``_ready`` for good:
    every call raised "disk I/O error" and no timer ended the process for Ray to start it
    again (the io chaos scenario, session 63: not serving 60 s after the fault's end)."""
    import asyncio
    import os

    from kmpray.actors import scheduler_refusal

    from kmpray.errors import StoreWriteFailed

    timers: list[tuple[float, Any, tuple[Any, ...]]] = []

    class Timer:  # (the real one would end this process)
        def __init__(self, after_s: float, fn: Any, args: tuple[Any, ...]) -> None:
            timers.append((after_s, fn, args))
            self.daemon = False

        def start(self) -> None:
            pass

    watched: list[tuple[str, float]] = []
    monkeypatch.setattr(store_room.threading, "Timer", Timer)
    monkeypatch.setattr(store_room, "end_once_writable", lambda home, s, _exc: watched.append((home, s)))

    class Scheduler(scheduler_refusal.SchedulerRefusal):
        home = str(tmp_path)
        _store_failed = None

        async def _start(self) -> None:
            raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(StoreWriteFailed, match=r"disk I/O error.*the disk failed an I/O call or is read"):
        asyncio.run(Scheduler()._start_or_refuse())
    assert timers == [(10.0, os._exit, (75,))] and watched == [(str(tmp_path), 10.0)]


def _malformed() -> sqlite3.DatabaseError:
    exc = sqlite3.DatabaseError("database disk image is malformed")
    exc.sqlite_errorcode = store_files.SQLITE_CORRUPT  # what SQLite raises on a zero-filled short read
    return exc


def test_a_page_read_as_damaged_but_sound_read_again_is_a_failing_disk_not_a_refusal(tmp_path: Path) -> None:
    """A failing disk's short read (SQLite fills the rest with zeros) looks like a broken
    page: the io chaos scenario met one at a scheduler's start and the store, sound, was
    refused for good. Now the file is read again through a fresh connection first: sound,
    it is the disk's error for now (the scheduler restarts and reads it again); damaged,
    the refusal stands (test_quarantine.py's byte flips)."""
    path = tmp_path / "tasks.db"
    SqliteTaskStore(path).close()
    with pytest.raises(OSError, match="but not when read again: a failing disk's read") as raised:
        with store_files._refusing(path):
            raise _malformed()
    assert raised.type is OSError and raised.value.errno == errno.EIO
    with open(path, "r+b") as f:  # now really damaged: its first page's header overwritten
        f.write(b"\x00" * 100)
    with pytest.raises(StoreRefused, match="damaged beyond its rows"):
        with store_files._refusing(path):
            raise _malformed()


def test_a_row_that_reads_otherwise_a_second_time_is_not_quarantined(tmp_path: Path) -> None:
    from kmpray.store import _quarantined

    from .test_quarantine import _rec

    store = SqliteTaskStore(tmp_path / "tasks.db")
    store.write([_rec("t1")])
    (stored,) = store._conn.execute("SELECT row FROM tasks WHERE key = 't1'").fetchone()
    misread = b"\x00" * len(stored)  # as a short read filled it
    with pytest.raises(OSError, match="reads otherwise a second time: a failing disk's read"):
        store._quarantine("tasks", [(_quarantined("tasks", "t1", "test", misread), misread)])
    assert store.quarantined() == [] and [r.key for r in store.load()] == ["t1"]  # not moved
    damaged = [(_quarantined("tasks", "t1", "test", stored), bytes(stored))]  # the same bytes again: damaged
    store._quarantine("tasks", damaged)
    assert [q.key for q in store.quarantined()] == ["t1"] and store.load() == []
    store.close()


@pytest.mark.parametrize(("findings", "verdict"), [
    (["*** in database main ***\nPage 7: btreeInitPage() returns error code 11"] * 3, False),  # damaged
    (["Page 7: btreeInitPage() returns error code 11", "ok"], True),  # sound at the second look
    (["Page 7: btreeInitPage() returns error code 11", "Page 3: free space corruption",
      "Page 7: btreeInitPage() returns error code 11"], None),  # reads otherwise each time: the disk
])
def test_a_store_read_again_is_damaged_only_if_it_reads_the_same_way_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, findings: list[str], verdict: bool | None,
) -> None:
    """The io chaos scenario (seed 15) refused a store read again once, at once, while the
    disk still failed: its second read was a short read too."""
    looks = iter(findings)

    class Conn:
        def execute(self, _sql: str) -> Any:
            return self

        def fetchone(self) -> tuple[str]:
            return (next(looks),)

        def close(self) -> None:
            pass

    monkeypatch.setattr(store_files.sqlite3, "connect", lambda *_a, **_k: Conn())
    assert store_files.sound_read_again(tmp_path / "tasks.db") is verdict
