"""The range of every time a user gives in milliseconds: instants and durations.

An instant (``Exact.at_epoch_millis``, a window's bounds) is epoch milliseconds up to the
end of the year 9999, the last instant a ``datetime`` holds; a duration (an initial delay,
an interval, a flex, a backoff, a timeout, ``Retry.delay_ms``) is at most 100 years. Past
those a value is a mistake, most often of unit: ``Exact(time.time_ns())`` is a task due in
the year 56,930,173 that nothing would ever run, and a due time past 2**64 ms cannot be
stored (msgpack's largest integer), so its enqueue failed with ``FAILED_UNKNOWN`` instead
of saying why. The message names the likely unit.
"""

from __future__ import annotations

import time
from typing import Annotated

from pydantic import AfterValidator, Field

MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_DURATION_MS = 100 * 36_525 * 86_400_000 // 100  # 100 years of 365.25 days: 3,155,760,000,000


def _instant(value: int) -> int:
    if value > MAX_EPOCH_MS:
        unit = next((f" (this looks like {unit})" for factor, unit in ((1_000, "microseconds"),
                     (1_000_000, "nanoseconds")) if value // factor <= MAX_EPOCH_MS), "")
        raise ValueError(f"{value} is after the year 9999: epoch milliseconds expected{unit}")
    return value


def _duration(value: int) -> int:
    if value > MAX_DURATION_MS:
        raise ValueError(f"{value} ms is over 100 years ({MAX_DURATION_MS} ms), the longest a delay, "
                         "interval or timeout may be")
    return value


InstantMs = Annotated[int, Field(ge=0), AfterValidator(_instant)]
DurationMs = Annotated[int, Field(ge=0), AfterValidator(_duration)]
PositiveDurationMs = Annotated[int, Field(gt=0), AfterValidator(_duration)]


def utc_text(ms: int, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """``ms`` as UTC in ``fmt``; one the platform cannot show (a row stored before these
    bounds, due in the year 56,930,173) as its number instead of an error."""
    try:
        return time.strftime(fmt, time.gmtime(ms / 1000))
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms after the epoch"
