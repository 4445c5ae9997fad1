"""Tasks the actors start without awaiting (actors/background.py), with no Ray: held until
they end, and heard from when one fails."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from typing import Any

import pytest
from kmpray.actors.background import background, running


async def _forever() -> None:
    """Waits on a future only its own frame holds: nothing outside the task refers to it."""
    await asyncio.get_running_loop().create_future()


def test_a_task_nothing_else_holds_is_kept_until_it_ends() -> None:
    """What the loop does with a bare ensure_future (the thirteen places until session 56):
    the task is collected mid-wait. background() keeps it."""

    async def scenario() -> tuple[bool, bool, int]:
        bare = weakref.ref(asyncio.ensure_future(_forever()))
        kept_task = background(_forever(), "a test's wait")
        kept = weakref.ref(kept_task)
        del kept_task
        await asyncio.sleep(0)  # both begin, and wait
        gc.collect()
        alive = (bare() is not None, kept() is not None)
        held = running()
        task = kept()
        assert task is not None
        task.cancel()
        await asyncio.wait([task])
        await asyncio.sleep(0)  # its done callbacks run a turn after it ends
        return alive[0], alive[1], held - running()

    bare_alive, kept_alive, released = asyncio.run(scenario())
    assert (bare_alive, kept_alive) == (False, True)
    assert released == 1  # let go once it ended


def test_a_failure_is_logged_naming_the_task_and_a_cancel_is_not(caplog: Any) -> None:
    async def fails() -> None:
        raise ValueError("no such executor")

    async def scenario() -> None:
        done = background(fails(), "executor 3: confirming a submit")
        stopped = background(_forever(), "a wait cancelled")
        await asyncio.sleep(0)
        stopped.cancel()
        with pytest.raises(ValueError):
            await done  # the task is the caller's still: awaiting it raises as ever
        await asyncio.sleep(0)

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
        gc.collect()
    said = [(r.name, r.getMessage()) for r in caplog.records]
    assert said == [("kmpray.background",
                     "executor 3: confirming a submit ended with an error: ValueError('no such executor')")]
