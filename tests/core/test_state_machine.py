"""States and transitions of single tasks: one-time, exact, windowed, retries, cancel."""

from __future__ import annotations

import pytest

from kmpray import BackoffPolicy, Constraints, ScheduleResult, TaskState, TaskTrigger
from kmpray.results import Failure, Retry, Success

from .conftest import START, Harness

ONE_HOUR_MS = 3_600_000


def test_one_time_task_runs_once_and_succeeds(h: Harness) -> None:
    assert h.core.submit("a", TaskTrigger.OneTime(), "Ok").result is ScheduleResult.SUCCESS
    assert h.state("a") == "ENQUEUED"
    h.step()
    rec = h.core.latest("a")
    assert rec is not None
    assert (rec.state, rec.run_count, rec.run_attempt_count) == (TaskState.SUCCEEDED, 1, 1)
    assert rec.result == Success(data={"worker": "Ok"})
    assert [d.key for d in h.runs] == ["a"]
    assert h.step() == []


def test_initial_delay_holds_the_task_until_due(h: Harness) -> None:
    h.core.submit("a", TaskTrigger.OneTime(initial_delay_ms=5_000), "Ok")
    assert h.step() == []
    assert h.advance(4_999) == []
    assert [d.key for d in h.advance(1)] == ["a"]


def test_dispatch_marks_running_and_a_stale_report_is_ignored(h: Harness) -> None:
    h.core.submit("a", TaskTrigger.OneTime(), "Ok")
    h.core.tick()
    [d] = h.core.take_ready(10)
    assert h.state("a") == "RUNNING"
    assert h.core.complete("a", d.run_id + 1, Success()) is False
    assert h.state("a") == "RUNNING"
    assert h.core.complete("a", d.run_id, Success()) is True
    assert h.state("a") == "SUCCEEDED"


def test_exact_trigger_fires_at_the_instant(h: Harness) -> None:
    h.core.submit("x", TaskTrigger.Exact(START + 60_000), "Ok")
    assert h.advance(59_999) == []
    [d] = h.advance(1)
    assert d.key == "x"
    assert h.clock.now_ms() == START + 60_000


def test_exact_in_the_past_runs_now(h: Harness) -> None:
    h.core.submit("x", TaskTrigger.Exact(START - 1), "Ok")
    assert [d.key for d in h.step()] == ["x"]


def test_windowed_runs_at_window_start(h: Harness) -> None:
    h.core.submit("w", TaskTrigger.Windowed(START + 1_000, START + 5_000), "Ok")
    assert h.advance(999) == []
    assert [d.key for d in h.advance(1)] == ["w"]
    assert h.state("w") == "SUCCEEDED"


def test_windowed_not_run_by_its_end_fails_with_window_expired(h: Harness) -> None:
    h.core.submit("w", TaskTrigger.Windowed(START + 1_000, START + 5_000), "Ok")
    h.clock.set(START + 5_001)  # nothing dispatched in the window (e.g. constraints unmet)
    h.core.tick()
    rec = h.core.latest("w")
    assert rec is not None and rec.state is TaskState.FAILED
    assert rec.result == Failure("window expired")
    assert rec.run_attempt_count == 0


def test_passed_or_inverted_window_is_rejected(h: Harness) -> None:
    past = h.core.submit("w1", TaskTrigger.Windowed(START - 5_000, START - 1), "Ok")
    inverted = h.core.submit("w2", TaskTrigger.Windowed(START + 5_000, START + 1_000), "Ok")
    assert past.result is ScheduleResult.REJECTED_INVALID_PARAMS and "ended" in (past.reason or "")
    assert inverted.result is ScheduleResult.REJECTED_INVALID_PARAMS and "inverted" in (inverted.reason or "")
    assert h.core.latest("w1") is None and h.core.latest("w2") is None


def test_exponential_retries_back_off_then_fail_after_max_retries(h: Harness) -> None:
    c = Constraints(backoff_delay_ms=1_000, max_retries=3)
    h.core.submit("f", TaskTrigger.OneTime(), "Flaky", constraints=c)
    starts: list[int] = []
    for _ in range(10):
        if h.step():
            starts.append(h.clock.now_ms() - START)
        due = h.core.next_due_ms()
        if due is None:
            break
        h.clock.set(due)
    assert starts == [0, 1_000, 3_000, 7_000]  # delays 1 s, 2 s, 4 s
    rec = h.core.latest("f")
    assert rec is not None and rec.state is TaskState.FAILED
    assert rec.run_attempt_count == 4
    assert isinstance(rec.result, Failure) and "gave up after 4 attempts" in rec.result.message


def test_linear_backoff_and_retry_delay_override(h: Harness) -> None:
    outcomes = iter([Failure("x", should_retry=True), Retry("soon", delay_ms=50), Success()])
    h.workers["Seq"] = lambda d: next(outcomes)
    c = Constraints(backoff_policy=BackoffPolicy.LINEAR, backoff_delay_ms=1_000)
    h.core.submit("s", TaskTrigger.OneTime(), "Seq", constraints=c)
    h.step()
    assert h.core.latest("s").next_run_at_ms == START + 1_000  # type: ignore[union-attr]
    h.advance(1_000)
    assert h.core.latest("s").next_run_at_ms == START + 1_050  # type: ignore[union-attr]
    h.advance(50)
    assert h.state("s") == "SUCCEEDED"


def test_run_count_counts_runs_that_completed_the_work_not_retried_ones(h: Harness) -> None:
    """README (Semantics, ``run_count``): a retried run is an attempt, not a run."""
    outcomes = iter([Retry("again", delay_ms=10), Failure("x", should_retry=True), Success()])
    h.workers["Seq"] = lambda d: next(outcomes)
    h.core.submit("s", TaskTrigger.OneTime(), "Seq", constraints=Constraints(backoff_delay_ms=10))
    h.step()
    h.advance(10)
    rec = h.core.latest("s")
    assert rec is not None and rec.state is TaskState.ENQUEUED
    assert (rec.run_attempt_count, rec.run_count) == (2, 0)  # still retrying: no run completed
    h.advance(20)
    rec = h.core.latest("s")
    assert rec is not None and rec.state is TaskState.SUCCEEDED
    assert (rec.run_attempt_count, rec.run_count) == (3, 1)
    h.workers["No"] = lambda d: Failure("no")
    h.core.submit("n", TaskTrigger.OneTime(), "No")
    h.step()
    rec = h.core.latest("n")
    assert rec is not None and rec.state is TaskState.FAILED
    assert (rec.run_attempt_count, rec.run_count) == (1, 1)


def test_final_failure_does_not_retry(h: Harness) -> None:
    h.core.submit("f", TaskTrigger.OneTime(), "Fail")
    h.step()
    rec = h.core.latest("f")
    assert rec is not None and rec.state is TaskState.FAILED and rec.run_attempt_count == 1
    assert h.core.next_due_ms() is None


def test_max_retries_zero_fails_on_first_retry_request(h: Harness) -> None:
    h.core.submit("f", TaskTrigger.OneTime(), "Flaky", constraints=Constraints(max_retries=0))
    h.step()
    assert h.state("f") == "FAILED"


def test_unregistered_worker_is_rejected_at_enqueue(h: Harness) -> None:
    out = h.core.submit("u", TaskTrigger.OneTime(), "Nope")
    assert out.result is ScheduleResult.REJECTED_INVALID_PARAMS
    assert "not a registered worker" in (out.reason or "")


def test_worker_unregistered_by_dispatch_time_fails_without_retry(h: Harness) -> None:
    h.workers["Gone"] = lambda d: Success()
    h.core.submit("g", TaskTrigger.OneTime(), "Gone")
    del h.workers["Gone"]
    assert h.step() == []
    rec = h.core.latest("g")
    assert rec is not None and rec.state is TaskState.FAILED and rec.run_attempt_count == 0


def test_cancel_enqueued_and_running_tasks(h: Harness) -> None:
    h.core.submit("a", TaskTrigger.OneTime(initial_delay_ms=10_000), "Ok")
    h.core.submit("b", TaskTrigger.OneTime(), "Ok")
    h.core.tick()
    [d] = h.core.take_ready(10)
    assert h.core.cancel("a") == 1 and h.core.cancel("b") == 1
    fx = h.drain()
    assert fx.cancel_runs == [("b", d.run_id)]
    assert h.state("a") == h.state("b") == "CANCELLED"
    assert h.core.complete("b", d.run_id, Success()) is False
    assert h.core.cancel("a") == 0


def test_cancel_rows_cancels_only_unfinished(h: Harness) -> None:
    """What cancel_all() does, a chunk of rows at a time (actors/scheduler.py)."""
    h.core.submit("done", TaskTrigger.OneTime(), "Ok")
    h.step()
    h.core.submit("p1", TaskTrigger.OneTime(initial_delay_ms=1), "Ok")
    h.core.submit("p2", TaskTrigger.Periodic(60_000), "Ok")
    assert h.core.cancel_rows(list(h.core.tasks.values())) == 2
    assert (h.state("done"), h.state("p1"), h.state("p2")) == ("SUCCEEDED", "CANCELLED", "CANCELLED")


def test_every_finished_run_emits_a_completion_event(h: Harness) -> None:
    outcomes = iter([Retry("later", delay_ms=10), Success(data={"n": 1})])
    h.workers["Seq"] = lambda d: next(outcomes)
    h.core.submit("e", TaskTrigger.OneTime(), "Seq")
    h.advance(10)
    got = [(e.task_id, e.success, e.output_data) for e in h.events]  # type: ignore[attr-defined]
    assert got == [("e", False, None), ("e", True, {"n": 1})]


def test_progress_updates_info_and_emits_in_order(h: Harness) -> None:
    h.core.submit("p", TaskTrigger.OneTime(), "Ok")
    h.core.tick()
    [d] = h.core.take_ready(1)
    for pct in (10, 50, 90):
        h.core.progress("p", d.run_id, pct, f"at {pct}")
    assert h.core.latest("p").progress == 90  # type: ignore[union-attr]
    assert [e.progress for e in h.drain().events] == [10, 50, 90]  # type: ignore[attr-defined]


def test_finished_tasks_show_their_final_progress_not_the_last_report(h: Harness) -> None:
    """100 % once SUCCEEDED, none once FAILED or waiting for the next period: never the
    last run's 50 % frozen as if it still went on (what ``kmpray list`` showed)."""
    h.core.submit("ok", TaskTrigger.OneTime(), "Ok")
    h.core.submit("bad", TaskTrigger.OneTime(), "Fail")
    h.core.submit("every", TaskTrigger.Periodic(900_000), "Ok")
    h.core.tick()
    runs = {d.key: d for d in h.core.take_ready(10)}
    for key, d in runs.items():
        h.core.started(key, d.run_id)
        h.core.progress(key, d.run_id, 50, "half")
    info = h.core.info(h.core.latest("ok"))  # type: ignore[arg-type]
    assert info.state is TaskState.RUNNING and info.progress == 50
    for key, d in runs.items():
        h.core.complete(key, d.run_id, h.workers[d.worker](d))
    shown = {k: h.core.info(h.core.latest(k)) for k in runs}  # type: ignore[arg-type]
    assert (shown["ok"].state, shown["ok"].progress) == (TaskState.SUCCEEDED, 100)
    assert (shown["bad"].state, shown["bad"].progress) == (TaskState.FAILED, None)
    assert (shown["every"].state, shown["every"].progress) == (TaskState.ENQUEUED, None)


def test_terminals_get_one_line_per_task_and_the_bare_result(h: Harness) -> None:
    h.core.submit("h1", TaskTrigger.OneTime(), "Ok")
    h.step()
    info = h.core.info(h.core.latest("h1"))  # type: ignore[arg-type]
    assert str(info) == "h1 (Ok): SUCCEEDED, attempt 1, 1 run, 100% - Success {'worker': 'Ok'}"
    assert repr(info).startswith("TaskInfo(id='h1'")  # the full form stays for debugging
    assert str(ScheduleResult.SUCCESS) == "SUCCESS" and f"{ScheduleResult.FAILED_UNKNOWN}" == "FAILED_UNKNOWN"
    assert repr(ScheduleResult.SUCCESS) == "<ScheduleResult.SUCCESS: 'SUCCESS'>"
    h.core.submit("later", TaskTrigger.OneTime(initial_delay_ms=60_000), "Ok")
    later = h.core.info(h.core.latest("later"))  # type: ignore[arg-type]
    assert str(later).startswith("later (Ok): ENQUEUED, attempt 0, 0 runs - due at ")
    from kmpray import ChainInfo

    chain = ChainInfo(id="c", state=TaskState.RUNNING, steps=[[info], [later]])
    lines = str(chain).splitlines()
    assert lines[0] == "chain c: RUNNING" and lines[1] == "step 1" and "step 2" in lines
    assert lines[2].split()[:3] == ["id", "worker", "state"] and lines[4].startswith("h1 ")


def test_run_lost_requeues_without_counting_an_attempt(h: Harness) -> None:
    h.core.submit("a", TaskTrigger.OneTime(), "Ok")
    h.core.tick()
    [d] = h.core.take_ready(1)
    h.core.run_lost("a", d.run_id)
    rec = h.core.latest("a")
    assert rec is not None and rec.state is TaskState.ENQUEUED and rec.run_attempt_count == 0
    [d2] = h.step()
    assert d2.run_id == d.run_id + 1 and h.state("a") == "SUCCEEDED"


def test_a_run_handed_to_an_executor_shows_running_once_its_worker_begins(h: Harness) -> None:
    h.core.submit("a", TaskTrigger.OneTime(), "Ok")
    h.core.submit("b", TaskTrigger.OneTime(), "Ok")
    h.core.tick()
    a, b = h.core.take_ready(10)  # both handed over; neither has a free slot yet
    info = h.core.latest("a").info()  # type: ignore[union-attr]
    assert (info.state, info.run_attempt_count) == (TaskState.ENQUEUED, 0)
    assert h.core.counts()["ENQUEUED"] == 2 and h.core.counts()["RUNNING"] == 0
    h.core.started(a.key, a.run_id - 1)  # a stale run's notice changes nothing
    assert h.core.latest("a").info().state is TaskState.ENQUEUED  # type: ignore[union-attr]
    h.core.started(a.key, a.run_id)
    h.core.progress(b.key, b.run_id, 10, None)  # progress means it began, too
    for name in ("a", "b"):
        info = h.core.latest(name).info()  # type: ignore[union-attr]
        assert (info.state, info.run_attempt_count) == (TaskState.RUNNING, 1)
    assert h.core.counts()["RUNNING"] == 2


def test_cancelling_a_run_that_never_began_does_not_count_an_attempt(h: Harness) -> None:
    h.core.submit("waits", TaskTrigger.OneTime(), "Ok")
    h.core.submit("began", TaskTrigger.OneTime(), "Ok")
    h.core.tick()
    _waits, began = h.core.take_ready(10)
    h.core.started(began.key, began.run_id)
    assert h.core.cancel("waits") == 1 and h.core.cancel("began") == 1
    assert [h.core.latest(n).info().run_attempt_count for n in ("waits", "began")] == [0, 1]  # type: ignore[union-attr]
    assert {k for k, _ in h.drain().cancel_runs} == {"waits", "began"}  # both told to stop


def test_android_raises_a_backoff_below_its_minimum_to_10_s_as_its_builder_does(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """platform="android" enforces Android's minimums: WorkRequest.Builder raises a backoff
    delay under MIN_BACKOFF_MILLIS (10 s) to it, with a warning (here once per value, not
    once per task of a bulk). A 100 ms backoff retried after 100 ms there until session
    46. "cluster" keeps what it is given."""
    import logging

    from kmpray import unique_work

    monkeypatch.setattr(unique_work, "_RAISED_BACKOFFS", set())
    android, cluster = Harness("android"), Harness("cluster")
    c = Constraints(backoff_delay_ms=100, max_retries=2)
    with caplog.at_level(logging.WARNING):
        android.core.submit("f", TaskTrigger.OneTime(), "Flaky", constraints=c)
        android.core.submit("g", TaskTrigger.OneTime(ONE_HOUR_MS), "Flaky", constraints=c)
    assert "f: backoff_delay_ms 100 is below platform 'android''s minimum: 10000 ms used" in caplog.text
    assert caplog.text.count("is below platform") == 1
    assert android.core.latest("g").constraints.backoff_delay_ms == 10_000  # type: ignore[union-attr]
    cluster.core.submit("f", TaskTrigger.OneTime(), "Flaky", constraints=c)
    for h, delay in ((android, 10_000), (cluster, 100)):
        h.step()
        rec = h.core.latest("f")
        assert rec is not None and rec.next_run_at_ms == START + delay, h.core.platform.name
        assert rec.constraints.backoff_delay_ms == delay  # stored as used, as Android's WorkSpec
