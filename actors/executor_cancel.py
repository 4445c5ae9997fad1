"""Cancelling runs on an executor or heavy worker: a mixin of the executors (executor.py);
the attributes below are the actor's.

A cancel marks the run (``ctx.is_cancelled()`` turns true) and, unless only asked
cooperatively, cancels its coroutine. A Ray cancel can overtake the lane's submit, and a
chain task handed with a run begins here later: a mark for a run not here yet is kept,
but only the latest ``EARLY_CANCELS`` of those, so marks for runs that never come cannot
pile up.

``cancel()`` waits for the executor's answer at most ``CANCEL_ACK_TIMEOUT_S`` (one that is
down has nothing to begin). One that stood still longer (its process stopped, a frozen
VM) reads the cancel only after it goes on, and a run queued here could begin first,
after ``cancel()`` returned (session 59, the chaos driver's pauses). So a run about to
begin while the loop stands still, or within that long after, asks the scheduler first
whether it still holds it here (``_still_mine``: one question for every run that asks
in the same turn); one it no longer holds (cancelled, replaced, withdrawn) never begins.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import ray

from kmpray.protocol import RunKey
from kmpray.timing import CANCEL_ACK_TIMEOUT_S

from .background import background
from .fencing import Fencing
from .loop_watch import LoopWatch
from .names import SCHEDULER, lookup
from .retry import call_with_retry

log = logging.getLogger("kmpray.executor")

#: Cancel marks kept for runs not (yet) here. Only the latest this many.
EARLY_CANCELS = 10_000
#: The concurrency group (a thread and event loop of its own) of what must be answered
#: while a worker blocks the executor's loop: ``holding``, ``hand_back``.
CONTROL = "control"


class Cancelling:
    _tasks: dict[RunKey, asyncio.Task[None]]
    _cancelled: set[tuple[str, int]]  # told to stop: marked until the run ends here
    _cancelled_early: dict[tuple[str, int], None]  # of those, not here when told
    _begun: set[RunKey]
    _unreported: dict[RunKey, None]
    _begin_lock: threading.Lock
    _fencing: Fencing
    _loop: asyncio.AbstractEventLoop
    watch: LoopWatch
    namespace: str
    index: int
    _mine_asked: tuple[dict[RunKey, None], asyncio.Future[set[RunKey]]] | None = None
    _handed_here: set[RunKey]  # chain tasks begun here by their predecessor's run (``_follow``)

    _kind: Callable[[], str]

    def _stood_still(self) -> bool:
        """Whether this loop stands still or stood still within ``CANCEL_ACK_TIMEOUT_S``:
        a cancel of a run here may have been answered without this executor."""
        return self.watch.stood_still(CANCEL_ACK_TIMEOUT_S)

    async def _gone_while_still(self, key: RunKey) -> bool:
        """Just before ``key`` begins, this loop having stood still (``_stood_still``, asked
        first: a plain call on every run's path, this coroutine only after a stand-still):
        True (it never begins here: ``_run`` lets it go) if the scheduler no longer holds it
        here. A chain task this executor handed on itself (``_follow``, which does not after
        a stand-still) is not asked about: the scheduler learns of it from the report, which
        may come after."""
        return key not in self._handed_here and not await self._still_mine(key)

    async def _still_mine(self, key: RunKey) -> bool:
        """After a stand-still: whether the scheduler still holds ``key`` here. Runs that
        ask in the same turn share one question."""
        if self._mine_asked is None:
            self._mine_asked = ({}, self._loop.create_future())
            self._loop.call_soon(self._ask_mine)
        keys, answer = self._mine_asked
        keys[key] = None
        return key in await asyncio.shield(answer)

    def _ask_mine(self) -> None:
        assert self._mine_asked is not None
        keys, answer = self._mine_asked
        self._mine_asked = None

        async def ask() -> None:
            try:
                scheduler = lookup(SCHEDULER, self.namespace)
                held: Any = await call_with_retry(
                    lambda: scheduler.still_held.remote(self._kind(), self.index, list(keys)))
                answer.set_result({(k, r) for k, r in held})
            except Exception as exc:  # no scheduler to ask: they begin, as before session 59
                log.warning("%s %d: could not ask the scheduler whether %d runs are still held here "
                            "after this process stood still (%s); they begin", self._kind(), self.index,
                            len(keys), type(exc).__name__)
                answer.set_result(set(keys))

        background(ask(), "asking the scheduler which runs are still held here")

    @ray.method(concurrency_group=CONTROL)
    def hand_back(self, runs: list[tuple[str, int]]) -> list[RunKey]:
        """The scheduler wants these queued runs back for executors with free slots (its
        stealing, actors/stealing.py): of them, those taken here that have not begun are
        given back, never to begin here, and returned; the others (begun meanwhile, ended,
        never arrived) stay as they are. Under the begin lock, on the control thread: a
        run either begins here or is given back, never both."""
        given: list[RunKey] = []
        with self._begin_lock:
            for run in runs:
                key = (run[0], run[1])
                if key in self._tasks and key not in self._begun and key not in self._cancelled:
                    self._fencing.give_back(key)
                    self._unreported.pop(key, None)  # not held: a restarted scheduler runs it elsewhere
                    given.append(key)
        return given

    def cancel_cooperative(self, runs: list[tuple[str, int]]) -> None:
        """Only ask: ``ctx.is_cancelled()`` turns true; the run ends when the worker returns."""
        for key in runs:
            self._mark_cancelled(tuple(key))  # type: ignore[arg-type]

    def busy(self, key: tuple[str, int]) -> bool:
        return tuple(key) in self._tasks

    def cancel(self, runs: list[tuple[str, int]]) -> int:
        n = 0
        for key in runs:
            key = tuple(key)  # type: ignore[assignment]
            self._mark_cancelled(key)
            task = self._tasks.get(key)
            if task is not None:
                task.cancel()
                n += 1
        return n

    def _mark_cancelled(self, key: tuple[str, int]) -> None:
        """Marked until the run ends here (``_unmark``); a mark for a run not here is one of
        the latest EARLY_CANCELS only, so marks for runs that never come cannot pile up."""
        self._cancelled.add(key)
        if key in self._tasks:
            return
        self._cancelled_early[key] = None
        if len(self._cancelled_early) > EARLY_CANCELS:
            oldest = next(iter(self._cancelled_early))
            del self._cancelled_early[oldest]
            if oldest not in self._tasks:
                self._cancelled.discard(oldest)

    def _unmark(self, key: tuple[str, int]) -> None:
        self._cancelled.discard(key)
        self._cancelled_early.pop(key, None)
