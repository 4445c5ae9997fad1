"""The engine a load run measures: warmed before anything is measured, its workers' start
stamps read from its event stream, and waited on between trials."""

from __future__ import annotations

import time
import uuid
from typing import Any


class Starts:
    """Worker start stamps of this run's tasks, read from the engine's event stream."""

    def __init__(self, sched: Any, run: str) -> None:
        self.prefix = f"ld{run}-"
        self.at: dict[int, float] = {}
        self._sub = sched.events.subscribe(callback=self._on)

    def _on(self, event: Any) -> None:
        tid = event.task_id
        if event.kind != "completion" or not tid.startswith(self.prefix) or not event.output_data:
            return
        rest = tid[len(self.prefix) :]
        if rest.isdigit():
            self.at.setdefault(int(rest), float(event.output_data["t"]))

    def close(self) -> None:
        self._sub.close()


DEPLOYMENT = "kmpray"  # the namespace `kmpray start` and kmpray.connect() use by default


def warm_up(sched: Any, mix: dict[str, float]) -> None:
    """One of each kind in the mix, waited for, before anything is measured: a class's first run on
    each executor, a heavy worker's start and the chain coordinators' (an engine's first chain
    starts them) cost 100 ms to seconds once, which would land in the first second's latencies."""
    from kmpray import Constraints, TaskRequest

    heavy, chain = "heavy" in mix, "chain" in mix
    n = 4 * max(1, sched.status()["executors"])
    ids = [f"warm-{uuid.uuid4().hex[:6]}-{i}" for i in range(n + heavy + chain)]
    reqs = [TaskRequest("BenchStamp", id=i) for i in ids[:n]]
    if heavy:
        reqs.append(TaskRequest("BenchStamp", id=ids[n], constraints=Constraints(is_heavy_task=True)))
    sched.enqueue_many(reqs)
    if chain:
        sched.begin_with(TaskRequest("BenchStamp")).then(TaskRequest("BenchStamp")).with_id(ids[-1]).enqueue()
    for i in ids:
        sched.wait(i, timeout_s=120)


def settle(sched: Any, timeout_s: float = 60) -> None:
    """Between trials: until the engine's queue is empty (bounded)."""
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        s = sched.status()
        if s["ready"] + s["inflight"] == 0:
            return
        time.sleep(0.2)  # polling the engine's status between trials, bounded
