"""The single-task API on a real Ray: every trigger, retries, timeouts, cancel, unique work."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

import kmpray
from kmpray import (
    FIFTEEN_MINUTES,
    ONE_HOUR,
    BackoffPolicy,
    Constraints,
    EngineConfig,
    ExistingWorkPolicy,
    ScheduleResult,
    TaskState,
    TaskTrigger,
    WorkerResult,
)

from .helpers import blocks_input, count_runs, until
from .workers import register_all

pytestmark = pytest.mark.ray
ONCE = TaskTrigger.OneTime()


def test_one_time_task_succeeds_with_its_output(vengine: Any) -> None:
    assert vengine.enqueue("a", ONCE, "Echo", input="hello") is ScheduleResult.SUCCESS
    info = vengine.wait("a", timeout_s=30)
    assert info.state is TaskState.SUCCEEDED
    assert (info.run_attempt_count, info.run_count) == (1, 1)
    assert info.result == WorkerResult.Success(message="echo", data={"input": "hello", "attempt": 0})


def test_sync_worker_bool_results_convert(vengine: Any) -> None:
    vengine.enqueue("yes", ONCE, "SyncBool", input="yes")
    vengine.enqueue("no", ONCE, "SyncBool", input="no", constraints=Constraints(max_retries=0))
    assert vengine.wait("yes", timeout_s=30).result == WorkerResult.Success()
    no = vengine.wait("no", timeout_s=30)
    assert no.state is TaskState.FAILED and no.result == WorkerResult.Failure("Task failed")


def _first_attempt_ended(sched: Any, task_id: str) -> kmpray.TaskCompletionEvent:
    sub = sched.events.subscribe(since=0)
    while (event := sub.get(timeout_s=30)) is not None:
        if event.kind == "completion" and event.task_id == task_id:
            return event
    raise AssertionError(f"no completion event for {task_id}")


def test_exception_retries_with_backoff_then_fails_with_its_text(vengine: Any) -> None:
    c = Constraints(max_retries=2, backoff_delay_ms=10_000)
    vengine.enqueue("r", ONCE, "Raises", input="x", constraints=c)
    event = _first_attempt_ended(vengine, "r")
    assert not event.success and event.message.startswith("retrying in 10000 ms: RuntimeError: kaboom x")
    first = vengine.get_task_info("r")
    assert first.state is TaskState.ENQUEUED and first.run_attempt_count == 1
    assert first.next_run_at_ms == vengine.now_ms() + 10_000
    vengine.advance_time(10_000 + 20_000)
    final = vengine.get_task_info("r")
    assert final.state is TaskState.FAILED and final.run_attempt_count == 3
    assert "RuntimeError: kaboom x" in final.result.message


def test_five_hour_backoff_is_tested_in_virtual_time(vengine: Any) -> None:
    c = Constraints(backoff_policy=BackoffPolicy.LINEAR, backoff_delay_ms=5 * ONE_HOUR)
    vengine.enqueue("slow", ONCE, "FailsThenSucceeds", input="1", constraints=c)
    assert not _first_attempt_ended(vengine, "slow").success
    vengine.advance_time(5 * ONE_HOUR - 1)
    assert vengine.get_task_info("slow").state is TaskState.ENQUEUED
    vengine.advance_time(1)
    info = vengine.get_task_info("slow")
    assert info.state is TaskState.SUCCEEDED and info.result.data == {"attempts": 2}


def test_periodic_runs_at_enqueue_then_once_per_period(vengine: Any) -> None:
    start = vengine.now_ms()
    vengine.enqueue("p", TaskTrigger.Periodic(FIFTEEN_MINUTES), "Echo")
    assert vengine.wait("p", timeout_s=30).run_count == 1
    vengine.advance_time(ONE_HOUR)
    info = vengine.get_task_info("p")
    assert info.state is TaskState.ENQUEUED and info.run_count == 5
    assert info.next_run_at_ms == start + 5 * FIFTEEN_MINUTES


def test_exact_trigger_fires_at_its_instant(vengine: Any) -> None:
    at = vengine.now_ms() + ONE_HOUR
    vengine.enqueue("x", TaskTrigger.Exact(at), "Echo")
    vengine.advance_time(ONE_HOUR - 1)
    assert vengine.get_task_info("x").state is TaskState.ENQUEUED
    vengine.advance_time(1)
    info = vengine.get_task_info("x")
    assert info.state is TaskState.SUCCEEDED and info.updated_at_ms == at


def test_windowed_runs_inside_the_window_and_passed_windows_are_rejected(vengine: Any) -> None:
    now = vengine.now_ms()
    vengine.enqueue("w", TaskTrigger.Windowed(now + 60_000, now + 120_000), "Echo")
    vengine.advance_time(59_000)
    assert vengine.get_task_info("w").state is TaskState.ENQUEUED
    vengine.advance_time(2_000)
    assert vengine.get_task_info("w").state is TaskState.SUCCEEDED
    assert vengine.enqueue("old", TaskTrigger.Windowed(now - 10, now - 1), "Echo") is ScheduleResult.REJECTED_INVALID_PARAMS
    assert "ended" in vengine.last_reason


def test_timeout_cancels_an_overrunning_run_as_a_failed_attempt(engines: Any) -> None:
    sched = engines()
    register_all(sched)
    sched.enqueue("t", ONCE, "Sleeps", input="30", constraints=Constraints(timeout_ms=200, max_retries=0))
    info = sched.wait("t", timeout_s=30)
    assert info.state is TaskState.FAILED and "timed out after 200 ms" in info.result.message


def test_cancel_a_running_task(vengine: Any, tmp_path: Path) -> None:
    inp, started, _release = blocks_input(tmp_path, "c")
    vengine.enqueue("c", ONCE, "Blocks", input=inp)
    # RUNNING once the executor reports that the worker began (within ~20 ms of it).
    until(lambda: vengine.get_task_info("c").state is TaskState.RUNNING, what="run start")
    assert started.exists()
    assert vengine.cancel("c") == 1
    info = vengine.wait("c", timeout_s=10)
    assert info.state is TaskState.CANCELLED and info.result is None


def test_concurrent_enqueues_of_one_id_never_both_run(engines: Any, tmp_path: Path) -> None:
    sched = engines()
    register_all(sched)
    log = tmp_path / "runs.log"
    results: list[ScheduleResult] = []

    def submit(i: int) -> None:
        results.append(sched.enqueue("only", ONCE, "Echo", input=json.dumps({"log": str(log), "i": i})))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [ScheduleResult.SUCCESS] * 16
    assert sched.wait("only", timeout_s=30).state is TaskState.SUCCEEDED
    assert count_runs(str(log)) == 1


def test_replace_cancels_running_work_and_runs_the_new(vengine: Any, tmp_path: Path) -> None:
    inp, started, _ = blocks_input(tmp_path, "r")
    vengine.enqueue("u", ONCE, "Blocks", input=inp)
    until(started.exists, what="old run start")
    rep = Constraints(existing_work_policy=ExistingWorkPolicy.REPLACE)
    assert vengine.enqueue("u", ONCE, "Echo", input="new", constraints=rep) is ScheduleResult.SUCCESS
    info = vengine.wait("u", timeout_s=30)
    assert info.state is TaskState.SUCCEEDED and info.worker_class_name == "Echo"


def test_append_runs_after_existing_work_with_its_data(vengine: Any, tmp_path: Path) -> None:
    inp, started, release = blocks_input(tmp_path, "a")
    vengine.enqueue("u", ONCE, "Blocks", input=inp)
    app = Constraints(existing_work_policy=ExistingWorkPolicy.APPEND)
    vengine.enqueue("u", ONCE, "Echo", constraints=app)
    assert vengine.get_task_info("u").id == "u#2"
    assert vengine.get_task_info("u").state is TaskState.BLOCKED
    until(started.exists, what="first run")
    release.touch()
    info = vengine.wait("u", timeout_s=30)
    assert info.state is TaskState.SUCCEEDED
    assert info.result.data["input"] == '{"released": true}'


def test_unknown_worker_and_bad_input_are_rejected_and_the_engine_keeps_serving(vengine: Any) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"id": "u", "trigger": ONCE, "worker_class_name": "NotRegistered"}, "not a registered worker"),
        # A dotted name is a registry key like any other, never a module path to import.
        ({"id": "sys", "trigger": ONCE, "worker_class_name": "os.system", "input": "touch /tmp/kmpray-canary"},
         "not a registered worker"),
        ({"id": "ev", "trigger": ONCE, "worker_class_name": "builtins.eval", "input": "1"}, "not a registered worker"),
        ({"id": "", "trigger": ONCE, "worker_class_name": "Echo"}, "non-empty"),
        ({"id": "x" * 300, "trigger": ONCE, "worker_class_name": "Echo"}, "limit of 256"),
        ({"id": "big", "trigger": ONCE, "worker_class_name": "Echo", "input": "x" * (1024 * 1024 + 1)}, "cap"),
        ({"id": "neg", "trigger": {"kind": "one_time", "initial_delay_ms": -5}, "worker_class_name": "Echo"}, "initial_delay_ms"),
        ({"id": "typ", "trigger": ONCE, "worker_class_name": "Echo", "constraints": "fast"}, "constraints"),
    ]
    for kwargs, why in cases:
        assert vengine.enqueue(**kwargs) is ScheduleResult.REJECTED_INVALID_PARAMS, kwargs["id"][:10]
        assert why in vengine.last_reason, (why, vengine.last_reason)
    assert any("NotRegistered" in reason for _id, _res, reason in vengine.rejections())
    assert vengine.list_tasks() == []
    assert vengine.enqueue("fine", ONCE, "Echo") is ScheduleResult.SUCCESS
    assert vengine.wait("fine", timeout_s=30).state is TaskState.SUCCEEDED


def test_worker_that_cannot_be_constructed_fails_at_once(vengine: Any) -> None:
    vengine.enqueue("b", ONCE, "BrokenInit")
    info = vengine.wait("b", timeout_s=30)
    assert info.state is TaskState.FAILED and info.run_attempt_count == 1
    assert "could not be constructed" in info.result.message and "no config" in info.result.message


def test_output_that_cannot_be_stored_fails_clearly(vengine: Any) -> None:
    vengine.enqueue("h", ONCE, "HugeOutput")
    info = vengine.wait("h", timeout_s=30)
    assert info.state is TaskState.FAILED and "not msgpack-serializable" in info.result.message


def test_admission_control_answers_os_policy(engines: Any) -> None:
    sched = engines(virtual_time=True, config=EngineConfig(max_pending_tasks=1))
    register_all(sched)
    assert sched.enqueue("a", TaskTrigger.OneTime(ONE_HOUR), "Echo") is ScheduleResult.SUCCESS
    assert sched.enqueue("b", ONCE, "Echo") is ScheduleResult.REJECTED_OS_POLICY
    assert "admission" in sched.last_reason


def test_platform_profiles(engines: Any) -> None:
    ios = engines(virtual_time=True, platform="ios")
    register_all(ios)
    assert ios.enqueue("c", TaskTrigger.ContentUri("content://x"), "Echo") is ScheduleResult.REJECTED_OS_POLICY
    assert ios.enqueue("p", TaskTrigger.Periodic(60_000), "Echo") is ScheduleResult.REJECTED_INVALID_PARAMS
    assert ios.enqueue("p", TaskTrigger.Periodic(FIFTEEN_MINUTES), "Echo") is ScheduleResult.SUCCESS
    with pytest.raises(ValueError, match="platform"):
        kmpray.connect(namespace="never", platform="windows")


def test_advance_time_needs_virtual_time(engines: Any) -> None:
    sched = engines()
    with pytest.raises(kmpray.VirtualTimeOnly):
        sched.advance_time(1_000)


def test_list_tasks_filters_by_state(vengine: Any) -> None:
    vengine.enqueue("done", ONCE, "Echo")
    vengine.wait("done", timeout_s=30)
    vengine.enqueue("later", TaskTrigger.OneTime(ONE_HOUR), "Echo")
    assert {t.id for t in vengine.list_tasks()} == {"done", "later"}
    assert [t.id for t in vengine.list_tasks(TaskState.ENQUEUED)] == ["later"]
    assert vengine.cancel_all() == 1
    assert vengine.get_task_info("later").state is TaskState.CANCELLED


def test_wait_bounds(vengine: Any) -> None:
    vengine.enqueue("later", TaskTrigger.OneTime(ONE_HOUR), "Echo")
    with pytest.raises(TimeoutError):
        vengine.wait("later", timeout_s=0.3)
    with pytest.raises(KeyError):
        vengine.wait("missing", timeout_s=1)


def test_async_twins(vengine: Any) -> None:
    import asyncio

    async def flow() -> tuple[Any, ...]:
        r = await vengine.enqueue_async("x", ONCE, "Echo", input="async")
        info = await vengine.wait_async("x", timeout_s=30)
        await vengine.enqueue_async("y", TaskTrigger.OneTime(ONE_HOUR), "Echo")
        cancelled = await vengine.cancel_async("y")
        y = await vengine.get_task_info_async("y")
        return r, info, cancelled, y, await vengine.cancel_all_async()

    r, info, cancelled, y, rest = asyncio.run(asyncio.wait_for(flow(), 60))
    assert r is ScheduleResult.SUCCESS and info.result.data["input"] == "async"
    assert cancelled == 1 and y.state is TaskState.CANCELLED and rest == 0


def test_executor_concurrency_bounds_runs_in_flight(engines: Any, tmp_path: Path) -> None:
    sched = engines(config=EngineConfig(executors=1, executor_concurrency=1))
    register_all(sched)
    ins = [blocks_input(tmp_path, f"b{i}") for i in range(3)]
    for i, (inp, _started, _release) in enumerate(ins):
        sched.enqueue(f"b{i}", ONCE, "Blocks", input=inp)
    until(lambda: sched.get_task_info("b0").state is TaskState.RUNNING, what="first run")
    assert [s.exists() for _, s, _ in ins] == [True, False, False]
    # All three were handed to the executor; two wait for its one slot: shown ENQUEUED.
    assert sched.status()["inflight_by_node"] and sum(sched.status()["inflight_by_node"].values()) == 3
    assert [sched.get_task_info(f"b{i}").state for i in range(3)] == [TaskState.RUNNING] + [TaskState.ENQUEUED] * 2
    ins[0][2].touch()
    until(ins[1][1].exists, what="second run",
          explain=lambda: (sched.status(), [sched.explain(f"b{i}") for i in range(3)]))
    assert not ins[2][1].exists()
    ins[1][2].touch()
    ins[2][2].touch()
    assert sched.wait("b2", timeout_s=30).state is TaskState.SUCCEEDED


def test_a_real_time_retry_fires_without_other_activity(engines: Any) -> None:
    sched = engines()
    register_all(sched)
    c = Constraints(backoff_delay_ms=50, max_retries=3)
    sched.enqueue("r", ONCE, "FailsThenSucceeds", input="2", constraints=c)
    info = sched.wait("r", timeout_s=30)
    assert info.state is TaskState.SUCCEEDED and info.run_attempt_count == 3


def test_a_timed_run_handed_over_early_begins_at_its_due_time_and_can_still_be_cancelled(engines: Any) -> None:
    import time

    import ray

    sched = engines(config=EngineConfig(executors=1, timer_lead_ms=5_000))
    register_all(sched)
    due = int(time.time() * 1000) + 1_500
    sched.enqueue("at", TaskTrigger.Exact(due), "Stamp")
    sched.enqueue("dropped", TaskTrigger.Exact(due), "Stamp")
    # Within the lead: both handed to the executor at once, waiting there (shown ENQUEUED).
    until(lambda: sum(sched.status()["inflight_by_node"].values()) == 2, what="runs handed over early")
    assert sched.get_task_info("at").state is TaskState.ENQUEUED
    assert sched.cancel("dropped") == 1
    executor = ray.get_actor("kmpray.executor.0", namespace=sched.namespace)
    until(lambda: [k[0] for k in ray.get(executor.holding.remote(), timeout=10)[1]] == ["at"],
          what="the executor to drop the cancelled run")
    info = sched.wait("at", timeout_s=30)
    assert info.state is TaskState.SUCCEEDED
    assert info.result.data["began_ms"] >= due  # never early
    dropped = sched.get_task_info("dropped")
    assert dropped.state is TaskState.CANCELLED and dropped.run_attempt_count == 0


def test_the_scheduler_keeps_its_live_tasks_out_of_full_garbage_collections(engines: Any) -> None:
    """Restored rows are frozen at start and everything alive again every second
    (kmpray/timing.py GC_FULL_S): a full collection then scans only what is new, instead
    of pausing the scheduler for every task it holds (the p99 spikes of a 3,000/s load)."""
    import ray

    from .helpers import until

    sched = engines()
    actor = ray.get_actor("kmpray.scheduler", namespace=sched.namespace)

    def frozen() -> int:
        return int(ray.get(actor.__ray_call__.remote(lambda self: __import__("gc").get_freeze_count()), timeout=30))

    first = frozen()
    assert first > 1000  # the restore froze the engine's start-up objects
    sched.enqueue_many([kmpray.TaskRequest("Echo", id=f"gc{i}") for i in range(200)])
    until(lambda: frozen() > first, what="housekeeping freezing the new tasks")
