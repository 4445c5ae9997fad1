"""An executor's "began" notices (actors/executor.py ``_notice_later``/``_notice_due``):
only a run still running STARTED_NOTICE_S after it began is announced (a short run's
result says it began), in the order runs began, from one timer for all runs. No Ray:
the two methods on a stand-in for the executor, the timer read rather than waited for."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from kmpray.actors.executor import ExecutorBase

from kmpray.protocol import Began
from kmpray.timing import STARTED_NOTICE_S


class _Executor:
    _notice_later = ExecutorBase._notice_later
    _notice_due = ExecutorBase._notice_due

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._notices: deque[tuple[float, str, int]] = deque()
        self._notice_timer: Any = None
        self._begun: set[tuple[str, int]] = set()
        self.said: list[Any] = []

    def _say(self, item: Any) -> None:
        self.said.append(item)

    def begin(self, key: str, run_id: int, at: float) -> None:
        self._begun.add((key, run_id))
        self._notice_later(at, key, run_id)


def test_only_runs_still_going_when_due_are_announced_in_order_from_one_timer() -> None:
    loop = asyncio.new_event_loop()
    try:
        ex = _Executor(loop)
        past = time.monotonic() - 1  # began a second ago: due
        ex.begin("a", 1, past)
        timer = ex._notice_timer
        ex.begin("short", 1, past)
        ex.begin("b", 2, past + 0.001)
        assert ex._notice_timer is timer  # one timer for every run waiting for its notice
        ex._begun.discard(("short", 1))  # ended before its notice was due: its result says it
        ex.begin("later", 3, time.monotonic() + 60)  # not due yet
        ex._notice_due()  # what the timer runs
        assert ex.said == [Began("a", 1), Began("b", 2)]
        assert list(ex._notices) == [(ex._notices[0][0], "later", 3)]
        again = ex._notice_timer  # armed again, for the oldest left
        assert again is not None and again is not timer
        assert again.when() - loop.time() > 30
        ex._begun.discard(("later", 3))
        ex._notices[0] = (time.monotonic() - 1, "later", 3)
        ex._notice_due()
        assert ex.said == [Began("a", 1), Began("b", 2)] and ex._notice_timer is None and not ex._notices
        ex.begin("c", 1, time.monotonic())  # the next run arms a timer STARTED_NOTICE_S away
        assert abs(ex._notice_timer.when() - loop.time() - STARTED_NOTICE_S) < 1
    finally:
        loop.close()
