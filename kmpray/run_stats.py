"""Live run figures for status(), the dashboard and the metrics: tasks enqueued and runs
handed over and finished since the scheduler started (by worker class and outcome), how
long recent runs waited from enqueue to hand-over, and how late timers fired.

Only what the scheduler itself sees: a short run's start is told to it by its result
(one message per run, not two), so the wait measured here ends when the run is handed to
an executor, which begins it at once unless its run slots are full.
"""

from __future__ import annotations

import itertools
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
        self.new_starts: deque[float] = deque(maxlen=KEEP_WAITS)
        self._starts: deque[tuple[int, float]] = deque(maxlen=KEEP_WAITS)  # (heard at ms, waited ms)

    def enqueued(self, worker: str, n: int = 1) -> None:
        self.enqueued_by[worker] += n

    def timer_fired(self, now: int, due: int | None, n: int = 1) -> None:
        """A timer's task became ready (``n`` tasks due together): how late (a timer popped
        ahead, within the lead, begins on time on its executor)."""
        if due is not None:
            self.new_lateness.extend(itertools.repeat(max(0, now - due), min(n, KEEP_WAITS)))

    def handed_over(self, now: int, enqueued_at: int | None) -> None:
        """A run left for an executor; ``enqueued_at``: when its task was enqueued, for a
        first run that was due at once (delayed, timed, retried and chained runs waited on
        purpose, so their wait says nothing about the engine)."""
        self.dispatched += 1
        if enqueued_at is not None:
            waited = max(0, now - enqueued_at)
            self._waits.append((now, waited))
            self.new_waits.append(waited)

    def started_after(self, waits: tuple[float, ...] | list[float], now: int) -> None:
        """Enqueue -> start of runs that began, as their executors timed them (wall clock,
        real-time engines only), heard at ``now`` with the executors' pings (once a second)."""
        for w in waits:
            self._starts.append((now, w))
            self.new_starts.append(w)

    def ended(self, worker: str, outcome: str) -> None:
        self.finished[outcome] += 1
        self.finished_by[(worker, outcome)] += 1

    def describe(self, now: int, span_ms: int = 1000) -> dict[str, Any]:
        """Totals; the hand-over waits of the last ``span_ms`` and the start waits heard
        in the last two seconds (they come once a second), each as p50, p99, max, n."""
        return {
            "dispatched": self.dispatched, "finished": dict(self.finished),
            "wait_ms": _summary([w for at, w in self._waits if at > now - span_ms]),
            "start_ms": _summary([w for at, w in self._starts if at > now - 2 * span_ms]),
        }


def _summary(samples: list[Any]) -> dict[str, Any]:
    ordered = sorted(samples)
    out: dict[str, Any] = {"n": len(ordered)}
    if ordered:
        out |= {"p50": _pick(ordered, 0.5), "p99": _pick(ordered, 0.99), "max": ordered[-1]}
    return out


def _pick(ordered: list[Any], q: float) -> Any:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
