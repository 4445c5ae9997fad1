"""A process that dies under a run (os._exit, a fatal signal, a memory cap): the run is
re-run without counting an attempt, alone next time, and a task whose runs keep killing
their process ends FAILED after ``max_system_reruns`` (kmpray.engine.SchedulerCore.run_lost)."""

from __future__ import annotations

from kmpray import TaskTrigger
from kmpray.config import EngineConfig
from kmpray.enums import TaskState
from kmpray.results import Failure

from .conftest import Harness


def _dispatch(h: Harness, key: str):  # type: ignore[no-untyped-def]
    h.core.tick()
    [d] = [d for d in h.core.take_ready(100) if d.key == key]
    return d


def test_a_crash_re_runs_the_task_as_a_suspect_and_a_result_clears_it(h: Harness) -> None:
    h.core.submit("a", TaskTrigger.OneTime(), "Ok")
    d = _dispatch(h, "a")
    assert d.suspect is False
    h.core.run_lost("a", d.run_id, crashed=True)
    rec = h.core.latest("a")
    assert rec is not None and (rec.state, rec.run_attempt_count, rec.crashes) == (TaskState.ENQUEUED, 0, 1)
    d2 = _dispatch(h, "a")
    assert d2.suspect is True and d2.run_id == d.run_id + 1
    h.core.complete("a", d2.run_id, Failure("its own failure", should_retry=True))  # it reported
    assert h.core.latest("a").crashes == 0  # type: ignore[union-attr]
    h.clock.advance(60_000)
    d3 = _dispatch(h, "a")
    assert d3.suspect is False


def test_a_task_whose_runs_keep_killing_their_process_fails_after_max_system_reruns() -> None:
    h = Harness(config=EngineConfig(max_system_reruns=2))
    h.core.submit("poison", TaskTrigger.OneTime(), "Ok")
    run_ids = []
    for _ in range(3):  # the first run, then 2 system re-runs
        d = _dispatch(h, "poison")
        run_ids.append(d.run_id)
        h.core.run_lost("poison", d.run_id, crashed=True)
    rec = h.core.latest("poison")
    assert rec is not None and rec.state is TaskState.FAILED, rec
    assert isinstance(rec.result, Failure) and rec.result.message.startswith("system: the process running it died")
    assert "3 runs in a row" in rec.result.message and "max_system_reruns=2" in rec.result.message
    assert rec.run_attempt_count == 1  # system re-runs are not attempts
    assert run_ids == [1, 2, 3]
    [event] = [e for e in h.drain().events if getattr(e, "kind", "") == "completion"]
    assert event.success is False and event.message.startswith("system:")  # type: ignore[attr-defined]


def test_a_lost_run_that_was_not_a_crash_never_counts_towards_failing() -> None:
    h = Harness(config=EngineConfig(max_system_reruns=0))
    h.core.submit("a", TaskTrigger.OneTime(), "Ok")
    for _ in range(5):  # a node leaving, a hand-back from a blocked loop: not the task's doing
        d = _dispatch(h, "a")
        h.core.run_lost("a", d.run_id)
    assert h.state("a") == "ENQUEUED" and h.core.latest("a").crashes == 0  # type: ignore[union-attr]
    h.core.run_lost("a", _dispatch(h, "a").run_id, crashed=True)  # max 0: the first death fails it
    assert h.state("a") == "FAILED"


def test_a_periodic_task_that_kills_its_process_fails_that_period_and_runs_the_next() -> None:
    h = Harness(config=EngineConfig(max_system_reruns=1))
    h.core.submit("p", TaskTrigger.Periodic(interval_ms=15 * 60_000), "Ok")
    for _ in range(2):
        h.core.run_lost("p", _dispatch(h, "p").run_id, crashed=True)
    rec = h.core.latest("p")
    assert rec is not None and rec.state is TaskState.ENQUEUED and rec.crashes == 0
    assert isinstance(rec.result, Failure) and rec.result.message.startswith("system:")
    assert rec.next_run_at_ms is not None and rec.next_run_at_ms > h.clock.now_ms()  # the next period
    ran = h.advance(15 * 60_000)
    assert [d.key for d in ran] == ["p"] and ran[0].suspect is False
    assert h.core.latest("p").run_count == 2  # type: ignore[union-attr]


def test_the_crash_count_survives_a_scheduler_restart(h: Harness) -> None:
    h.core.submit("a", TaskTrigger.OneTime(), "Ok")
    h.core.run_lost("a", _dispatch(h, "a").run_id, crashed=True)
    h.restart()
    rec = h.core.latest("a")
    assert rec is not None and rec.crashes == 1
    assert _dispatch(h, "a").suspect is True


def test_a_suspect_with_no_executor_to_run_alone_on_waits_and_is_released(h: Harness) -> None:
    h.core.submit("a", TaskTrigger.OneTime(), "Ok")
    h.core.run_lost("a", _dispatch(h, "a").run_id, crashed=True)
    d = _dispatch(h, "a")
    h.core.unplaced(d.key, d.run_id, "waits to run alone")
    assert h.core.suspects_waiting() and h.state("a") == "ENQUEUED"
    assert h.core.latest("a").crashes == 1  # type: ignore[union-attr]  # waiting is not a crash
    h.core.release_unplaced()
    assert not h.core.suspects_waiting()
    assert [x.key for x in h.step()] == ["a"] and h.state("a") == "SUCCEEDED"


def test_the_failed_reason_names_a_known_cause_of_the_last_death() -> None:
    """An executor past executor_memory_mb tells the scheduler its figures before it ends;
    the FAILED reason said only "os._exit, a fatal signal or a memory cap" though the engine
    knew which (found touring, session 46). A death of unknown cause reads as before."""
    h = Harness(config=EngineConfig(max_system_reruns=1))
    h.core.submit("hog", TaskTrigger.OneTime(), "Ok")
    cause = "resident memory 703 MiB is past executor_memory_mb=400"
    h.core.run_lost("hog", _dispatch(h, "hog").run_id, crashed=True)  # the first: a process it shared
    h.core.run_lost("hog", _dispatch(h, "hog").run_id, crashed=True, cause=cause)
    rec = h.core.latest("hog")
    assert rec is not None and isinstance(rec.result, Failure), rec
    assert rec.result.message == (
        "system: the process running it died during 2 runs in a row (os._exit, a fatal signal or a memory "
        f"cap; the last: {cause}); not run again after max_system_reruns=1")
