"""Time: the injected clock every trigger, backoff and timer reads, and the time units."""

from __future__ import annotations

import asyncio
import math
import numbers
import threading
import time
from typing import Protocol

from .timing import MIN_TIMER_S

ONE_SECOND = 1_000
ONE_MINUTE = 60 * ONE_SECOND
FIFTEEN_MINUTES = 15 * ONE_MINUTE
ONE_HOUR = 60 * ONE_MINUTE
ONE_DAY = 24 * ONE_HOUR


async def sleep_until(epoch_s: float) -> None:
    """Until the wall clock reaches ``epoch_s``, never before: each wait at least
    ``MIN_TIMER_S``. uvloop (Ray runs every actor on it when it is installed) rounds a
    shorter timer down to 0, and one ``asyncio.sleep`` of what was left began Exact runs
    up to ~0.9 ms before their due time (session 45)."""
    while (wait := epoch_s - time.time()) > 0:
        await asyncio.sleep(max(wait, MIN_TIMER_S))


def deadline_after(timeout_s: float | None, name: str = "timeout_s") -> float | None:
    """The ``time.monotonic()`` deadline of a caller's timeout: None (or infinity) waits
    for good, a negative one is already due. Anything but a real number raises naming
    ``name``: NaN compares false with every time, so ``wait(..., timeout_s=nan)`` waited
    for good and ``Subscription.get(timeout_s=nan)`` polled in a loop."""
    if timeout_s is None:
        return None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, numbers.Real):
        got = f"{type(timeout_s).__name__} {timeout_s!r:.40}"
        raise TypeError(f"{name}: must be None or a number of seconds, got {got}")
    if math.isnan(timeout_s):
        raise ValueError(f"{name}: must be None or a number of seconds, got nan")
    return None if math.isinf(timeout_s) and timeout_s > 0 else time.monotonic() + float(timeout_s)


class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    """Wall-clock epoch milliseconds."""

    virtual = False

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that only moves when told to (the androidx TestDriver idea)."""

    virtual = True

    def __init__(self, start_ms: int | None = None) -> None:
        self._now = SystemClock().now_ms() if start_ms is None else start_ms
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        return self._now

    def advance(self, ms: int) -> int:
        if ms < 0:
            raise ValueError(f"advance_time: ms must be >= 0, got {ms}")
        with self._lock:
            self._now += ms
            return self._now

    def set(self, at_ms: int) -> None:
        """Move forward to ``at_ms``; the clock never goes back."""
        with self._lock:
            self._now = max(self._now, at_ms)
