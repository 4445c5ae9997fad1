"""What the dashboard keeps between requests, fed by one background thread: a per-second
timeline read from ``status()`` (the throughput and wait plots) and the latest events,
read from the broker by cursor (the live stream and a task's event list)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

log = logging.getLogger("kmpray.dashboard")

#: Events kept for the page (the stream and a task's detail): older ones stay in the
#: engine's event log, reachable with ``kmpray events --since``.
KEEP_EVENTS = 10_000
#: Timeline points kept: five minutes at one a second.
KEEP_POINTS = 300


class Feed:
    def __init__(self, scheduler: Any, poll_s: float = 1.0) -> None:
        self.scheduler = scheduler
        self.poll_s = poll_s
        self.events: deque[tuple[int, dict[str, Any]]] = deque(maxlen=KEEP_EVENTS)  # (cursor, event)
        self.timeline: deque[dict[str, Any]] = deque(maxlen=KEEP_POINTS)
        self.latest: dict[str, Any] = {}  # the last status() read
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last: tuple[float, int] | None = None  # (when, runs finished) at the last point

    def start(self) -> None:
        for target in (self._sample_loop, self._event_loop):
            t = threading.Thread(target=target, name=f"kmpray-dashboard-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)

    # ------------------------------------------------------------------ samples
    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # the engine restarting: the next second asks again
                log.debug("status() failed: %s", exc)
            self._stop.wait(self.poll_s)

    def sample(self) -> dict[str, Any]:
        """One timeline point: runs finished per second since the last point, the latest
        enqueue -> start and enqueue -> hand-over waits, queue depth and runs in flight."""
        status = self.scheduler.status()
        runs = status.get("runs", {})
        finished = sum(runs.get("finished", {}).values())
        now = time.time()
        rate = None
        if self._last is not None and now > self._last[0]:
            rate = round((finished - self._last[1]) / (now - self._last[0]), 1)
        self._last = (now, finished)
        waits, starts = runs.get("wait_ms", {}), runs.get("start_ms", {})
        point = {
            "t": round(now, 3),
            "finished_per_s": rate,
            "finished": finished,
            "wait_p50_ms": waits.get("p50"),
            "wait_p99_ms": waits.get("p99"),
            "start_p50_ms": starts.get("p50"),
            "start_p99_ms": starts.get("p99"),
            "ready": status.get("ready"),
            "inflight": status.get("inflight"),
        }
        with self._lock:
            self.latest = status
            self.timeline.append(point)
        return point

    # ------------------------------------------------------------------- events
    def _event_loop(self) -> None:
        sub = None
        while not self._stop.is_set():
            try:
                if sub is None:
                    last = self.scheduler.events.last_cursor()
                    since = self.events[-1][0] if self.events else max(0, last - KEEP_EVENTS)
                    sub = self.scheduler.events.subscribe(since=min(since, last))
                event = sub.get(timeout_s=0.5)
                while event is not None:
                    with self._lock:
                        self.events.append((sub.cursor, event.model_dump(mode="json")))
                    event = sub.get(timeout_s=0)
            except Exception as exc:  # the broker restarting: subscribe again from our cursor
                log.debug("event read failed: %s", exc)
                sub = None
                self._stop.wait(0.5)
        if sub is not None:
            sub.close()

    def events_after(self, cursor: int, limit: int = 500) -> list[tuple[int, dict[str, Any]]]:
        with self._lock:
            return [(c, e) for c, e in self.events if c > cursor][:limit]

    def events_of(self, task_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [{"cursor": c, **e} for c, e in self.events if e.get("task_id") == task_id]

    def points(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.timeline)
