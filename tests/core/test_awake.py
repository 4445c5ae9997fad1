"""wait_awake (actors/awake.py): a bounded wait that does not run out while the process
stands still. The stand-still is modelled by blocking the loop's thread (a stopped
process's loop does not run either); no Ray."""

from __future__ import annotations

import asyncio
import time

from kmpray.actors.awake import wait_awake


def test_it_returns_when_everything_is_done() -> None:
    async def main() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        loop.call_later(0.05, done.set_result, None)
        began = time.monotonic()
        return await wait_awake([done], 5.0, step_s=0.1), time.monotonic() - began

    finished, took = asyncio.run(main())
    assert finished is True and took < 1.0


def test_time_standing_still_does_not_count() -> None:
    async def main() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        never: asyncio.Future[None] = loop.create_future()
        loop.call_later(0.05, time.sleep, 1.5)  # the loop stands still 1.5 s, past the whole bound
        began = time.monotonic()
        return await wait_awake([never], 1.0, step_s=0.1), time.monotonic() - began

    finished, took = asyncio.run(main())
    assert finished is False
    # 1.5 s standing still counted as one step of two at most (0.2 s): ~0.8 s more awake.
    assert took >= 1.5 + 0.6, took


def test_the_bound_holds_while_awake() -> None:
    async def main() -> tuple[bool, float]:
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        began = time.monotonic()
        return await wait_awake([never], 0.5, step_s=0.1), time.monotonic() - began

    finished, took = asyncio.run(main())
    assert finished is False and 0.45 <= took < 2.0, took
