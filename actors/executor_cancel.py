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

from kmpray.protocol import RunKey

#: Cancel marks kept for runs not (yet) here. Only the latest this many.
EARLY_CANCELS = 10_000


class Cancelling:
    _tasks: dict[RunKey, asyncio.Task[None]]
    _cancelled: set[tuple[str, int]]  # told to stop: marked until the run ends here
    _cancelled_early: dict[tuple[str, int], None]  # of those, not here when told

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
