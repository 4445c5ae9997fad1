"""Virtual time, stepped the one way both the SchedulerActor and the core's test harness
step it: through every due time up to the target, in order.

``advance_time(ms)`` must not jump: a periodic task due every 15 minutes runs four times
in an hour, each run settled before the next due time is reached (its next period, a
retry's backoff, a chain's next step all count from when it ended). So the driver
stops at each due time; the caller runs everything due there, then asks for the next.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class _Due(Protocol):
    def next_due_ms(self, lead_ms: int = 0) -> int | None: ...


class _Settable(Protocol):
    def now_ms(self) -> int: ...
    def set(self, ms: int) -> None: ...


def step_through(core: _Due, clock: _Settable, ms: int) -> Iterator[int]:
    """Yield the virtual instant at each stop from now to now + ``ms``: now, every due
    time on the way (re-read after each stop: runs at one stop may add earlier due
    times), then the target. The clock is at the yielded instant when the caller runs."""
    if ms < 0:
        raise ValueError(f"advance_time: ms must be >= 0, got {ms}")
    target = clock.now_ms() + ms
    yield clock.now_ms()
    while (due := core.next_due_ms()) is not None and due <= target:
        clock.set(due)
        yield due
    clock.set(target)
    yield target
