"""LoopWatch.stood_still: the loop's own heartbeat says when it last stood still (a stopped
process, a worker holding the loop), which an executor asks before it begins a chain step
handed over with a run (actors/executor_data.py ``_follow``). No Ray: a loop of its own,
standing still for a measured 0.7 s (the fault under test, not a wait)."""

from __future__ import annotations

import asyncio
import time

from kmpray.actors.loop_watch import LoopWatch

STILL_S = 0.5  # what counts as standing still here (the engine's: kmpray.timing.STOOD_STILL_S)


def _never(*_args: object) -> None:
    raise AssertionError("not expected here")


async def _watched() -> LoopWatch:
    watch = LoopWatch(asyncio.get_running_loop(), 0.01, 60.0, _never.__code__, _never, _never,
                      stood_still_s=STILL_S)
    await asyncio.sleep(0.05)  # a few beats
    return watch


def test_a_loop_that_keeps_its_beat_never_stood_still() -> None:
    async def main() -> bool:
        watch = await _watched()
        await asyncio.sleep(0.1)
        return watch.stood_still(within_s=60.0)

    assert asyncio.run(main()) is False


def test_standing_still_is_seen_at_once_and_for_the_window_after() -> None:
    async def main() -> tuple[bool, bool, bool, bool]:
        watch = await _watched()
        time.sleep(0.7)  # the loop stands still (as a stopped process does)
        at_once = watch.stood_still(within_s=0.0)  # before the next beat: overdue now
        await asyncio.sleep(0.03)  # the beat comes, and keeps when the stand-still ended
        overdue_now = watch.stood_still(within_s=0.0)
        within = watch.stood_still(within_s=5.0)
        await asyncio.sleep(0.15)
        return at_once, overdue_now, within, watch.stood_still(within_s=0.1)

    at_once, overdue_now, within, after_window = asyncio.run(main())
    assert at_once is True
    assert overdue_now is False  # keeping its beat again...
    assert within is True  # ...but it stood still within the last 5 s
    # and not within the last 0.1 s, 0.18 s on (a hiccup of the machine under STILL_S does not count)
    assert after_window is False


def test_a_slow_start_is_not_a_stand_still() -> None:
    """The first beat comes after the actor's construction, however long that took."""

    async def main() -> bool:
        watch = LoopWatch(asyncio.get_running_loop(), 0.01, 60.0, _never.__code__, _never, _never,
                          stood_still_s=STILL_S)
        time.sleep(0.7)  # the rest of the constructor, before the loop runs the first beat
        slow_start = watch.stood_still(within_s=5.0)
        await asyncio.sleep(0.05)
        return slow_start or watch.stood_still(within_s=5.0)

    assert asyncio.run(main()) is False
