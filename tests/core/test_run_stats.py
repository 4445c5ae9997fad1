"""Live run figures (status()["runs"], the dashboard): hand-overs, outcomes and the recent
enqueue -> hand-over waits of runs that were due at once."""

from __future__ import annotations

from kmpray import Constraints, TaskTrigger
from kmpray.results import Retry

from .conftest import Harness


def test_runs_are_counted_by_outcome_and_only_undelayed_first_runs_give_a_wait(h: Harness) -> None:
    h.core.submit("late", TaskTrigger.OneTime(initial_delay_ms=60_000), "Ok")
    h.core.submit("a", TaskTrigger.OneTime(), "Ok")
    h.core.submit("f", TaskTrigger.OneTime(), "Fail", constraints=Constraints(max_retries=0))
    h.clock.advance(250)  # they waited 250 ms for the scheduler's turn
    h.step()
    stats = h.core.stats.describe(h.clock.now_ms())
    assert stats["dispatched"] == 2 and stats["finished"] == {"succeeded": 1, "failed": 1}
    assert stats["wait_ms"] == {"n": 2, "p50": 250, "p99": 250, "max": 250}
    h.advance(60_000)  # the delayed one ran on purpose late: counted, its wait not sampled
    stats = h.core.stats.describe(h.clock.now_ms())
    assert stats["dispatched"] == 3 and stats["finished"]["succeeded"] == 2
    assert stats["wait_ms"] == {"n": 0}  # the last second's samples only
    st = h.core.stats
    assert st.enqueued_by == {"Ok": 2, "Fail": 1}
    assert st.finished_by == {("Ok", "succeeded"): 2, ("Fail", "failed"): 1}
    # Due at enqueue and made ready there (no timer: the dispatch loop's turn is what they
    # waited for, 250 ms, as their hand-over waits say); the delayed one on time.
    assert list(st.new_waits) == [250, 250] and list(st.new_lateness) == [0, 0, 0]


def test_a_retried_run_counts_as_retried_and_its_rerun_gives_no_wait(h: Harness) -> None:
    h.workers["Twice"] = lambda d: Retry("again") if d.previous_attempts == 0 else h.workers["Ok"](d)
    h.core.submit("r", TaskTrigger.OneTime(), "Twice", constraints=Constraints(backoff_delay_ms=10_000))
    h.step()
    h.advance(10_000)
    stats = h.core.stats.describe(h.clock.now_ms())
    assert stats["finished"] == {"retried": 1, "succeeded": 1} and stats["dispatched"] == 2
    assert stats["wait_ms"]["n"] == 0  # the first run's sample is over a second old; the retry gives none


def test_start_waits_heard_from_executors_are_summarised_for_two_seconds(h: Harness) -> None:
    st = h.core.stats
    now = h.clock.now_ms()
    st.started_after((4.0, 2.0, 9.0), now)
    assert st.describe(now)["start_ms"] == {"n": 3, "p50": 4.0, "p99": 9.0, "max": 9.0}
    assert list(st.new_starts) == [4.0, 2.0, 9.0]  # for the metrics publisher
    assert st.describe(now + 2_001)["start_ms"] == {"n": 0}


def test_only_real_time_engines_send_the_enqueue_time_to_executors(h: Harness) -> None:
    h.core.submit("a", TaskTrigger.OneTime(), "Ok")
    [d] = h.step()
    assert not h.core.real_time and d.enqueued_ms is None  # virtual time: no wall-clock meaning
    from kmpray.clock import SystemClock

    h.core.clock = SystemClock()
    h.core.real_time = True
    h.core.submit("b", TaskTrigger.OneTime(), "Ok")
    h.core.submit("c", TaskTrigger.OneTime(initial_delay_ms=60_000), "Ok")  # not due: not handed over
    h.core.tick()
    [b] = h.core.take_ready(10)
    assert b.key == "b" and b.enqueued_ms == h.core.latest("b").created_at_ms  # type: ignore[union-attr]
