"""How often one run's progress reports become events: a token bucket per run.

A worker may call ``ctx.report_progress`` in a tight loop (once per item of a million).
Each call that passes is an event through the scheduler to the broker's store, so a
flood slowed every other enqueue (p50 ~200 ms during a 200,000-report run here) and
pushed other tasks' completions out of the replay window (``event_retention``).

So the first ``burst`` reports of a run pass at once, and after that one per
``interval_ms``; a report made in between is held, and a newer one replaces it (the
newest wins, as an observer of Android WorkManager's ``setProgress`` sees it through
LiveData). The held report goes when its turn comes, and at the latest when the run
ends, before its result: the last progress a run reported is always seen, in order.
``interval_ms=0`` lets every report through.

Thread-safe: a sync worker reports from its own thread; ``send`` is always called on
the run's event loop, in the order the reports were made.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

Report = tuple[int, "str | None"]


class ProgressThrottle:
    """One run's reports → ``send(pct, message)`` on ``loop``; ``clock`` is monotonic seconds."""

    def __init__(
        self,
        send: Callable[[int, str | None], None],
        loop: asyncio.AbstractEventLoop,
        burst: int,
        interval_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._loop = loop
        self._clock = clock
        self._burst = max(1, burst)
        self._interval = interval_ms / 1000
        self._tokens = float(self._burst)
        self._at = clock()
        self._held: Report | None = None
        self._waiting = False  # a timer is set to send what is held
        self._closed = False
        self._lock = threading.Lock()
        self.passed = 0  # reports sent
        self.replaced = 0  # reports a newer one replaced before they were sent

    def offer(self, pct: int, message: str | None) -> None:
        with self._lock:
            if self._closed:
                return  # the run ended (a timed-out thread may still report): not this run's any more
            if self._interval <= 0:
                self._pass((pct, message))
            elif self._held is None and self._take():
                self._pass((pct, message))
            else:
                if self._held is not None:
                    self.replaced += 1
                self._held = (pct, message)
                self._wait()

    def close(self, flush: bool = True) -> None:
        """The run ended: what is held goes now (``flush``) or never; nothing passes after."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            held, self._held = self._held, None
            if flush and held is not None:
                self._pass(held)

    def _due(self) -> None:
        with self._lock:
            self._waiting = False
            if self._closed or self._held is None:
                return
            if self._take():
                held, self._held = self._held, None
                self._pass(held)
            else:  # (a clock that jumped, or a timer early): try again when the token is there
                self._wait()

    def _take(self) -> bool:
        now = self._clock()
        self._tokens = min(float(self._burst), self._tokens + (now - self._at) / self._interval)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def _wait(self) -> None:
        if not self._waiting:
            self._waiting = True
            delay = max(0.0, (1 - self._tokens) * self._interval)
            if self._on_loop():
                self._loop.call_later(delay, self._due)
            else:
                self._loop.call_soon_threadsafe(self._loop.call_later, delay, self._due)

    def _pass(self, report: Report) -> None:
        # Under the lock, and FIFO through the loop: reports leave in the order they were made.
        self.passed += 1
        if self._on_loop():
            self._send(*report)
        else:
            self._loop.call_soon_threadsafe(self._send, *report)

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False


class LazyThrottle:
    """A run's ProgressThrottle, made by ``make()`` at the run's first report: most runs
    report none, and making one and closing it (its lock, its clock reading, a dozen
    fields) was ~1 µs of an executor's loop per run. Once made, every call goes to it;
    ``close`` before any report leaves nothing to make (a later report is dropped)."""

    __slots__ = ("_closed", "_make", "_real")
    _lock = threading.Lock()  # only at a run's first report and at its close before one

    def __init__(self, make: Callable[[], ProgressThrottle]) -> None:
        self._make = make
        self._real: ProgressThrottle | None = None
        self._closed = False

    def offer(self, pct: int, message: str | None) -> None:
        real = self._real
        if real is None:
            with LazyThrottle._lock:
                if self._closed:
                    return  # the run ended before its first report
                if self._real is None:
                    self._real = self._make()
                real = self._real
        real.offer(pct, message)

    def close(self, flush: bool = True) -> None:
        real = self._real
        if real is None:
            with LazyThrottle._lock:
                self._closed = True
                real = self._real
            if real is None:
                return
        real.close(flush)
