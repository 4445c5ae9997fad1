"""kmpray.driver.step_through: the one way virtual time advances (actor and harness)."""

from __future__ import annotations

import pytest

from kmpray import ONE_MINUTE, Constraints, TaskTrigger
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


def _turns(h: Harness, room: int = 10_000) -> tuple[list[bool], list[list[str]]]:
    """Pump turns until one is not cut short: what each returned and handed over."""
    from kmpray.driver import pump

    cuts, handed = [], []
    for _ in range(100):
        batch: list[str] = []
        cuts.append(pump(h.core, lambda: (room, room), lambda b: batch.extend(d.key for d in b) or True))
        handed.append(batch)
        if not cuts[-1]:
            return cuts, handed
    raise AssertionError("the turns never ended")


def test_a_turn_fires_at_most_its_budget_of_timers_and_the_next_turns_the_rest_in_order(h: Harness) -> None:
    """A turn over 99,000 due timers held the scheduler's loop for the whole of them."""
    h.core.turn_budget = 3
    for k in range(7):
        h.core.submit(f"t{k}", TaskTrigger.Exact(START + k), "Ok")
    h.clock.set(START + 10)
    cuts, handed = _turns(h)
    assert cuts == [True, True, False]
    assert handed == [["t0", "t1", "t2"], ["t3", "t4", "t5"], ["t6"]]  # due order kept across turns


def test_runs_set_aside_count_against_the_budget_and_dispatchable_ones_do_not() -> None:
    from kmpray.device import DeviceState

    h = Harness("android")  # where requires_charging gates (a "cluster" node counts as charging)
    h.core.set_devices({"n1": DeviceState(charging=False)})
    for k in range(5):  # due first: each set aside (no node is charging)
        gate = Constraints(requires_charging=True)
        h.core.submit(f"gated{k}", TaskTrigger.OneTime(), "Ok", constraints=gate)
    for k in range(4):
        h.core.submit(f"free{k}", TaskTrigger.OneTime(), "Ok")
    h.core.turn_budget = 2
    cuts, handed = _turns(h)
    assert cuts == [True, True, False]
    assert handed == [[], [], ["free0", "free1", "free2", "free3"]]
    assert [h.state(f"gated{k}") for k in range(5)] == ["ENQUEUED"] * 5
    assert "due, but no node satisfies its constraints" in (h.core.explain("gated4") or "")


def test_a_turn_cut_by_its_timers_stays_cut_when_its_set_aside_runs_use_up_the_rest() -> None:
    """Both budgets spent in one turn: the timers left due keep it cut (``pump`` says so,
    the actor comes back at once) although no run is left ready."""
    from kmpray.device import DeviceState
    from kmpray.driver import pump

    h = Harness("android")
    h.core.set_devices({"n1": DeviceState(charging=False)})
    gate = Constraints(requires_charging=True)
    for k in range(6):
        h.core.submit(f"g{k}", TaskTrigger.Exact(START + k), "Ok", constraints=gate)
    h.clock.set(START + 10)
    h.core.turn_budget = 3
    assert pump(h.core, lambda: (10, 10), lambda b: True) is True  # 3 fired, 3 set aside, 3 due
    assert h.core.ready_count() == 0


def test_virtual_time_and_a_core_without_a_budget_take_a_due_instant_whole(h: Harness) -> None:
    assert h.core.turn_budget is None  # a ManualClock: virtual time finishes each due instant
    for k in range(50):
        h.core.submit(f"t{k}", TaskTrigger.Exact(START), "Ok")
    cuts, handed = _turns(h)
    assert cuts == [False] and len(handed[0]) == 50


def test_sleep_until_never_wakes_before_its_instant_on_uvloop_or_asyncio() -> None:
    """An executor waits for a run's due time with it. One ``asyncio.sleep`` of what was
    left woke early on uvloop (which rounds a sub-millisecond timer down to 0): Exact runs
    began up to ~0.9 ms before their due time wherever uvloop is installed."""
    import asyncio
    import random
    import time

    import uvloop

    from kmpray.clock import sleep_until

    async def early_wakes() -> list[float]:
        rng, early = random.Random(7), []
        for _ in range(150):
            target = time.time() + rng.uniform(0.0, 0.002)
            await sleep_until(target)
            if (woke := time.time()) < target:
                early.append(target - woke)
        return early

    assert uvloop.run(early_wakes()) == []
    assert asyncio.run(early_wakes()) == []
