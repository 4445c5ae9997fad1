"""Large inputs live in the store, not in the scheduler's memory (kmpray/store.py
``INLINE_INPUT_CHARS``): written once with the row's transaction, dropped from the record,
read back for each dispatch, gone with the row."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kmpray import TaskTrigger
from kmpray.engine import SchedulerCore
from kmpray.memory_store import MemoryTaskStore
from kmpray.results import Success
from kmpray.store import INLINE_INPUT_CHARS, SqliteTaskStore

from .conftest import START, Harness

BIG = '{"blob": "' + "x" * (INLINE_INPUT_CHARS * 4) + '"}'
SMALL = '{"n": 1}'


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SqliteTaskStore | MemoryTaskStore:
    return SqliteTaskStore(tmp_path / "tasks.db") if request.param == "sqlite" else MemoryTaskStore()


def _written(h: Harness, store: SqliteTaskStore | MemoryTaskStore) -> None:
    fx = h.core.drain()
    store.write(fx.persist.values(), fx.delete)


def test_a_large_input_leaves_the_record_once_written_and_comes_back_at_dispatch(store) -> None:  # type: ignore[no-untyped-def]
    h = Harness()
    h.core.submit("big", TaskTrigger.OneTime(initial_delay_ms=1_000), "Ok", BIG)
    h.core.submit("small", TaskTrigger.OneTime(initial_delay_ms=1_000), "Ok", SMALL)
    rec = h.core.latest("big")
    assert rec is not None and rec.input == BIG  # not written yet: still in memory
    _written(h, store)
    assert rec.input is None and rec.input_stored == len(BIG)
    assert h.core.latest("small").input == SMALL  # type: ignore[union-attr]
    assert store.read_input("big") == BIG and store.read_input("small") is None
    h.clock.set(START + 1_000)
    h.core.tick()
    batch = {d.key: d for d in h.core.take_ready(10)}
    assert batch["big"].input is None and batch["big"].input_stored  # the actor reads it back
    assert batch["small"].input == SMALL and not batch["small"].input_stored


def test_a_record_taken_before_its_first_write_carries_its_input_itself() -> None:
    h = Harness()
    h.core.submit("now", TaskTrigger.OneTime(), "Ok", BIG)
    h.core.tick()
    (d,) = h.core.take_ready(10)
    assert d.input == BIG and not d.input_stored


def test_after_a_restart_the_input_is_still_only_in_the_store(tmp_path: Path) -> None:
    h = Harness()
    h.core.submit("big", TaskTrigger.OneTime(initial_delay_ms=1_000), "Ok", BIG)
    store = SqliteTaskStore(tmp_path / "tasks.db")
    _written(h, store)
    store.close()
    again = SqliteTaskStore(tmp_path / "tasks.db")
    (rec,) = again.load()
    assert rec.input is None and rec.input_stored == len(BIG)
    assert again.read_input("big") == BIG
    row = sqlite3.connect(tmp_path / "tasks.db").execute("SELECT row FROM tasks").fetchone()[0]
    assert len(row) < 1_000  # the row itself stays small
    core = SchedulerCore(h.clock, h.core.platform)
    core.restore([rec])
    h.clock.set(START + 1_000)
    core.tick()
    (d,) = core.take_ready(10)
    assert d.input is None and d.input_stored


def test_a_failed_write_puts_the_input_back(store, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    h = Harness()
    h.core.submit("big", TaskTrigger.OneTime(initial_delay_ms=1_000), "Ok", BIG)
    fx = h.core.drain()

    def broken(*_a: object) -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr("kmpray.store.encode", broken)
    monkeypatch.setattr("kmpray.memory_store.encode", broken)
    with pytest.raises(OSError, match="disk full"):
        store.write(fx.persist.values())
    rec = h.core.latest("big")
    assert rec is not None and rec.input == BIG and rec.input_stored == 0  # nothing lost


def _stored(tmp_path: Path, **inputs: str) -> SqliteTaskStore:
    """A SQLite store holding delayed tasks named and with inputs as given."""
    h = Harness()
    for key, text in inputs.items():
        h.core.submit(key, TaskTrigger.OneTime(initial_delay_ms=1_000), "Ok", text)
    store = SqliteTaskStore(tmp_path / "tasks.db")
    _written(h, store)
    return store


def test_the_input_goes_with_its_row_and_orphans_go_at_load(tmp_path: Path) -> None:
    store = _stored(tmp_path, a=BIG, b=BIG)
    store.write([], ["a"])
    assert store.read_input("a") is None and store.read_input("b") == BIG
    conn = sqlite3.connect(tmp_path / "tasks.db", isolation_level=None)
    conn.execute("INSERT INTO inputs (key, input) VALUES ('ghost', 'x')")
    store.load()
    assert [k for (k,) in conn.execute("SELECT key FROM inputs")] == ["b"]


def test_a_row_whose_stored_input_is_missing_is_quarantined_not_run_without_it(tmp_path: Path) -> None:
    store = _stored(tmp_path, a=BIG, b=SMALL)
    sqlite3.connect(tmp_path / "tasks.db", isolation_level=None).execute("DELETE FROM inputs")
    assert [r.key for r in store.load()] == ["b"]
    (q,) = store.take_fresh_quarantine()
    assert q.key == "a" and "input" in q.reason


def _private_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("RssAnon:")[1].split()[0])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_give_back_returns_the_pages_of_freed_large_strings() -> None:
    """What the scheduler does after a burst of large inputs: glibc keeps the pages of
    1 MiB strings freed out of order (RSS stays at the peak) until malloc_trim."""
    from kmpray.actors.memory_cap import give_back

    give_back()
    base = _private_kib()
    held = [("x" * (1024 * 1024 - 60)) + str(i) for i in range(200)]  # ~200 MiB alive at once
    keep = held[-1]  # the newest stays, so the heap's top is in use: free() alone cannot shrink it
    del held
    kept = _private_kib() - base
    assert give_back()
    after = _private_kib() - base
    assert kept > 100 * 1024 and after < 16 * 1024, (kept, after)
    assert keep.endswith("199")


def test_a_chain_task_with_a_large_input_gets_its_input_not_its_upstream_data() -> None:
    """A chain task has both its own input and its prerequisites' merged output; once its
    input lives in the store, the dispatch must say so, not fall back to sending the
    upstream data as the input (what a task without an input of its own gets)."""
    from kmpray import ExistingPolicy

    from .conftest import task

    h = Harness()
    h.workers["Data"] = lambda d: Success(data={"from": d.key})
    steps = [[task("Data", "a1"), task("Data", "a2")], [task("Data", "b", input=BIG)]]
    assert h.core.submit_chain("c", ExistingPolicy.REPLACE, steps).result.value == "SUCCESS"
    ran = {d.key: d for _ in range(3) for d in h.step()}
    b = ran["b"]
    assert h.core.latest("b").state.value == "SUCCEEDED"  # type: ignore[union-attr]
    assert b.upstream is not None and b.input is None and b.input_stored  # read back by the actor
    assert h.store.read_input("b") == BIG
