"""Time: the injected clock every trigger, backoff and timer reads, and the time units."""

from __future__ import annotations

import threading
import time
from typing import Protocol

ONE_SECOND = 1_000
ONE_MINUTE = 60 * ONE_SECOND
FIFTEEN_MINUTES = 15 * ONE_MINUTE
ONE_HOUR = 60 * ONE_MINUTE
ONE_DAY = 24 * ONE_HOUR


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
