"""A damaged store does not stop the engine: bad rows are quarantined, healthy ones served (#19)."""

from __future__ import annotations

import os
import pickle
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from kmpray.bench.chaos_common import replay

import kmpray
from kmpray import ONE_HOUR, ScheduleResult, StoreRefused, TaskState, TaskTrigger

from .helpers import next_completion
from .workers import register_all

pytestmark = pytest.mark.ray


class _Canary:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (self.path, "w"))


def _damage(db: Path, table: str, key_column: str, key: object, blob: bytes) -> None:
    conn = sqlite3.connect(db)
    conn.execute(f"UPDATE {table} SET {key_column[1]} = ? WHERE {key_column[0]} = ?", (blob, key))
    conn.commit()
    conn.close()


def test_damaged_rows_are_quarantined_and_the_healthy_tasks_run(ray_session: Any, tmp_path: Path) -> None:
    ns, state = "damaged-rows", tmp_path / "state"
    first = kmpray.connect(namespace=ns, state_dir=str(state), virtual_time=True)
    register_all(first)
    for n in range(1, 6):
        first.enqueue(f"t{n}", TaskTrigger.OneTime(ONE_HOUR), "Echo")
    first.shutdown()
    canary = tmp_path / "canary"
    _damage(state / "tasks.db", "tasks", ("key", "row"), "t2", pickle.dumps(_Canary(str(canary))))
    _damage(state / "tasks.db", "tasks", ("key", "row"), "t4", os.urandom(200))

    second = kmpray.connect(namespace=ns, state_dir=str(state), virtual_time=True)
    try:
        register_all(second)
        assert second.status()["quarantined"] == 2
        rows = {row["key"]: row for row in second.quarantined()}
        assert set(rows) == {"t2", "t4"} and all(row["reason"] for row in rows.values())
        assert rows["t4"]["size"] == 200
        second.advance_time(ONE_HOUR)
        assert [second.get_task_info(f"t{n}").state for n in (1, 3, 5)] == [TaskState.SUCCEEDED] * 3
        lost = second.get_task_info("t2")
        assert lost.state is TaskState.FAILED and "quarantine" in lost.result.message
        assert second.drop_quarantined("t2") == 1 and [r["key"] for r in second.quarantined()] == ["t4"]
        assert not canary.exists()  # nothing from the file was ever unpickled
    finally:
        second.shutdown()


def test_a_store_that_is_not_sqlite_is_refused_at_connect_with_one_line(ray_session: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "tasks.db").write_bytes(os.urandom(8192))
    with pytest.raises(StoreRefused) as err:
        kmpray.connect(namespace="refused-store", state_dir=str(state), virtual_time=True)
    assert str(state / "tasks.db") in str(err.value) and "Move the file aside" in str(err.value)
    (state / "tasks.db").unlink()  # what the message says to do; then the engine starts afresh
    sched = kmpray.connect(namespace="refused-store", state_dir=str(state), virtual_time=True)
    try:
        assert sched.status()["pending"] == 0
    finally:
        sched.shutdown()


def test_a_subscriber_replaying_from_zero_skips_a_damaged_event(vengine: Any) -> None:
    live = vengine.events.subscribe()
    for n in range(3):
        vengine.enqueue(f"e{n}", TaskTrigger.OneTime(), "Echo")
        next_completion(live, f"e{n}")  # stored by the broker, not only finished
    live.close()
    last = vengine.events.last_cursor()
    assert last >= 3
    _damage(Path(vengine.state_dir) / "events.db", "events", ("cursor", "body"), 2, b"\xc1\xc1 not an event")
    seen = [(cursor, event.task_id) for cursor, event in replay(vengine, 0, timeout_s=30)]  # up to `last`
    assert [c for c, _ in seen] == [c for c in range(1, last + 1) if c != 2]
    assert len({t for _, t in seen}) == len(seen) == last - 1  # one completion per task, the damaged one gone


def test_a_second_engine_on_a_state_dir_in_use_is_refused_and_the_first_serves_on(
        engines: Any, tmp_path: Path) -> None:
    """Two engines on one state dir (two notebooks each connect() an embedded Ray with the
    default ~/.kmpray/<namespace>) each restored the other's rows and ran them. Now the
    second is refused, naming the first's process (kmpray/store_files.py)."""
    import ray
    from kmpray.actors.bootstrap import stop_engine
    from kmpray.actors.names import BROKER, SCHEDULER
    from kmpray.bench.chaos_common import actor_pid

    state = tmp_path / "shared"
    first = engines.registered(state_dir=state)
    later = TaskTrigger.OneTime(initial_delay_ms=ONE_HOUR)
    assert first.enqueue("mine", later, "Echo") is ScheduleResult.SUCCESS
    try:
        began = time.monotonic()
        with pytest.raises(StoreRefused) as err:  # at once: the holder is another engine's, alive
            kmpray.connect(namespace="second-on-state", state_dir=str(state),
                           config=kmpray.EngineConfig(store_lock_wait_s=120))
        assert time.monotonic() - began < 60
        # Whichever of its files the second engine reached first: the first's scheduler holds
        # tasks.db, its broker events.db.
        held = {"tasks.db": actor_pid(ray, SCHEDULER, first.namespace),
                "events.db": actor_pid(ray, BROKER, first.namespace)}
        said = str(err.value)
        assert any(said.startswith(f"store {state / name}: in use by another engine (pid {pid} on ")
                   for name, pid in held.items()), (said, held)
        assert f", engine {first.namespace} in Ray session session_" in said
    finally:
        stop_engine("second-on-state")
    assert first.get_task_info("mine").state is TaskState.ENQUEUED  # untouched, and still serving:
    assert first.enqueue("after", TaskTrigger.OneTime(), "Echo") is ScheduleResult.SUCCESS
    assert first.wait("after", timeout_s=60).state is TaskState.SUCCEEDED
