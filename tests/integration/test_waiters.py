"""Callers parked in the scheduler until work settles (actors/waiters.py), on the pure
core, no Ray: a wait that times out leaves nothing behind; one that is woken returns."""

from __future__ import annotations

import asyncio

from kmpray.actors.waiters import Waiters

from kmpray import TaskTrigger
from kmpray.clock import ManualClock
from kmpray.engine import SchedulerCore
from kmpray.platforms import PLATFORMS
from kmpray.results import Success


def test_timed_out_waits_leave_no_future_behind_and_a_woken_one_returns() -> None:
    core = SchedulerCore(ManualClock(1_700_000_000_000), PLATFORMS["cluster"])
    core.submit("later", TaskTrigger.OneTime(initial_delay_ms=7 * 24 * 3600 * 1000), "Ok")
    core.submit("now", TaskTrigger.OneTime(), "Ok")
    waiters = Waiters(core)

    async def main() -> tuple[int, bool]:
        for _ in range(5):  # a client long-polling a task due next week, chunk after chunk
            await waiters.wait("later", 0, 0.001)
        left = len(waiters._by_name)
        parked = asyncio.ensure_future(waiters.wait("now", 0, 30))
        await asyncio.sleep(0)
        core.tick()
        [run] = core.take_ready(1)
        assert core.complete(run.key, run.run_id, Success())
        waiters.wake("now")
        await asyncio.wait_for(parked, 5)
        return left, not waiters._by_name

    assert asyncio.run(main()) == (0, True)
