"""One engine per store file (kmpray/store_files.py): a store another process holds is
waited for, then refused naming that process (at once when it is a live process of
another engine); the OS frees the lock however its holder ends; one process may open a
store again (a test replaying a restart does)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kmpray.errors import StoreRefused
from kmpray.event_log import SqliteEventLog
from kmpray.store import SqliteTaskStore
from kmpray.store_files import _held

HOLDER = """
import sys, time
from pathlib import Path
from kmpray.event_log import SqliteEventLog
from kmpray.store import SqliteTaskStore
wait = float(sys.argv[3]) if len(sys.argv) > 3 else 15.0
engine = sys.argv[4] if len(sys.argv) > 4 else None
opened = (SqliteTaskStore if sys.argv[2] == "tasks" else SqliteEventLog)(Path(sys.argv[1]), lock_wait_s=wait,
                                                                         engine=engine)
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """Another process holding ``tasks.db`` open, as an engine's scheduler does."""
    db = tmp_path / "tasks.db"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), "tasks"], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc, db
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_store_another_process_holds_is_refused_naming_it(
        holder: tuple[subprocess.Popen[str], Path]) -> None:
    proc, db = holder
    began = time.monotonic()
    with pytest.raises(StoreRefused) as refused:
        SqliteTaskStore(db, lock_wait_s=0.3)
    assert time.monotonic() - began >= 0.3  # it waited for the holder to end first
    said = str(refused.value)
    assert said.startswith(f"store {db}: in use by another engine (pid {proc.pid} on ")
    assert "another state_dir" in said
    assert str(db.resolve()) + ".lock" not in _held  # nothing of the refused open stays held


def test_a_live_process_of_another_engine_is_refused_at_once_naming_that_engine(tmp_path: Path) -> None:
    """A second notebook's engine on the default state dir waited the whole
    ``store_lock_wait_s`` (15 s) for a holder that was never going to end."""
    db = tmp_path / "tasks.db"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), "tasks", "15", "kmpray in Ray session A"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        began = time.monotonic()
        with pytest.raises(StoreRefused) as refused:
            SqliteTaskStore(db, lock_wait_s=30, engine="kmpray in Ray session B")
        assert time.monotonic() - began < 5  # not the 30 s wait
        assert f"in use by another engine (pid {proc.pid} on " in str(refused.value)
        assert ", engine kmpray in Ray session A)" in str(refused.value)
        began = time.monotonic()  # the same engine (a restarted scheduler) waits for it to end
        with pytest.raises(StoreRefused):
            SqliteTaskStore(db, lock_wait_s=0.5, engine="kmpray in Ray session A")
        assert time.monotonic() - began >= 0.5
    finally:
        proc.kill()
        proc.wait(timeout=30)


ORPHANING = """
import subprocess, sys
held = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL, text=True)  # not this one's: run() waits on its pipes
assert held.stdout.readline().strip() == "held"
print(held.pid, flush=True)  # and ends, as a raylet does at `ray stop`: the holder is orphaned
"""


def test_a_holder_of_another_engine_whose_parent_ended_is_waited_for(tmp_path: Path) -> None:
    """After ``ray stop --force`` and a new ``connect()``, the old engine's scheduler may
    still be ending (its raylet gone): waited for, not refused at once."""
    db = tmp_path / "tasks.db"
    said = subprocess.run([sys.executable, "-c", ORPHANING, HOLDER, str(db), "tasks", "15", "old"],
                          capture_output=True, text=True, timeout=60)
    pid = int(said.stdout.strip())
    try:
        began = time.monotonic()
        with pytest.raises(StoreRefused, match=rf"in use by another engine \(pid {pid} .*, engine old\)"):
            SqliteTaskStore(db, lock_wait_s=0.5, engine="new")
        assert time.monotonic() - began >= 0.5  # it waited
        os.kill(pid, signal.SIGKILL)
        store = SqliteTaskStore(db, lock_wait_s=30, engine="new")  # and gets it once that one is gone
        store.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_the_lock_frees_when_its_holder_is_killed_and_a_waiter_gets_it(
        holder: tuple[subprocess.Popen[str], Path]) -> None:
    proc, db = holder
    threading.Timer(0.5, proc.send_signal, (signal.SIGKILL,)).start()  # dies while this one waits
    store = SqliteTaskStore(db, lock_wait_s=30)  # what a restarted scheduler does after a kill
    try:
        assert proc.wait(timeout=30) == -signal.SIGKILL
        assert store.load() == []
    finally:
        store.close()


def test_the_event_log_is_one_engines_too(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), "events"], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(StoreRefused, match=rf"in use by another engine \(pid {proc.pid} "):
            SqliteEventLog(db, lock_wait_s=0.1)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    SqliteEventLog(db, lock_wait_s=5).close()  # free again once it is gone


def test_one_process_may_open_a_store_again_and_holds_it_until_the_last_close(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    first = SqliteTaskStore(db)
    again = SqliteTaskStore(db, lock_wait_s=0)  # a restart replayed in one process: not refused
    name = str(db.resolve()) + ".lock"
    assert _held[name][1] == 2
    first.close()
    assert _held[name][1] == 1  # still held: `again` is open
    probe = [sys.executable, "-c", HOLDER.replace("time.sleep(120)", ""), str(db), "tasks"]
    blocked = subprocess.run([*probe, "0.1"], capture_output=True, text=True, timeout=60)
    assert blocked.returncode != 0 and "in use by another engine" in blocked.stderr
    again.close()
    assert name not in _held
    free = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    assert free.returncode == 0 and free.stdout.strip() == "held"


def test_a_filesystem_without_locks_opens_unlocked_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import errno

    from kmpray import store_files

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(store_files.fcntl, "flock", no_locks)
    store = SqliteTaskStore(tmp_path / "tasks.db", lock_wait_s=0)
    try:
        assert store.load() == []
        assert any("not locked for this engine" in r.getMessage() for r in caplog.records)
    finally:
        monkeypatch.undo()  # release() unlocks with the real flock
        store.close()
