"""kmpray.driver.step_through: the one way virtual time advances (actor and harness)."""

from __future__ import annotations

import pytest

from kmpray import ONE_MINUTE, TaskTrigger
from kmpray.clock import ManualClock
from kmpray.driver import sleep_s, step_through
from kmpray.timing import WALL_CLOCK_RECHECK_S

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


def _noticed_after_s(due_ms: int, jump_at_s: float, jump_s: float) -> float:
    """The real-time loop as actors/scheduler.py runs it, on a machine whose wall clock
    jumps ``jump_s`` forward ``jump_at_s`` into a sleep (a suspend, which the monotonic
    clock asyncio sleeps on does not count; or an NTP step): how long after the jump, in
    monotonic seconds, the loop finds the task due."""
    wall, mono = START, 0.0
    while (s := sleep_s(due_ms, wall)) is not None and s > 0:
        if mono <= jump_at_s < mono + s:
            wall += int(jump_s * 1000)
        mono += s
        wall += int(s * 1000)
    return mono - jump_at_s


def test_the_real_time_loop_reads_the_wall_clock_again_at_least_once_a_second() -> None:
    assert sleep_s(None, START) is None  # nothing due: until woken
    assert sleep_s(START - 5, START) == 0.0 and sleep_s(START + 300, START) == 0.3
    assert sleep_s(START + 10 * ONE_MINUTE, START) == WALL_CLOCK_RECHECK_S == 1.0
    # An Exact task due in 10 minutes, the lid closed a minute later for an hour: it runs
    # within a second of waking (sleeping straight to the due time, it ran 9 minutes after
    # waking: at 1:10 of wall time, an hour late).
    assert _noticed_after_s(START + 10 * ONE_MINUTE, jump_at_s=60, jump_s=3600) <= 1.0
    assert _noticed_after_s(START + 10 * ONE_MINUTE, jump_at_s=60.5, jump_s=3600) <= 1.0
