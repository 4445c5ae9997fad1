"""The single-task API on a real Ray: every trigger, retries, timeouts, cancel, unique work."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kmpray.actors import bootstrap

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

from . import workers
from .helpers import ONE_SHARD, began, blocks_input, one_name_from_many_threads, until
from .workers import count_runs, register_all

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
    until(lambda: svengine.get_task_info("p").run_count == 1, what="the run at enqueue")
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
    until(lambda: svengine.get_task_info("c").state is TaskState.RUNNING, what="run start")
    assert started.exists()
    assert svengine.cancel("c") == 1
    info = svengine.wait("c", timeout_s=10)
    assert info.state is TaskState.CANCELLED and info.result is None


@ONE_SHARD  # it reaches into shard 0's executor
def test_an_executor_forgets_a_cancel_once_the_run_ended_and_keeps_marks_for_absent_runs_bounded(
    engines: Any, tmp_path: Path
) -> None:
    """A cancelled run's mark leaves with the run (it was kept for the executor's whole
    life: one entry per cancelled run, a leak under REPLACE churn); marks for runs that
    are not there (a Ray cancel overtaking the lane's submit, a handed chain task) are
    honoured when the run comes and kept for the latest EARLY_CANCELS only."""
    import ray
    from kmpray.actors.executor_cancel import EARLY_CANCELS

    sched = engines(config=EngineConfig(executors=1))
    register_all(sched)
    executor = ray.get_actor("kmpray.executor.0", namespace=sched.namespace)

    def peek(fn: Any) -> Any:
        return ray.get(executor.__ray_call__.remote(fn), timeout=30)

    for name in ("c1", "c2"):
        inp, started, _release = blocks_input(tmp_path, name)
        sched.enqueue(name, ONCE, "Blocks", input=inp)
        until(began(started), what=f"{name} started")
        assert sched.cancel(name) == 1
        assert sched.wait(name, timeout_s=10).state is TaskState.CANCELLED
    until(lambda: peek(lambda self: not self._tasks), timeout_s=10, what="the cancelled runs ended")
    assert peek(lambda self: (len(self._cancelled), len(self._cancelled_early))) == (0, 0)
    # Cancels for runs that never come: at most EARLY_CANCELS marks stay, the latest.
    ray.get(executor.cancel.remote([(f"ghost{i}", 1) for i in range(EARLY_CANCELS + 5)]), timeout=30)
    kept, early, latest, oldest = peek(lambda self: (
        len(self._cancelled), len(self._cancelled_early),
        (f"ghost{EARLY_CANCELS + 4}", 1) in self._cancelled, ("ghost0", 1) in self._cancelled))
    assert (kept, early, latest, oldest) == (EARLY_CANCELS, EARLY_CANCELS, True, False)


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


def test_worker_that_cannot_be_constructed_fails_at_once(svengine: Any) -> None:
    svengine.enqueue("b", ONCE, "BrokenInit")
    info = svengine.wait("b", timeout_s=30)
    assert info.state is TaskState.FAILED and info.run_attempt_count == 1
    assert "could not be constructed" in info.result.message and "no config" in info.result.message


def test_a_class_that_does_not_load_on_the_executor_fails_at_once(svengine: Any) -> None:
    """Its code uses a module only the driver has (a notebook's helper module): unpickling
    it on the executor raises ModuleNotFoundError. A failed attempt, not retried; never a
    run left unreported (RUNNING for good)."""
    import importlib.machinery
    import sys
    import types

    helper = types.ModuleType("kmpray_driver_only_helper")
    helper.__file__ = "/nonexistent/kmpray_driver_only_helper.py"
    helper.__spec__ = importlib.machinery.ModuleSpec(helper.__name__, None, origin=helper.__file__)
    sys.modules[helper.__name__] = helper  # pickled by reference: imported by name where it loads
    try:
        class UsesDriverModule(kmpray.CommonWorker):
            def do_work(self, input: str | None) -> bool:  # noqa: A002
                return bool(helper)

        svengine.register_worker("UsesDriverModule", UsesDriverModule)
    finally:
        del sys.modules[helper.__name__]
    svengine.enqueue("driver-only", ONCE, "UsesDriverModule", constraints=Constraints(max_retries=3))
    info = svengine.wait("driver-only", timeout_s=30)
    assert info.state is TaskState.FAILED and info.run_attempt_count == 1, info
    assert info.result.message == (
        "worker 'UsesDriverModule' could not be constructed: ModuleNotFoundError: No module named "
        "'kmpray_driver_only_helper' (not importable where the worker runs: install "
        "'kmpray_driver_only_helper' on every node, or ship it with ray.init(runtime_env={'py_modules': "
        "[...]}))")  # the hint: session 42


def test_sys_exit_in_a_worker_is_a_failed_attempt_not_a_stuck_task(svengine: Any) -> None:
    """sys.exit() passes `except Exception`, and asyncio hands SystemExit to the event loop:
    the run went unreported and its task stayed RUNNING for good (so did a CancelledError
    the worker raised itself, taken for the engine's cancel, and GeneratorExit)."""
    once = Constraints(max_retries=0)
    svengine.enqueue("x-sync", ONCE, "Exits", input="sync:3", constraints=once)
    svengine.enqueue("x-async", ONCE, "Exits", input="async:4", constraints=once)
    # a timeout wraps the run in its own asyncio task (wait_for): the path where the
    # loop itself would have been handed the SystemExit
    timed = Constraints(max_retries=0, timeout_ms=30_000)
    svengine.enqueue("x-timed", ONCE, "Exits", input="async:5", constraints=timed)
    svengine.enqueue("x-init", ONCE, "ExitsInInit")
    retried_once = Constraints(max_retries=1, backoff_delay_ms=10_000)
    svengine.enqueue("x-retried", ONCE, "Exits", input="sync:6", constraints=retried_once)
    for id_, code in [("x-sync", "3"), ("x-async", "4"), ("x-timed", "5")]:
        info = svengine.wait(id_, timeout_s=30)
        assert info.state is TaskState.FAILED and info.result.message.endswith(f"SystemExit: {code}"), info
    init = svengine.wait("x-init", timeout_s=30)
    assert init.state is TaskState.FAILED and "could not be constructed: SystemExit: no config" in init.result.message
    for kind, said in [("cancelled", "CancelledError: raised in"), ("generator-exit", "GeneratorExit")]:
        svengine.enqueue(f"x-{kind}", ONCE, "Exits", input=kind, constraints=once)  # the worker's own
        info = svengine.wait(f"x-{kind}", timeout_s=30)
        assert info.state is TaskState.FAILED and said in info.result.message, info
    svengine.enqueue("x-cancels-init", ONCE, "CancelsInInit")
    cancels = svengine.wait("x-cancels-init", timeout_s=30)
    assert cancels.state is TaskState.FAILED and "constructed: CancelledError" in cancels.result.message
    until(lambda: svengine.get_task_info("x-retried").run_attempt_count == 1
          and svengine.get_task_info("x-retried").state is TaskState.ENQUEUED, what="a retry scheduled")
    svengine.advance_time(20_000)  # retried like any exception, then given up
    retried = svengine.wait("x-retried", timeout_s=30)
    assert retried.state is TaskState.FAILED and retried.run_attempt_count == 2
    assert svengine.enqueue("after", ONCE, "Echo") is ScheduleResult.SUCCESS  # the executors live on
    assert svengine.wait("after", timeout_s=30).state is TaskState.SUCCEEDED


def test_a_huge_exception_text_is_clipped_in_the_result(svengine: Any) -> None:
    from kmpray.results import MAX_MESSAGE_CHARS

    svengine.enqueue("loud", ONCE, "Raises", input="y" * 50_000, constraints=Constraints(max_retries=0))
    message = svengine.wait("loud", timeout_s=30).result.message
    assert message.startswith("gave up after 1 attempt: RuntimeError: kaboom yyy")
    assert message.endswith(f"... ({50_000 + len('RuntimeError: kaboom ') - MAX_MESSAGE_CHARS} more characters)")


def test_deeply_nested_data_fails_its_step_instead_of_killing_the_scheduler(svengine: Any) -> None:
    """Ray serialises an async actor's return value on a small fiber stack: answering a
    wait() with a result nested 600 deep crashed the scheduler (SIGSEGV), again at each
    restart as the client asked again."""
    svengine.enqueue("nest-ok", ONCE, "Nests", input="100")  # the limit itself
    svengine.enqueue("nest-deep", ONCE, "Nests", input="600")
    ok = svengine.wait("nest-ok", timeout_s=30)
    assert ok.state is TaskState.SUCCEEDED and "n" in ok.result.data
    deep = svengine.wait("nest-deep", timeout_s=30)
    assert deep.state is TaskState.FAILED and deep.run_attempt_count == 1
    assert deep.result.message == (
        "Success.data: dicts and lists nested deeper than 100 levels (the engine's messages cannot carry more)")
    nested: dict[str, Any] = {}
    inner = nested
    for _ in range(600):
        inner["n"] = {}
        inner = inner["n"]
    with pytest.raises(kmpray.InvalidParameters, match="output_data: dicts and lists nested deeper"):
        svengine.events.emit(kmpray.TaskCompletionEvent("Nests", True, output_data=nested))
    svengine.enqueue("nest-emit", ONCE, "Nests", input="emit:600", constraints=Constraints(max_retries=0))
    emitted = svengine.wait("nest-emit", timeout_s=30)  # from worker code: the executor's bus refuses it too
    assert emitted.state is TaskState.FAILED
    assert "InvalidParameters: output_data: dicts and lists nested deeper than 100" in emitted.result.message
    assert svengine.status()["counts"]["FAILED"] >= 1  # the scheduler answers as ever


def test_output_that_cannot_be_stored_fails_clearly(svengine: Any) -> None:
    svengine.enqueue("h", ONCE, "HugeOutput")
    info = svengine.wait("h", timeout_s=30)
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


def test_sync_runs_use_the_executors_concurrency_and_a_slow_class_load_blocks_no_loop(
    sengine: Any, tmp_path: Path
) -> None:
    # (The module's shared engine: two executors, one per CPU, as test_blocking_workers's;
    # per shard, under KMPRAY_TEST_SHARDS=2.) 30 sync runs that each wait until all 30
    # began: on 2 (or 4) executors they meet only if one runs more than asyncio's default
    # 6 threads (min(32, CPUs + 4)) of sync do_work at once (executor_concurrency is 64):
    # some executor holds at least 8 of them. Meanwhile a class that takes 0.5 s to
    # unpickle has its first run on each executor: loaded in a thread, it blocks no loop.
    ledger = tmp_path / "ledger"
    assert sengine.status()["executors"] == 2 * sengine.shards
    ids = [f"g{i}" for i in range(30)]
    sengine.enqueue_many([kmpray.TaskRequest("SyncGather", json.dumps({"ledger": str(ledger), "n": 30}), id=i) for i in ids]
                        + [kmpray.TaskRequest("SlowToLoad", id=f"slow{i}") for i in range(4)])
    infos = [sengine.wait(i, timeout_s=60) for i in ids]
    assert [(i.state, i.result.data) for i in infos] == [(TaskState.SUCCEEDED, {"met": True})] * 30
    slow = [sengine.wait(f"slow{i}", timeout_s=30) for i in range(4)]
    assert [(i.state, i.result.data) for i in slow] == [(TaskState.SUCCEEDED, {"table": "loaded"})] * 4
    # A block is reported by the executor's watch thread once its loop runs again, a few
    # ms after the run ended (the old code: {"SlowToLoad": 3} here, 0.5-1.0 s each).
    # Absence has no event to await: watched for a bounded 1.5 s.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert "SlowToLoad" not in sengine.status()["loop_blocks"]
        time.sleep(0.1)
    assert count_runs(str(ledger)) == 30  # each once


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


def test_executor_concurrency_bounds_runs_in_flight(engines: Any, tmp_path: Path) -> None:
    sched = engines(config=EngineConfig(executors=1, executor_concurrency=1))
    register_all(sched)
    ins = [blocks_input(tmp_path, f"b{i}") for i in range(3)]
    for i, (inp, _started, _release) in enumerate(ins):
        sched.enqueue(f"b{i}", ONCE, "Blocks", input=inp)
    # RUNNING is recorded when the executor starts the run, a moment before do_work writes its file
    until(lambda: sched.get_task_info("b0").state is TaskState.RUNNING and ins[0][1].exists(), what="first run")
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


def test_a_real_time_retry_fires_without_other_activity(sengine: Any) -> None:
    sched = sengine
    c = Constraints(backoff_delay_ms=50, max_retries=3)
    sched.enqueue("rr", ONCE, "FailsThenSucceeds", input="2", constraints=c)
    info = sched.wait("rr", timeout_s=30)
    assert info.state is TaskState.SUCCEEDED and info.run_attempt_count == 3


def test_a_timed_run_handed_over_early_begins_at_its_due_time_and_can_still_be_cancelled(engines: Any) -> None:
    import time

    import ray

    sched = engines(config=EngineConfig(executors=1, timer_lead_ms=5_000))
    register_all(sched)
    # 3 s ahead (within the 5 s lead): the hand-over, the cancel and its delivery must all
    # happen before the due time, which took more than 1.5 s once under the whole suite
    due = int(time.time() * 1000) + 3_000
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


@ONE_SHARD  # it reads shard 0's executor; the task may live on another shard
def test_executors_keep_their_start_up_heap_out_of_full_garbage_collections(engines: Any) -> None:
    """An executor freezes what it loaded at start (and each worker class it loads): a
    full collection walked it all, holding every run there 80-90 ms."""
    import ray

    from .workers import register_all

    sched = engines(config=EngineConfig(executors=1))
    register_all(sched)
    executor = ray.get_actor("kmpray.executor.0", namespace=sched.namespace)

    def frozen() -> int:
        count = executor.__ray_call__.remote(lambda self: __import__("gc").get_freeze_count())
        return int(ray.get(count, timeout=30))

    at_start = frozen()
    assert at_start > 10_000  # Ray, numpy, pydantic, kmpray
    assert sched.enqueue("gcx", kmpray.TaskTrigger.OneTime(), "Echo") is kmpray.ScheduleResult.SUCCESS
    assert sched.wait("gcx", timeout_s=60).state is TaskState.SUCCEEDED
    assert frozen() > at_start  # the Echo class, loaded for its first run, frozen with it


def test_executors_are_ready_before_their_first_run_is_due(engines: Any) -> None:
    """The scheduler's handle is resolved when an executor starts: ray.get_actor loads the
    actor class (~0.4 s), which held the loop under the first runs (timers due then began
    late)."""
    import ray

    sched = engines(config=EngineConfig(executors=1))
    executor = ray.get_actor("kmpray.executor.0", namespace=sched.namespace)

    def peek(fn: Any) -> Any:
        return ray.get(executor.__ray_call__.remote(fn), timeout=30)

    assert peek(lambda self: self._scheduler is not None)  # before any run or report


@ONE_SHARD  # it calls shard 0's scheduler and its classes in the registry
def test_worker_classes_register_many_at_once_with_growing_versions(sengine: Any) -> None:
    """connect() registers the built-in workers in one message per shard: each new class a
    new version, an unchanged one keeps its own, and the registry has them all."""
    import ray

    from kmpray.client.remote import ship_class

    from .workers import Echo, Noop

    actor = ray.get_actor("kmpray.scheduler", namespace=sengine.namespace)
    batch = [("BatchA", ship_class(Echo)), ("BatchB", ship_class(Noop)), ("BatchA", ship_class(Echo))]
    first, second, again = ray.get(actor.register_workers.remote(batch), timeout=30)
    assert second == first + 1 and again == first
    assert ray.get(actor.register_workers.remote([("BatchB", ship_class(Noop))]), timeout=30) == [second]
    registry = ray.get_actor("kmpray.oracle", namespace=sengine.namespace)  # holds the registry
    held = ray.get(registry.dump_classes.remote(sengine.namespace), timeout=30)
    assert (held["BatchA"][0], held["BatchB"][0]) == (first, second)
    assert {"BatchA", "BatchB", "HttpRequestWorker"} <= set(sengine.status()["workers"])
    assert sengine.enqueue("ba", TaskTrigger.OneTime(), "BatchB") is ScheduleResult.SUCCESS
    assert sengine.wait("ba", timeout_s=30).state is TaskState.SUCCEEDED


def test_a_worker_decorated_after_connect_runs_at_once(sengine: Any) -> None:
    """A notebook's order: connect in one cell, define a worker in the next. The decorator
    registers it with the connected engine then and there (client/live.py)."""
    from kmpray.worker import LOCAL_WORKERS

    assert "DecoratedLate" not in sengine.status()["workers"]
    try:
        @kmpray.worker("DecoratedLate")
        class DecoratedLate(kmpray.CommonWorker):
            def do_work(self, input: str | None) -> kmpray.WorkerResult:  # noqa: A002
                return kmpray.WorkerResult.Success(data={"late": input})

        answer = sengine.enqueue("late", TaskTrigger.OneTime(), "DecoratedLate", input="x")
        assert answer is ScheduleResult.SUCCESS
        assert sengine.wait("late", timeout_s=30).result.data == {"late": "x"}
    finally:
        LOCAL_WORKERS.pop("DecoratedLate", None)


_LOCK = threading.Lock()  # what a notebook's module-level lock, connection or client is to pickle


def test_a_worker_class_that_cannot_be_pickled_is_refused_alone_with_the_way_out(
        sengine: Any, caplog: Any) -> None:
    """connect() registers every class declared before it: one that cannot be pickled (its
    code refers to a module-level lock) failed the whole connect() with a bare TypeError."""
    from kmpray.worker import LOCAL_WORKERS

    class UsesLock(kmpray.CommonWorker):
        def do_work(self, input: str | None) -> bool:  # noqa: A002
            with _LOCK:
                return True

    said = (r"^worker class .*UsesLock cannot be sent to the engine's processes "
            r"\(cannot pickle '_thread.lock' object\): .* create that object in __init__")
    with pytest.raises(kmpray.InvalidParameters, match=said):
        sengine.register_worker("UsesLock", UsesLock)
    LOCAL_WORKERS.update(UsesLock=UsesLock, PicklesFine=workers.Echo)
    try:
        with caplog.at_level(logging.WARNING, logger="kmpray"):
            again = kmpray.connect(namespace=sengine.namespace, state_dir=sengine.status()["state_dir"])
        warned = [r.message for r in caplog.records if r.message.startswith("@kmpray.worker('UsesLock')")]
        assert warned and warned[0].startswith("@kmpray.worker('UsesLock'): not registered: worker class")
        assert "PicklesFine" in again.status()["workers"] and "UsesLock" not in again.status()["workers"]
    finally:
        LOCAL_WORKERS.pop("UsesLock", None)
        LOCAL_WORKERS.pop("PicklesFine", None)


def test_connect_in_worker_code_is_the_engine_running_it(svengine: Any) -> None:
    """A task that enqueues tasks: kmpray.connect() in do_work connected to the default
    namespace's engine, starting one if none ran (the child went there, refused: its
    worker was not registered there), not to the engine running the worker."""
    assert svengine.namespace != "kmpray"
    engines_before = bootstrap.running_engines()
    svengine.enqueue("parent", ONCE, "EnqueuesChild", input="hi")
    parent = svengine.wait("parent", timeout_s=30)
    assert parent.result.data == {"enqueued": "SUCCESS", "namespace": svengine.namespace, "cached": True}
    child = svengine.wait("parent-child", timeout_s=30)
    assert child.state is TaskState.SUCCEEDED and child.worker_class_name == "Echo"
    assert bootstrap.running_engines() == engines_before  # none started under the default namespace
