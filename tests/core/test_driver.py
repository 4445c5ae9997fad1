"""kmpray.driver.step_through: the one way virtual time advances (actor and harness)."""

from __future__ import annotations

import pytest

from kmpray import ONE_MINUTE, TaskTrigger
from kmpray.clock import ManualClock
from kmpray.driver import step_through

from .conftest import START, Harness


class Dues:
    def __init__(self, *dues: int) -> None:
        self.dues = sorted(dues)

    def next_due_ms(self, lead_ms: int = 0) -> int | None:
        return self.dues[0] if self.dues else None


def test_it_stops_now_at_every_due_time_on_the_way_then_at_the_target() -> None:
    clock, core = ManualClock(1000), Dues(1500, 1200, 9000)
    seen = []
    for instant in step_through(core, clock, 2000):
        assert clock.now_ms() == instant
        seen.append(instant)
        while core.dues and core.dues[0] <= instant:  # "running what is due" here
            core.dues.pop(0)
    assert seen == [1000, 1200, 1500, 3000]
    assert core.dues == [9000]  # beyond the target: left for later


def test_due_times_added_by_a_stop_are_visited_too() -> None:
    clock, core = ManualClock(0), Dues(100)
    seen = []
    for instant in step_through(core, clock, 1000):
        seen.append(instant)
        if instant == 100:
            core.dues = [150]  # a retry 50 ms after the run at 100
        elif core.dues and core.dues[0] <= instant:
            core.dues.pop(0)
    assert seen == [0, 100, 150, 1000]


def test_a_negative_step_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="ms must be >= 0"):
        next(step_through(Dues(), ManualClock(0), -1))


def test_a_delayed_task_runs_exactly_at_its_due_time_through_the_harness(h: Harness) -> None:
    h.core.submit("later", TaskTrigger.OneTime(initial_delay_ms=ONE_MINUTE), "Ok")
    ran = h.advance(10 * ONE_MINUTE)
    assert [d.key for d in ran] == ["later"]
    assert h.core.latest("later").updated_at_ms == START + ONE_MINUTE  # type: ignore[union-attr]
