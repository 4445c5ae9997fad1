"""The store's housekeeping: finished rows kept in the store only read as before, a light
load synced to the database files within seconds, a failing or refused round said once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kmpray.actors.names import shard_namespace

import kmpray
from kmpray import EngineConfig, ScheduleResult, TaskState, TaskTrigger
from kmpray.shards import shard_of

from ..sqlite_files import main_file_rows
from .helpers import ONE_SHARD, until
from .workers import register_all

pytestmark = pytest.mark.ray


def test_finished_rows_kept_in_the_store_only_read_as_before(engines: Any) -> None:
    """After finished_in_memory_ms a finished row leaves the scheduler's memory: every read,
    listing, policy and restart sees it as before (read from the store)."""
    import ray

    sched = engines(config=EngineConfig(finished_in_memory_ms=0))
    register_all(sched)
    ids = [f"c{i}" for i in range(40)]
    assert sched.enqueue_many([{"id": i, "trigger": TaskTrigger.OneTime(), "worker_class_name": "Echo",
                                "input": json.dumps({"n": i})} for i in ids]) == [ScheduleResult.SUCCESS] * 40
    before = {i: sched.wait(i, timeout_s=60) for i in ids}
    assert all(info.state is TaskState.SUCCEEDED for info in before.values())
    until(lambda: sched.status()["finished_in_store_only"] == 40, what="finished rows out of memory")
    assert {i: sched.get_task_info(i) for i in ids} == before
    assert sched.get_output("c7") == before["c7"].result.data == {"input": '{"n": "c7"}', "attempt": 0}  # type: ignore[union-attr]
    listed = {t.id: t for t in sched.list_tasks(TaskState.SUCCEEDED)}
    assert set(listed) == set(ids) and listed["c3"] == before["c3"]
    assert sched.status()["counts"]["SUCCEEDED"] == 40
    # REPLACE over a cold name: the old row is read back, replaced, and its run ids carried on.
    assert sched.enqueue("c0", TaskTrigger.OneTime(), "Echo", input="again",
                         constraints=kmpray.Constraints(existing_work_policy=kmpray.ExistingWorkPolicy.REPLACE)
                         ) is ScheduleResult.SUCCESS
    again = sched.wait("c0", timeout_s=60)
    assert again.state is TaskState.SUCCEEDED and again.result.data["input"] == "again"  # type: ignore[union-attr]
    ns = shard_namespace(sched.namespace, shard_of("c5", sched.shards))
    ray.kill(ray.get_actor("kmpray.scheduler", namespace=ns), no_restart=False)
    assert sched.get_task_info("c5") == before["c5"]  # restored, then kept in the store only again
    until(lambda: sched.status()["finished_in_store_only"] == 40, what="restored rows out of memory again")
    assert sched.status()["counts"]["SUCCEEDED"] == 40


@ONE_SHARD
def test_a_light_load_reaches_the_database_files_within_seconds(engines: Any, tmp_path: Path) -> None:
    """durability="normal": SQLite syncs a WAL only when it checkpoints (every ~1,000 pages),
    so under a light load the scheduler and the broker checkpoint themselves once a second
    (kmpray/timing.py QUIET_SYNC_*): a task's row and its completion event are in the
    database files proper, which is what an OS crash leaves, seconds after it finished."""
    sched = engines()
    register_all(sched)
    assert sched.enqueue("light", TaskTrigger.OneTime(), "Echo") is ScheduleResult.SUCCESS
    assert sched.wait("light", timeout_s=60).state is TaskState.SUCCEEDED

    state = Path(sched.state_dir)
    row = "SELECT key FROM tasks WHERE key = 'light'"
    until(lambda: bool(main_file_rows(state / "tasks.db", tmp_path, row)), timeout_s=15,
          what="the task's row in tasks.db itself")
    until(lambda: bool(main_file_rows(state / "events.db", tmp_path, "SELECT cursor FROM events")),
          timeout_s=15, what="its completion event in events.db itself")


def test_a_failing_sync_is_logged_and_leaves_the_rest_of_housekeeping_to_run(caplog: Any) -> None:
    """The once-a-second quiet sync is its own step: a disk that fails it must not stop the
    prune, the content-URI watch and the long-wait checks that come after it."""
    import logging

    from kmpray.actors.scheduler_housekeeping import SchedulerHousekeeping

    class FailingStore:
        def sync_if_quiet(self, max_rows: int) -> bool:
            raise OSError("disk I/O error")

    keeper = object.__new__(SchedulerHousekeeping)
    keeper.store = FailingStore()  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="kmpray.scheduler"):
        keeper._sync_quietly()  # returns: the loop goes on to the rest of its round
    logged = [r.getMessage() for r in caplog.records]
    assert logged == ["syncing the store failed (disk I/O error); will retry"]


def test_housekeeping_ends_quietly_once_the_scheduler_is_stopped(
        caplog: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """After shutdown() the scheduler's calls refuse (stop()), and its housekeeping round
    met that refusal and logged "housekeeping failed" with a traceback in the user's
    notebook after every shutdown that came a second or more after the start. Stopped, it
    now ends; running, a failing round is still logged and retried."""
    import asyncio
    import logging

    from kmpray.actors import scheduler_housekeeping as housekeeping

    class Refusing:  # every step of the round fails, as the stopped scheduler's _ready does
        def __getattr__(self, name: str) -> Any:
            raise kmpray.EngineUnavailable("engine 't' was stopped (its scheduler is gone): connect() again")

    monkeypatch.setattr(housekeeping, "RECONCILE_S", 0.01)
    keeper = object.__new__(housekeeping.SchedulerHousekeeping)
    keeper.config = kmpray.EngineConfig()
    keeper.metrics = keeper.core = keeper.pool = keeper.store = Refusing()  # type: ignore[assignment]
    keeper.stopped = True
    with caplog.at_level(logging.ERROR, logger="kmpray.scheduler"):
        asyncio.run(asyncio.wait_for(keeper._housekeeping(), 5))  # returns
    assert not caplog.records
    keeper.stopped = False
    with caplog.at_level(logging.ERROR, logger="kmpray.scheduler"), pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(keeper._housekeeping(), 0.3))  # goes on
    # (the file watch is a step of its own since session 56: its failure is said apart)
    assert {r.getMessage() for r in caplog.records} == {"housekeeping failed; will retry",
                                                        "watching files failed; will retry"}
