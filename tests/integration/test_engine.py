"""The single-task API on a real Ray: every trigger, retries, timeouts, cancel, unique work,
bad input, virtual time, waits. Worker code gone wrong is in test_worker_code.py, the light
executors' own behaviour in test_executors.py."""

from __future__ import annotations

import logging
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

from .helpers import began, blocks_input, one_name_from_many_threads, until, until_task
from .workers import register_all

pytestmark = pytest.mark.ray
ONCE = TaskTrigger.OneTime()


def test_one_time_task_succeeds_with_its_output(svengine: Any) -> None:
    assert svengine.enqueue("a", ONCE, "Echo", input="hello") is ScheduleResult.SUCCESS
    info = svengine.wait("a", timeout_s=30)
    assert info.state is TaskState.SUCCEEDED
    assert (info.run_attempt_count, info.run_count) == (1, 1)
    assert info.result == WorkerResult.Success(message="echo", data={"input": "hello", "attempt": 0})


def test_sync_worker_bool_results_convert(svengine: Any) -> None:
    svengine.enqueue("yes", ONCE, "SyncBool", input="yes")
    svengine.enqueue("no", ONCE, "SyncBool", input="no", constraints=Constraints(max_retries=0))
    assert svengine.wait("yes", timeout_s=30).result == WorkerResult.Success()
    no = svengine.wait("no", timeout_s=30)
    assert no.state is TaskState.FAILED and no.result == WorkerResult.Failure("Task failed")


def _first_attempt_ended(sched: Any, task_id: str) -> kmpray.TaskCompletionEvent:
    sub = sched.events.subscribe(since=0)
    while (event := sub.get(timeout_s=30)) is not None:
        if event.kind == "completion" and event.task_id == task_id:
            return event
    raise AssertionError(f"no completion event for {task_id}")


def test_exception_retries_with_backoff_then_fails_with_its_text(svengine: Any) -> None:
    c = Constraints(max_retries=2, backoff_delay_ms=10_000)
    svengine.enqueue("r", ONCE, "Raises", input="x", constraints=c)
    event = _first_attempt_ended(svengine, "r")
    assert not event.success and event.message.startswith("retrying in 10000 ms: RuntimeError: kaboom x")
    first = svengine.get_task_info("r")
    assert first.state is TaskState.ENQUEUED and first.run_attempt_count == 1
    assert first.next_run_at_ms == svengine.now_ms() + 10_000
    svengine.advance_time(10_000 + 20_000)
    final = svengine.get_task_info("r")
    assert final.state is TaskState.FAILED and final.run_attempt_count == 3
    assert "RuntimeError: kaboom x" in final.result.message


def test_five_hour_backoff_is_tested_in_virtual_time(svengine: Any) -> None:
    c = Constraints(backoff_policy=BackoffPolicy.LINEAR, backoff_delay_ms=5 * ONE_HOUR)
    svengine.enqueue("slow", ONCE, "FailsThenSucceeds", input="1", constraints=c)
    assert not _first_attempt_ended(svengine, "slow").success
    svengine.advance_time(5 * ONE_HOUR - 1)
    assert svengine.get_task_info("slow").state is TaskState.ENQUEUED
    svengine.advance_time(1)
    info = svengine.get_task_info("slow")
    assert info.state is TaskState.SUCCEEDED and info.result.data == {"attempts": 2}


def test_periodic_runs_at_enqueue_then_once_per_period(svengine: Any) -> None:
    start = svengine.now_ms()
    svengine.enqueue("p", TaskTrigger.Periodic(FIFTEEN_MINUTES), "Echo")
    # Not wait(): on a periodic task it waits for a run that ends after the call, and a
    # warm executor may have finished the first run already.
    until_task(svengine, "p", lambda t: t.run_count == 1, what="the run at enqueue")
    svengine.advance_time(ONE_HOUR)
    info = svengine.get_task_info("p")
    assert info.state is TaskState.ENQUEUED and info.run_count == 5
    assert info.next_run_at_ms == start + 5 * FIFTEEN_MINUTES


def test_exact_trigger_fires_at_its_instant(svengine: Any) -> None:
    at = svengine.now_ms() + ONE_HOUR
    svengine.enqueue("x", TaskTrigger.Exact(at), "Echo")
    svengine.advance_time(ONE_HOUR - 1)
    assert svengine.get_task_info("x").state is TaskState.ENQUEUED
    svengine.advance_time(1)
    info = svengine.get_task_info("x")
    assert info.state is TaskState.SUCCEEDED and info.updated_at_ms == at


def test_windowed_runs_inside_the_window_and_passed_windows_are_rejected(svengine: Any) -> None:
    now = svengine.now_ms()
    svengine.enqueue("w", TaskTrigger.Windowed(now + 60_000, now + 120_000), "Echo")
    svengine.advance_time(59_000)
    assert svengine.get_task_info("w").state is TaskState.ENQUEUED
    svengine.advance_time(2_000)
    assert svengine.get_task_info("w").state is TaskState.SUCCEEDED
    passed = TaskTrigger.Windowed(now - 10, now - 1)
    assert svengine.enqueue("old", passed, "Echo") is ScheduleResult.REJECTED_INVALID_PARAMS
    assert "ended" in svengine.last_reason


def test_timeout_cancels_an_overrunning_run_as_a_failed_attempt(sengine: Any) -> None:
    sched = sengine
    sched.enqueue("t", ONCE, "Sleeps", input="30", constraints=Constraints(timeout_ms=200, max_retries=0))
    info = sched.wait("t", timeout_s=30)
    assert info.state is TaskState.FAILED and "timed out after 200 ms" in info.result.message


def test_cancel_a_running_task(svengine: Any, tmp_path: Path) -> None:
    inp, started, _release = blocks_input(tmp_path, "c")
    svengine.enqueue("c", ONCE, "Blocks", input=inp)
    # RUNNING once the executor reports that the worker began (within ~20 ms of it).
    until_task(svengine, "c", lambda t: t.state is TaskState.RUNNING, what="run start")
    assert started.exists()
    assert svengine.cancel("c") == 1
    info = svengine.wait("c", timeout_s=10)
    assert info.state is TaskState.CANCELLED and info.result is None


def test_concurrent_enqueues_of_one_id_never_both_run(sengine: Any, tmp_path: Path) -> None:
    results, runs = one_name_from_many_threads(sengine, "only", tmp_path)
    assert results == [ScheduleResult.SUCCESS] * 16
    assert runs == 1


def test_concurrent_enqueues_share_messages_and_each_caller_gets_its_own_answer(sengine: Any) -> None:
    """8 threads x 40 enqueue() calls: calls overlapping one in flight go out together
    (fewer enqueue messages than calls), and a rejected item in a group (an unknown
    worker) is rejected alone, with its own reason, while its group-mates run."""
    sched = sengine
    before = sched.status()["messages"]["enqueue_calls"]
    results: dict[str, ScheduleResult] = {}

    def submit(t: int) -> None:
        for i in range(40):
            worker = "NoSuchWorker" if i % 10 == 9 else "Echo"
            results[f"cc{t}-{i}"] = sched.enqueue(f"cc{t}-{i}", ONCE, worker, input=f"{t}/{i}")

    threads = [threading.Thread(target=submit, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    messages = sched.status()["messages"]["enqueue_calls"] - before
    bad = {f"cc{t}-{i}" for t in range(8) for i in range(40) if i % 10 == 9}
    assert len(results) == 320 and len(bad) == 32
    assert {results[k] for k in bad} == {ScheduleResult.REJECTED_INVALID_PARAMS}
    assert {results[k] for k in results.keys() - bad} == {ScheduleResult.SUCCESS}
    assert messages < 320, "no two calls shared a message"
    rejected = {r[0]: r[2] for r in sched.rejections(limit=100)}
    assert all("NoSuchWorker" in rejected[k] for k in bad)
    infos = sched.wait(sorted(results.keys() - bad), timeout_s=120)
    assert {i.state for i in infos} == {TaskState.SUCCEEDED}
    assert all(i.result.data["input"] == "{}/{}".format(*i.id[2:].split("-")) for i in infos)
    assert all(sched.get_task_info(k) is None for k in bad)


def test_replace_cancels_running_work_and_runs_the_new(svengine: Any, tmp_path: Path) -> None:
    inp, started, _ = blocks_input(tmp_path, "r")
    svengine.enqueue("ur", ONCE, "Blocks", input=inp)
    until(began(started), what="old run start")
    rep = Constraints(existing_work_policy=ExistingWorkPolicy.REPLACE)
    assert svengine.enqueue("ur", ONCE, "Echo", input="new", constraints=rep) is ScheduleResult.SUCCESS
    info = svengine.wait("ur", timeout_s=30)
    assert info.state is TaskState.SUCCEEDED and info.worker_class_name == "Echo"


def test_append_runs_after_existing_work_with_its_data(svengine: Any, tmp_path: Path) -> None:
    inp, started, release = blocks_input(tmp_path, "a")
    svengine.enqueue("ua", ONCE, "Blocks", input=inp)
    app = Constraints(existing_work_policy=ExistingWorkPolicy.APPEND)
    svengine.enqueue("ua", ONCE, "Echo", constraints=app)
    assert svengine.get_task_info("ua").id == "ua#2"
    assert svengine.get_task_info("ua").state is TaskState.BLOCKED
    until(began(started), what="first run")
    release.touch()
    info = svengine.wait("ua", timeout_s=30)
    assert info.state is TaskState.SUCCEEDED
    assert info.result.data["input"] == '{"released": true}'


def test_unknown_worker_and_bad_input_are_rejected_and_the_engine_keeps_serving(svengine: Any) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"id": "nr", "trigger": ONCE, "worker_class_name": "NotRegistered"}, "not a registered worker"),
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
        assert svengine.enqueue(**kwargs) is ScheduleResult.REJECTED_INVALID_PARAMS, kwargs["id"][:10]
        assert why in svengine.last_reason, (why, svengine.last_reason)
    assert any("NotRegistered" in reason for _id, _res, reason in svengine.rejections())
    # A huge value is echoed cut: the reason, the log line and the rejection kept (in the
    # scheduler's memory, 1,000 of them) held a 300,000-character id or worker name whole.
    assert svengine.enqueue("huge-w", ONCE, "W" * 300_000) is ScheduleResult.REJECTED_INVALID_PARAMS
    assert len(svengine.last_reason) < 200 and "(300,000 characters)" in svengine.last_reason
    assert svengine.enqueue("i" * 300_000, ONCE, "Echo") is ScheduleResult.REJECTED_INVALID_PARAMS
    kept = svengine.rejections(limit=2)
    assert [len(rid) for rid, _res, _why in kept] == [len("huge-w"), len(kept[1][0])]
    assert kept[1][0].endswith("… (300,000 characters)") and len(kept[1][0]) < 120
    assert all(len(why) < 200 for _rid, _res, why in kept)
    assert not {t.id for t in svengine.list_tasks()} & {kw["id"] for kw, _why in cases}  # none was stored
    assert svengine.enqueue("fine", ONCE, "Echo") is ScheduleResult.SUCCESS
    assert svengine.wait("fine", timeout_s=30).state is TaskState.SUCCEEDED


def test_enqueue_many_refuses_a_malformed_item_before_sending_any(svengine: Any) -> None:
    ok = {"id": "em-ok", "worker_class_name": "Echo"}
    with pytest.raises(kmpray.InvalidParameters, match=r"requests\[1\]: expected a TaskRequest or a dict.*got tuple"):
        svengine.enqueue_many([ok, ("em-t", ONCE, "Echo")])
    typo = {"id": "em-typo", "worker_class_name": "Echo", "constrains": {"requires_charging": True}}
    with pytest.raises(kmpray.InvalidParameters, match=r"requests\[1\]: unknown key\(s\) 'constrains'"):
        svengine.enqueue_many([ok, typo])  # it would have run with no constraints
    assert svengine.get_task_info("em-ok") is None  # nothing of either call was sent
    assert svengine.enqueue_many([ok, {"id": "em-2", "worker_class_name": "Echo", "input": "x"}]) == [
        ScheduleResult.SUCCESS, ScheduleResult.SUCCESS]


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


def test_advance_time_needs_virtual_time(sengine: Any) -> None:
    sched = sengine
    with pytest.raises(kmpray.VirtualTimeOnly):
        sched.advance_time(1_000)


def test_advance_time_takes_whole_milliseconds(svengine: Any) -> None:
    before = svengine.now_ms()
    for bad, name in [("10", "str"), (1.5, "float"), (True, "bool")]:
        with pytest.raises(TypeError, match=f"advance_time: ms must be an int of milliseconds, got {name}"):
            svengine.advance_time(bad)
    with pytest.raises(ValueError, match="ms must be >= 0"):
        svengine.advance_time(-5)
    assert svengine.now_ms() == before and svengine.advance_time(7) == before + 7


def test_advance_time_calls_made_at_once_each_move_the_clock_their_own_ms(svengine: Any) -> None:
    """Two threads advancing 1,000 ms each while a run due on the way takes real time: the
    second began from the first's stop (+500) as that one settled, so together they moved
    the clock 1,500 ms. They take turns now: +1,000 and +2,000."""
    svengine.enqueue("turns", TaskTrigger.OneTime(500), "Sleeps", input="0.5")
    before, returned = svengine.now_ms(), []
    threads = [threading.Thread(target=lambda: returned.append(svengine.advance_time(1_000) - before))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(returned) == [1_000, 2_000] and svengine.now_ms() == before + 2_000
    assert svengine.get_task_info("turns").state is TaskState.SUCCEEDED


def test_connecting_to_a_running_engine_with_another_config_or_state_dir_says_so(
        engines: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A connect to an engine that runs already attaches to it as it runs; before session 42
    a config or state_dir given then was ignored without a word (tasks went to the running
    engine's state dir, under its limits). Now each difference is said, once per connect."""
    first = engines(config=EngineConfig(max_input_bytes=100, event_retention=50))
    with caplog.at_level(logging.WARNING, logger="kmpray"):
        again = kmpray.connect(namespace=first.namespace, state_dir=first.state_dir,
                               config=EngineConfig(max_input_bytes=100))
        assert not [r for r in caplog.records if "already running" in r.getMessage()]
        other = kmpray.connect(namespace=first.namespace, state_dir=str(tmp_path / "elsewhere"),
                               config=EngineConfig(max_input_bytes=10_000, event_retention=50))
    said = [r.getMessage() for r in caplog.records if "already running" in r.getMessage()]
    assert len(said) == 2, said
    # the same kmpray on both sides: the attaching client loaded the engine's actor classes
    # (a handle found by name, the class unpickled here) and heard of no other version
    assert not [r for r in caplog.records if "kmpray" in r.getMessage() and "version" in r.getMessage()]
    assert "items" in [p.name for p in again._schedulers[0]._ray_method_signatures["register_workers"]]
    assert "its state in " + first.state_dir in said[0] and "elsewhere" in said[0]
    assert said[1].endswith("attaching to it as it is: max_input_bytes=10000 (running: 100)")
    assert other.enqueue("big", ONCE, "Echo", input="x" * 200) is ScheduleResult.REJECTED_INVALID_PARAMS
    assert again.namespace == other.namespace == first.namespace


def test_list_tasks_filters_by_state(vengine: Any) -> None:
    vengine.enqueue("done", ONCE, "Echo")
    vengine.wait("done", timeout_s=30)
    vengine.enqueue("later", TaskTrigger.OneTime(ONE_HOUR), "Echo")
    assert {t.id for t in vengine.list_tasks()} == {"done", "later"}
    assert [t.id for t in vengine.list_tasks(TaskState.ENQUEUED)] == ["later"]
    assert vengine.cancel_all() == 1
    assert vengine.get_task_info("later").state is TaskState.CANCELLED


def test_wait_bounds(svengine: Any) -> None:
    import asyncio

    svengine.enqueue("wb", TaskTrigger.OneTime(ONE_HOUR), "Echo")
    with pytest.raises(TimeoutError):
        svengine.wait("wb", timeout_s=0.3)
    with pytest.raises(TimeoutError):
        svengine.wait("wb", timeout_s=0)
    with pytest.raises(KeyError):
        svengine.wait("missing", timeout_s=1)
    # A wait looks once before its time is up: finished work is returned with no time left
    # (as concurrent.futures' result(timeout=0) of a done future).
    svengine.enqueue("wd", ONCE, "Echo")
    assert svengine.wait("wd", timeout_s=30).state is TaskState.SUCCEEDED
    for timeout_s in (0, -1):
        assert svengine.wait("wd", timeout_s=timeout_s).state is TaskState.SUCCEEDED
        assert asyncio.run(svengine.wait_async("wd", timeout_s=timeout_s)).state is TaskState.SUCCEEDED
    with pytest.raises(TimeoutError, match="'wb' not finished"):
        svengine.wait(["wd", "wb"], timeout_s=0)


def test_wait_on_many_ids(svengine: Any) -> None:
    # wait([...]) asks about the tasks in one call per shard and round (two calls per id
    # took 80 s for 20,000 finished tasks): each comes back in order, a chain and a
    # repeated id too, and an unknown id raises at once, not after the others finished.
    from kmpray.client import TaskNotFound

    ids = [f"wm{i}" for i in range(200)]
    svengine.enqueue_many([kmpray.TaskRequest("Echo", id=i) for i in ids])
    svengine.begin_with(kmpray.TaskRequest("Echo", id="wmc1")).with_id("wmchain").enqueue()
    infos = svengine.wait([*ids, "wmchain", ids[0]], timeout_s=60)
    assert [i.id for i in infos] == [*ids, "wmchain", ids[0]]
    assert all(i.state is TaskState.SUCCEEDED for i in infos[:200])
    assert isinstance(infos[200], kmpray.ChainInfo) and infos[200].state is TaskState.SUCCEEDED
    assert infos[0].result.data["input"] is None and infos[201] == infos[0]
    svengine.enqueue("wmlater", TaskTrigger.OneTime(ONE_HOUR), "Echo")
    with pytest.raises(TaskNotFound, match="wm-missing"):  # one by one: TimeoutError after 20 s
        svengine.wait(["wmlater", "wm-missing"], timeout_s=20)
    with pytest.raises(TimeoutError, match="'wmlater' not finished"):  # the one left, named
        svengine.wait([*ids, "wmlater"], timeout_s=0.2)


def test_async_twins(svengine: Any) -> None:
    import asyncio

    async def flow() -> tuple[Any, ...]:
        r = await svengine.enqueue_async("ax", ONCE, "Echo", input="async")
        info = await svengine.wait_async("ax", timeout_s=30)
        await svengine.enqueue_async("ay", TaskTrigger.OneTime(ONE_HOUR), "Echo")
        cancelled = await svengine.cancel_async("ay")
        y = await svengine.get_task_info_async("ay")
        return r, info, cancelled, y, await svengine.cancel_all_async()

    r, info, cancelled, y, rest = asyncio.run(asyncio.wait_for(flow(), 60))
    assert r is ScheduleResult.SUCCESS and info.result.data["input"] == "async"
    assert cancelled == 1 and y.state is TaskState.CANCELLED and rest == 0
