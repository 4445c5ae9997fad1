"""Periodic tasks: first run at enqueue, anchored periods, flex, coalescing, platform minimums."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kmpray import FIFTEEN_MINUTES, ONE_MINUTE, ScheduleResult, TaskState, TaskTrigger
from kmpray.results import Failure
from kmpray.triggers import periodic_next

from .conftest import START, Harness


def _starts(h: Harness) -> list[int]:
    return [d.run_id for d in h.runs]


def test_first_run_is_due_at_enqueue_and_later_runs_are_anchored(h: Harness) -> None:
    h.core.submit("p", TaskTrigger.Periodic(FIFTEEN_MINUTES), "Ok")
    times = []
    for _ in range(4):
        if h.step():
            times.append(h.clock.now_ms() - START)
        h.clock.set(h.core.next_due_ms() or 0)
    assert times == [0, FIFTEEN_MINUTES, 2 * FIFTEEN_MINUTES, 3 * FIFTEEN_MINUTES]
    rec = h.core.latest("p")
    assert rec is not None and rec.state is TaskState.ENQUEUED and rec.run_count == 4


def test_a_late_run_does_not_drift_the_schedule(h: Harness) -> None:
    h.core.submit("p", TaskTrigger.Periodic(FIFTEEN_MINUTES), "Ok")
    h.step()
    h.clock.set(START + FIFTEEN_MINUTES + 7 * ONE_MINUTE)  # period 1 runs 7 min late
    h.step()
    assert h.core.latest("p").next_run_at_ms == START + 2 * FIFTEEN_MINUTES  # type: ignore[union-attr]


def test_missed_periods_coalesce_into_one_run(h: Harness) -> None:
    h.core.submit("p", TaskTrigger.Periodic(FIFTEEN_MINUTES), "Ok")
    h.step()
    h.clock.set(START + 5 * FIFTEEN_MINUTES + 1)  # downtime: periods 1..5 all missed
    assert len(h.step()) == 1
    assert h.core.latest("p").next_run_at_ms == START + 6 * FIFTEEN_MINUTES  # type: ignore[union-attr]


def test_flex_window_runs_at_its_start_inside_the_period(h: Harness) -> None:
    h.core.submit("p", TaskTrigger.Periodic(FIFTEEN_MINUTES, 5 * ONE_MINUTE), "Ok")
    h.step()
    assert h.core.latest("p").next_run_at_ms == START + 10 * ONE_MINUTE  # type: ignore[union-attr]


def test_advance_time_runs_one_per_period(h: Harness) -> None:
    h.core.submit("p", TaskTrigger.Periodic(FIFTEEN_MINUTES), "Ok")
    h.step()
    assert len(h.advance(60 * ONE_MINUTE)) == 4


def test_failed_period_resets_attempts_and_continues(h: Harness) -> None:
    h.core.submit("p", TaskTrigger.Periodic(FIFTEEN_MINUTES), "Fail")
    h.step()
    rec = h.core.latest("p")
    assert rec is not None and rec.state is TaskState.ENQUEUED
    assert rec.run_attempt_count == 0 and rec.run_count == 1 and rec.result == Failure("boom")


def test_platform_minimum_interval() -> None:
    cluster, android = Harness("cluster"), Harness("android")
    assert cluster.core.submit("p", TaskTrigger.Periodic(1_000), "Ok").result is ScheduleResult.SUCCESS
    low = cluster.core.submit("q", TaskTrigger.Periodic(999), "Ok")
    assert low.result is ScheduleResult.REJECTED_INVALID_PARAMS and "interval_ms" in (low.reason or "")
    out = android.core.submit("p", TaskTrigger.Periodic(ONE_MINUTE), "Ok")
    assert out.result is ScheduleResult.REJECTED_INVALID_PARAMS and "android minimum" in (out.reason or "")
    ok = android.core.submit("p", TaskTrigger.Periodic(FIFTEEN_MINUTES), "Ok")
    assert ok.result is ScheduleResult.SUCCESS


def test_flex_bounds(h: Harness) -> None:
    bad = h.core.submit("p", TaskTrigger.Periodic(FIFTEEN_MINUTES, ONE_MINUTE), "Ok")
    assert bad.result is ScheduleResult.REJECTED_INVALID_PARAMS and "flex_ms" in (bad.reason or "")
    too_big = h.core.submit("q", TaskTrigger.Periodic(FIFTEEN_MINUTES, FIFTEEN_MINUTES + 1), "Ok")
    assert too_big.result is ScheduleResult.REJECTED_INVALID_PARAMS


@given(
    interval=st.integers(1_000, 10**8),
    flex_frac=st.none() | st.floats(0.0, 1.0),
    last=st.integers(0, 1_000),
    late=st.integers(0, 10**9),
)
def test_periodic_next_is_anchored_and_never_in_the_past(
    interval: int, flex_frac: float | None, last: int, late: int
) -> None:
    anchor = START
    flex = None if flex_frac is None else max(1, int(interval * flex_frac))
    now = anchor + last * interval + late
    period, due = periodic_next(anchor, interval, flex, last, now)
    end = anchor + period * interval
    assert period >= last + 1
    assert now < end <= now + interval + (interval if period == last + 1 else 0)
    assert due >= now
    assert due == now or end - (flex or 0) <= due <= end


def test_timers_due_within_the_lead_are_handed_over_early_with_their_start_time(h: Harness) -> None:
    h.core.submit("soon", TaskTrigger.Exact(START + 15), "Ok")
    h.core.submit("later", TaskTrigger.Exact(START + 50), "Ok")
    h.core.submit("now", TaskTrigger.OneTime(), "Ok")
    assert h.core.ready_count() == 1  # "now" is ready at its enqueue: no timer on the way
    assert h.core.next_due_ms(20) == START + 15 - 10  # half a lead before "soon"
    h.core.tick(20)
    now, soon = h.core.take_ready(10)
    assert (now.key, now.start_at_ms) == ("now", None)
    assert (soon.key, soon.start_at_ms) == ("soon", START + 15)
    assert h.core.latest("soon").info().state is TaskState.ENQUEUED  # type: ignore[union-attr]
    # The next tick is due half a lead before "later": a batch of timers per tick.
    assert h.core.next_due_ms(20) == START + 50 - 10
    h.core.run_lost(soon.key, soon.run_id)  # its executor died before the due time
    assert h.core.next_due_ms() == START + 15  # due then still, not at once
    h.core.tick()
    assert h.core.take_ready(10) == []
    h.clock.set(START + 15)
    h.core.tick()
    [again] = h.core.take_ready(10)
    assert (again.key, again.start_at_ms) == ("soon", None)


def test_without_a_lead_nothing_is_handed_over_before_it_is_due(h: Harness) -> None:
    h.core.submit("soon", TaskTrigger.Exact(START + 1), "Ok")
    h.core.tick()
    assert h.core.take_ready(10) == []
    assert h.core.next_due_ms() == START + 1


def test_an_early_run_adopted_after_a_restart_and_then_lost_is_still_due_at_its_time(h: Harness) -> None:
    h.core.submit("soon", TaskTrigger.Exact(START + 15), "Ok")
    h.core.tick(20)
    [soon] = h.core.take_ready(10)  # sleeping on its executor until START + 15
    h.restart()
    assert h.core.adopt([(soon.key, soon.run_id)], waiting={(soon.key, soon.run_id)}) == [(soon.key, soon.run_id)]
    h.core.run_lost(soon.key, soon.run_id)  # then its executor died too
    assert h.core.next_due_ms() == START + 15
