"""How the scheduler core is driven, written once for the SchedulerActor and for the core's
test harness (which plays the executors): ``pump`` (one turn: fire what is due, hand
ready runs over while there is room) and ``step_through`` (virtual time).

Each caller applies the core's effects after a turn its own way (the actor: store,
cancels, events, waiters; the harness: a memory store and a scripted coordinator).

``advance_time(ms)`` must not jump: a periodic task due every 15 minutes runs four times
in an hour, each run settled before the next due time is reached (its next period, a
retry's backoff, a chain's next step all count from when it ended). So the driver
stops at each due time; the caller runs everything due there, then asks for the next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from .effects import Dispatch
from .millis import MAX_EPOCH_MS
from .timing import WALL_CLOCK_RECHECK_S


class _Due(Protocol):
    def next_due_ms(self, lead_ms: int = 0) -> int | None: ...


class _Core(_Due, Protocol):
    turn_cut: bool

    def tick(self, lead_ms: int = 0) -> None: ...
    def ready_count(self) -> int: ...
    def take_ready(self, limit: int, heavy_limit: int = 0) -> list[Dispatch]: ...


def pump(
    core: _Core,
    room: Callable[[], tuple[int, int]],
    hand_over: Callable[[list[Dispatch]], bool],
    lead_ms: int = 0,
) -> bool:
    """One turn: move due timers to the ready queues (and, ``lead_ms`` ahead, timers due
    that soon), then while runs are ready take as many as ``room()`` says (light, heavy)
    and ``hand_over`` them; it returns False to stop for this turn (some had no room).
    True when the turn stopped at the core's ``turn_budget`` with work left: the caller
    comes back for it once it has served what waits."""
    core.tick(lead_ms)
    while core.ready_count():
        light, heavy = room()
        batch = core.take_ready(light, heavy)
        if not batch or not hand_over(batch):
            break
    return core.turn_cut


def sleep_s(due_ms: int | None, now_ms: int) -> float | None:
    """How long the real-time loop sleeps after a turn: towards the next due time (None:
    until woken), but never past ``WALL_CLOCK_RECHECK_S`` before it reads the wall clock
    again. Due times are wall-clock instants; the sleep is on the monotonic clock, which
    stands still while the machine is suspended and ignores the wall clock's steps."""
    if due_ms is None:
        return None
    return min(max(0.0, (due_ms - now_ms) / 1000), WALL_CLOCK_RECHECK_S)


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
    if target > MAX_EPOCH_MS:
        raise ValueError(f"advance_time: {ms} ms would move the clock past the year 9999")
    yield clock.now_ms()
    while (due := core.next_due_ms()) is not None and due <= target:
        clock.set(due)
        yield due
    clock.set(target)
    yield target
