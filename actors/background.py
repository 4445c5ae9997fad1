"""Tasks an actor starts and does not await: held until they end, heard from if one fails.

asyncio's event loop keeps only weak references to tasks: one that nothing else holds may
be collected before it is done (the documentation of ``asyncio.create_task`` says to keep
a reference). And an exception nobody retrieves is reported only when its task is
collected, if ever: a scheduler whose housekeeping loop ended on one would stop
reconciling, pruning and watching files without a word. ``background`` holds each task
until it ends and logs the exception it ended with, if any, naming what it was.

Until session 56 three modules kept sets of their own for this, and thirteen places
(the scheduler's two loops among them) kept nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("kmpray.background")
T = TypeVar("T")

_RUNNING: set[asyncio.Future[Any]] = set()


def background(work: Coroutine[Any, Any, T], what: str) -> asyncio.Future[T]:
    """Run ``work`` on the running loop without awaiting it; ``what`` names it in a log
    line should it fail. Returns its task (await or cancel it as any other)."""
    task = asyncio.ensure_future(work)
    _RUNNING.add(task)
    task.add_done_callback(functools.partial(_ended, what))
    return task


def _ended(what: str, task: asyncio.Future[Any]) -> None:
    _RUNNING.discard(task)
    if task.cancelled():
        return
    exc = task.exception()  # retrieved: asyncio says nothing more of it
    if exc is not None:
        log.error("%s ended with an error: %r", what, exc, exc_info=exc)


def running() -> int:
    """Tasks started with ``background`` that have not ended (tests, and a leak's sign)."""
    return len(_RUNNING)


__all__ = ["background", "running"]
