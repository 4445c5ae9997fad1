"""What the scheduler knows of executors whose event loop a worker blocks (see loop_watch.py).

A blocked executor gets no new runs; the runs queued there that had not begun were
withdrawn and went elsewhere (fenced by batch number, so they never begin there too).
This keeps who blocks which loop, since when, and how often each worker class did, and
says it in words for the log, the event bus and ``kmpray status``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

ADVICE = "write `def do_work` to run in a thread, await `asyncio.to_thread(...)`, or set `blocking = True` on the class"


@dataclass(slots=True)
class Blocked:
    """One executor (light or heavy) whose loop a worker blocks right now."""

    worker: str | None
    task: str | None
    since: float = field(default_factory=time.monotonic)


class BlockedLoops:
    def __init__(self) -> None:
        self.light: dict[int, Blocked] = {}
        self.heavy: dict[int, Blocked] = {}
        self.counts: dict[str, int] = {}  # worker class -> loops it blocked, over this scheduler's life

    def block(self, kind: str, index: int, worker: str | None, task: str | None, lag_s: float) -> None:
        table = self.light if kind == "light" else self.heavy
        table[index] = Blocked(worker, task, time.monotonic() - lag_s)

    def unblock(self, kind: str, index: int, worker: str | None, blocked_s: float, threaded: bool) -> str:
        """Forget the block; returns the notice to log and publish."""
        (self.light if kind == "light" else self.heavy).pop(index, None)
        name = worker or "a worker"
        if worker is not None:
            self.counts[worker] = self.counts.get(worker, 0) + 1
        notice = f"{name} blocked its executor's event loop for {blocked_s:.1f} s; {ADVICE}"
        if threaded:
            notice += f" (from now on that executor runs {name}'s do_work in a thread)"
        return notice

    def reason(self, serving: list[int], ready: int) -> str | None:
        """Why ready light runs wait, when it is because every light executor is blocked."""
        if not ready or not serving or any(i not in self.light for i in serving):
            return None
        now = time.monotonic()
        who = ", ".join(
            f"{b.worker or '?'} (task {b.task or '?'}, {now - b.since:.1f} s)" for b in self.light.values()
        )
        return f"{ready} runs wait: every light executor's event loop is blocked by a worker: {who}"

    def describe(self) -> list[dict[str, object]]:
        now = time.monotonic()
        return [
            {"kind": kind, "executor": i, "worker": b.worker, "task": b.task, "for_s": round(now - b.since, 1)}
            for kind, table in (("light", self.light), ("heavy", self.heavy))
            for i, b in sorted(table.items())
        ]
