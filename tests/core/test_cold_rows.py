"""Finished rows leave the scheduler's memory after ``finished_in_memory_ms`` and are read
from the store (kmpray/task_table.py): every read, policy and prune sees them as before."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kmpray import Constraints, EngineConfig, ExistingWorkPolicy, ScheduleResult, TaskState, TaskTrigger
from kmpray.enums import ExistingPolicy
from kmpray.results import Success
from kmpray.store import SqliteTaskStore

from .conftest import Harness, task

HOT_MS = 1_000


def _h() -> Harness:
    return Harness(config=EngineConfig(finished_in_memory_ms=HOT_MS, retain_finished_ms=60_000))


def _c(policy: ExistingWorkPolicy) -> Constraints:
    return Constraints(existing_work_policy=policy)


def test_a_finished_row_goes_cold_after_its_time_and_reads_the_same() -> None:
    h = _h()
    h.core.submit("a", TaskTrigger.OneTime(), "Ok", input="x")
    h.core.submit("b", TaskTrigger.OneTime(initial_delay_ms=60_000), "Ok")
    h.step()
    warm = h.core.latest("a")
    assert warm is not None and warm.state is TaskState.SUCCEEDED
    h.advance(HOT_MS - 1)
    assert "a" in h.core.tasks and not h.core.tasks.cold  # not yet: a successor may read it at once
    h.advance(2)
    assert "a" not in h.core.tasks and set(h.core.tasks.cold) == {"a"}
    assert "a" not in h.core.names  # its name is its key: the entry goes too (~120 B)
    assert h.core.tasks.cold_info("a") == ("Ok", TaskState.SUCCEEDED, warm.updated_at_ms)
    assert "b" in h.core.tasks  # unfinished rows never leave
    cold = h.core.latest("a")  # read from the store, not put back
    assert cold is not None and cold.info() == warm.info() and "a" not in h.core.tasks
    assert h.core.counts()["SUCCEEDED"] == 1 and h.core.counts()["ENQUEUED"] == 1
    total, newest = h.core.tasks.newest(TaskState.SUCCEEDED, None, 10)
    assert total == 1 and [r.key for r in newest] == ["a"]
    assert h.core.is_settled("a")
    assert (h.core.explain("a") or "").startswith("task a (Ok): SUCCEEDED, attempt 1, 1 finished runs")
    assert h.core.cancel("a") == 0  # finished: nothing to cancel, and no KeyError
    # Its id stays taken: a chain may not use it, as its id or as a task's.
    assert "already the id of a task" in (h.core.submit_chain("a", ExistingPolicy.KEEP,
                                                              [[task("Ok", "z")]]).reason or "")
    out = h.core.submit_chain("ch", ExistingPolicy.KEEP, [[task("Ok", "a")]])
    assert out.result is ScheduleResult.REJECTED_INVALID_PARAMS and "already in use" in (out.reason or "")


def test_policies_over_a_cold_name_decide_as_over_a_warm_one() -> None:
    h = _h()
    for name, worker in (("keep", "Ok"), ("repl", "Ok"), ("app", "Ok"), ("appf", "Fail")):
        h.core.submit(name, TaskTrigger.OneTime(), worker)
    h.step()
    h.advance(HOT_MS + 1)
    assert set(h.core.tasks.cold) == {"keep", "repl", "app", "appf"}
    old_run = h.core.latest("repl").run_id  # type: ignore[union-attr]

    # KEEP over finished work inserts anew (WorkManager); REPLACE carries the run ids over.
    for name, policy in (("keep", ExistingWorkPolicy.KEEP), ("repl", ExistingWorkPolicy.REPLACE)):
        out = h.core.submit(name, TaskTrigger.OneTime(), "Ok", constraints=_c(policy))
        assert out.result is ScheduleResult.SUCCESS
    # APPEND to a cold SUCCEEDED leaf: the new work gets its output; to a FAILED one: fails too.
    h.core.submit("app", TaskTrigger.OneTime(), "Ok", constraints=_c(ExistingWorkPolicy.APPEND))
    h.core.submit("appf", TaskTrigger.OneTime(), "Ok", constraints=_c(ExistingWorkPolicy.APPEND))
    assert h.core.names["app"] == ["app", "app#2"] and h.core.tasks["app"].state is TaskState.SUCCEEDED
    assert h.core.names["keep"] == ["keep"] and h.core.names["repl"] == ["repl"]  # back with their rows
    assert h.state("appf") == "FAILED"  # the appended work, cascaded at once
    ran = h.step()
    by_key = {d.key: d for d in ran}
    assert set(by_key) == {"keep", "repl", "app#2"}
    assert by_key["repl"].run_id > old_run
    assert by_key["app#2"].upstream == {"worker": "Ok"}  # the cold leaf's Success.data
    assert h.core.counts()["SUCCEEDED"] == 4 and h.core.counts()["FAILED"] == 2


def test_rows_others_still_need_stay_in_memory() -> None:
    h = _h()
    h.core.submit("lead", TaskTrigger.OneTime(), "Ok")
    h.step()
    h.core.submit("lead", TaskTrigger.OneTime(initial_delay_ms=10 * HOT_MS), "Ok",
                  constraints=_c(ExistingWorkPolicy.APPEND))  # lead#2 waits on lead
    big = {"arr": {"$kmpray": "ndarray", "dtype": "float64", "shape": [20_000], "nbytes": 160_000,
                   "blake3": "ab" * 32}}  # a large value's descriptor, as an executor sends it
    h.workers["Big"] = lambda d: Success(data=big)
    h.core.submit("big", TaskTrigger.OneTime(), "Big")
    h.step()
    h.advance(3 * HOT_MS)
    assert "lead" in h.core.tasks  # a prerequisite of unfinished work
    assert "big" in h.core.tasks  # its output refers to an artifact the sweep must keep
    assert not h.core.tasks.cold


def test_prune_forgets_cold_rows_and_deletes_them_from_the_store() -> None:
    h = _h()
    h.core.submit("old", TaskTrigger.OneTime(), "Ok")
    h.step()
    h.advance(HOT_MS + 1)
    assert "old" in h.core.tasks.cold and h.store.read_tasks(["old"])
    h.advance(60_000)
    assert h.core.prune() == 1
    h.flush()
    assert "old" not in h.core.names and "old" not in h.core.tasks.cold
    assert h.store.read_tasks(["old"]) == {} and h.core.latest("old") is None
    assert sum(h.core.counts().values()) == 0 and not any(h.core.tasks.recent.values())


def test_a_restart_keeps_finished_rows_cold_as_it_reads_them() -> None:
    h = _h()
    for i in range(5):
        h.core.submit(f"t{i}", TaskTrigger.OneTime(), "Ok")
    h.core.submit("lead", TaskTrigger.OneTime(), "Ok")
    h.step()
    h.advance(HOT_MS + 1)
    assert len(h.core.tasks.cold) == 6
    h.core.submit("lead", TaskTrigger.OneTime(initial_delay_ms=10 * HOT_MS), "Ok",
                  constraints=_c(ExistingWorkPolicy.APPEND))  # lead#2 waits on lead, read back
    h.flush()
    h.restart()  # the store's rows decoded one by one: the finished ones never held whole
    assert set(h.core.tasks.cold) == {f"t{i}" for i in range(5)} and "t0" not in h.core.names
    assert set(h.core.tasks) == {"lead", "lead#2"}  # a prerequisite is read back at once
    assert h.core.names["lead"] == ["lead", "lead#2"] and h.core.dependents["lead"] == ["lead#2"]
    assert h.core.counts()["SUCCEEDED"] == 6 and h.core.counts()["ENQUEUED"] == 1
    total, newest = h.core.tasks.newest(TaskState.SUCCEEDED, "Ok", 10)  # cold ones read back
    assert total == 6 and sorted(r.key for r in newest) == ["lead", *(f"t{i}" for i in range(5))]


def test_a_row_changed_since_the_last_write_waits_for_the_next_round() -> None:
    h = _h()
    h.core.submit("a", TaskTrigger.OneTime(), "Ok")
    h.step()
    h.clock.advance(HOT_MS + 1)
    rec = h.core.tasks["a"]
    h.core.fx.persist[rec.key] = rec  # as if changed after the last flush
    assert h.core.evict_finished(h.clock.now_ms()) == 0 and "a" in h.core.tasks
    h.flush()  # written: now it may go
    assert "a" in h.core.tasks.cold


def test_the_sqlite_store_reads_row_by_row_and_still_quarantines(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "tasks.db")
    h = _h()
    h.store = store  # type: ignore[assignment]
    for i in range(4):
        h.core.submit(f"t{i}", TaskTrigger.OneTime(), "Ok" if i else "Fail")
    h.core.submit("later", TaskTrigger.OneTime(initial_delay_ms=60_000), "Ok")
    h.step()
    h.clock.advance(HOT_MS + 1)
    conn = sqlite3.connect(tmp_path / "tasks.db")
    conn.execute("UPDATE tasks SET row = ? WHERE key = 't3'", (b"not a row",))
    conn.commit()
    conn.close()
    h.restart()
    assert set(h.core.tasks.cold) == {"t0", "t1", "t2"} and set(h.core.tasks) >= {"later"}
    assert h.core.tasks.cold_info("t0").state is TaskState.FAILED
    assert [q.key for q in store.quarantined()] == ["t3"]
    assert h.core.latest("t1").info() == store.read_tasks(["t1"])["t1"].info()  # type: ignore[union-attr]


def test_the_sweep_goes_a_chunk_at_a_time_and_says_when_more_are_due() -> None:
    h = Harness(config=EngineConfig(finished_in_memory_ms=10 * HOT_MS))  # the harness's own sweep waits
    for i in range(10):
        h.core.submit(f"t{i}", TaskTrigger.OneTime(), "Ok")
    h.step()
    before = h.clock.now_ms() + 1
    assert h.core.cold_due(before) and not h.core.cold_due(before - 1)
    assert h.core.evict_finished(before, limit=4) == 4 and h.core.cold_due(before)
    assert h.core.evict_finished(before, limit=4) == 4
    assert h.core.evict_finished(before, limit=4) == 2 and not h.core.cold_due(before)
    assert len(h.core.tasks.cold) == 10 and not h.core.tasks


def test_a_listing_lists_each_row_once_while_rows_go_cold_or_come_back_meanwhile() -> None:
    """``list_tasks`` reads the cold rows from the store in parts and serves other calls
    in between (actors/scheduler_reads.py): the rows in memory are taken with the cold
    keys, at one instant. Taken after the reads, they missed every row the sweep let go
    meanwhile (200 of 100,000 in the chaos scheduler run of session 36)."""
    h = _h()
    for i in range(3):
        h.core.submit(f"old{i}", TaskTrigger.OneTime(), "Ok")
    h.step()
    h.advance(HOT_MS + 1)
    for i in range(3):
        h.core.submit(f"new{i}", TaskTrigger.OneTime(), "Ok")
    h.core.submit("later", TaskTrigger.OneTime(initial_delay_ms=60_000), "Ok")
    h.step()
    cold, in_memory = h.core.tasks.listing()
    assert sorted(cold) == ["old0", "old1", "old2"]
    assert sorted(r.key for r in in_memory) == ["later", "new0", "new1", "new2"]
    # While the reader reads the cold rows: the new ones go cold, and old0 comes back
    # (replaced by a delayed task under its name).
    h.advance(HOT_MS + 1)
    assert {"new0", "new1", "new2"} <= set(h.core.tasks.cold)
    h.core.submit("old0", TaskTrigger.OneTime(initial_delay_ms=60_000), "Ok",
                  constraints=_c(ExistingWorkPolicy.REPLACE))
    h.flush()
    listed = [*h.core.tasks.load(cold).values(), *in_memory]
    assert sorted(r.key for r in listed) == ["later", "new0", "new1", "new2", "old0", "old1", "old2"]
    assert {r.key: r.state for r in listed}["old0"] is TaskState.ENQUEUED  # as the store has it now
    cold_s, in_memory_s = h.core.tasks.listing(TaskState.SUCCEEDED)
    assert sorted(cold_s) == ["new0", "new1", "new2", "old1", "old2"] and in_memory_s == []
