"""Cancelling runs on an executor or heavy worker: a mixin of the executors (executor.py);
the attributes below are the actor's.

A cancel marks the run (``ctx.is_cancelled()`` turns true) and, unless only asked
cooperatively, cancels its coroutine. A Ray cancel can overtake the lane's submit, and a
chain task handed with a run begins here later: a mark for a run not here yet is kept,
but only the latest ``EARLY_CANCELS`` of those, so marks for runs that never come cannot
pile up.
"""

from __future__ import annotations

import asyncio
import threading

import ray

from kmpray.protocol import RunKey

from .fencing import Fencing

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
