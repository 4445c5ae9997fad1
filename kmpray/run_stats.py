"""Live run figures for status(), the dashboard and the metrics: tasks enqueued and runs
handed over and finished since the scheduler started (by worker class and outcome), how
long recent runs waited from enqueue to hand-over, and how late timers fired.

Only what the scheduler itself sees: a short run's start is told to it by its result
(one message per run, not two), so the wait measured here ends when the run is handed to
an executor, which begins it at once unless its run slots are full.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

#: Recent hand-over waits kept (per scheduler): a few seconds of a busy engine.
KEEP_WAITS = 4096


class RunStats:
    def __init__(self) -> None:
        self.dispatched = 0
        self.finished: Counter[str] = Counter()  # "succeeded" / "failed" / "retried" runs
        self.enqueued_by: Counter[str] = Counter()  # worker class -> tasks accepted
        self.finished_by: Counter[tuple[str, str]] = Counter()  # (worker class, outcome) -> runs
        self._waits: deque[tuple[int, int]] = deque(maxlen=KEEP_WAITS)  # (at ms, waited ms)
        # Samples not yet taken by the metrics publisher (bounded: dropped when nobody takes them).
        self.new_waits: deque[int] = deque(maxlen=KEEP_WAITS)
        self.new_lateness: deque[int] = deque(maxlen=KEEP_WAITS)

    def enqueued(self, worker: str) -> None:
        self.enqueued_by[worker] += 1

    def timer_fired(self, now: int, due: int | None) -> None:
        """A timer's task became ready: how late (a timer popped ahead, within the lead,
        begins on time on its executor)."""
        if due is not None:
            self.new_lateness.append(max(0, now - due))

    def handed_over(self, now: int, enqueued_at: int | None) -> None:
        """A run left for an executor; ``enqueued_at``: when its task was enqueued, for a
        first run that was due at once (delayed, timed, retried and chained runs waited on
        purpose, so their wait says nothing about the engine)."""
        self.dispatched += 1
        if enqueued_at is not None:
            waited = max(0, now - enqueued_at)
            self._waits.append((now, waited))
            self.new_waits.append(waited)

    def ended(self, worker: str, outcome: str) -> None:
        self.finished[outcome] += 1
        self.finished_by[(worker, outcome)] += 1

    def describe(self, now: int, span_ms: int = 1000) -> dict[str, Any]:
        """Totals, and the hand-over waits of the last ``span_ms`` (p50, p99, max, n)."""
        recent = sorted(w for at, w in self._waits if at > now - span_ms)
        waits: dict[str, Any] = {"n": len(recent)}
        if recent:
            waits |= {"p50": _pick(recent, 0.5), "p99": _pick(recent, 0.99), "max": recent[-1]}
        return {"dispatched": self.dispatched, "finished": dict(self.finished), "wait_ms": waits}


def _pick(ordered: list[int], q: float) -> int:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
