"""One load client: an open loop that sends its share of the schedule at the intended
times, never waiting on earlier answers (at most ``max_in_flight`` unanswered), through
kmpray's async client. ``OpenLoop`` is plain asyncio (tested without Ray);
``LoadClient`` is the Ray actor that runs one, spread over the cluster's nodes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .load_plan import EXACT_LEAD_MS

# send(kind, index, intended_ms) -> (error or "", due_ms): "" when the engine accepted it
Send = Callable[[str, int, float], Awaitable[tuple[str, float]]]


class OpenLoop:
    """Sends operations at their intended wall-clock times; records per operation when it
    was intended, sent and answered, and whether its send waited on the in-flight cap."""

    def __init__(self, send: Send, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight: must be >= 1, got {max_in_flight}")
        self.send = send
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self.capped = 0

    async def run(
        self,
        indexes: list[int],
        kinds: list[str],
        intended_ms: list[float],
        deadline_ms: float,
        drain_s: float,
    ) -> dict[str, list[Any]]:
        n = len(indexes)
        rows: dict[str, list[Any]] = {
            "index": list(indexes),
            "kind": list(kinds),
            "intended_ms": list(intended_ms),
            "sent_ms": [math.nan] * n,
            "acked_ms": [math.nan] * n,
            "started_ms": [math.nan] * n,
            "due_ms": [math.nan] * n,
            "capped": [False] * n,
            "error": [""] * n,
        }
        room = asyncio.Semaphore(self.max_in_flight)
        pending: set[asyncio.Task[None]] = set()

        async def one(j: int) -> None:
            try:
                error, due = await self.send(kinds[j], indexes[j], intended_ms[j])
            except Exception as exc:  # an answer that is an exception still counts as answered
                error, due = type(exc).__name__, math.nan
            rows["error"][j], rows["due_ms"][j] = error, due
            if error:
                self.errors += 1
            else:
                rows["acked_ms"][j] = time.time() * 1000
                self.acked += 1
            self.in_flight -= 1
            room.release()

        for j in range(n):
            wait_s = (intended_ms[j] - time.time() * 1000) / 1000
            if wait_s > 0.0005:
                await asyncio.sleep(wait_s)  # pacing the open loop to its schedule
            if room.locked():
                rows["capped"][j] = True
                self.capped += 1
                await room.acquire()
            else:
                await room.acquire()
            now = time.time() * 1000
            if now >= deadline_ms:
                room.release()
                for k in range(j, n):
                    rows["error"][k] = "unsent"  # the deadline passed first
                break
            rows["sent_ms"][j] = now
            self.sent += 1
            self.in_flight += 1
            task = asyncio.ensure_future(one(j))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(list(pending), timeout=drain_s)
        for j in range(n):
            if (
                not rows["error"][j]
                and math.isnan(rows["acked_ms"][j])
                and not math.isnan(rows["sent_ms"][j])
            ):
                rows["error"][j] = "no answer"
        return rows

    def progress(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "acked": self.acked,
            "errors": self.errors,
            "in_flight": self.in_flight,
            "capped": self.capped,
        }


def task_id(run: str, index: int) -> str:
    """The id whose worker start is measured for operation ``index`` (a chain: its first step)."""
    return f"ld{run}-{index}"


def engine_send(sched: Any, run: str) -> Send:
    """Operations of each mix kind against a connected kmpray client (its async calls)."""
    from kmpray import Constraints, ScheduleResult, TaskRequest, TaskTrigger

    heavy = Constraints(is_heavy_task=True)
    gated = Constraints(requires_storage_not_low=True, requires_battery_not_low=True)

    async def send(kind: str, index: int, intended: float) -> tuple[str, float]:
        tid = task_id(run, index)
        due = intended
        if kind == "chain":
            chain = sched.begin_with(TaskRequest("BenchStamp", id=tid)).then(
                TaskRequest("BenchStamp", id=f"{tid}-2")
            )
            result = await chain.with_id(f"{tid}-c").enqueue_async()
        elif kind == "exact":
            due = intended + EXACT_LEAD_MS
            result = await sched.enqueue_async(tid, TaskTrigger.Exact(int(due)), "BenchStamp")
        elif kind == "periodic":
            result = await sched.enqueue_async(tid, TaskTrigger.Periodic(15 * 60_000), "BenchStamp")
        else:
            constraints = heavy if kind == "heavy" else gated if kind == "gated" else None
            result = await sched.enqueue_async(
                tid, TaskTrigger.OneTime(), "BenchStamp", constraints=constraints
            )
        return ("" if result is ScheduleResult.SUCCESS else result.value), due

    return send


def _actor_class() -> Any:
    import ray

    @ray.remote(num_cpus=0, max_concurrency=4)
    class LoadClient:
        """A generator process: connects to the engine and runs one OpenLoop."""

        def __init__(self, namespace: str, state_dir: str, run: str, max_in_flight: int) -> None:
            import kmpray

            self.sched = kmpray.connect(namespace=namespace, state_dir=state_dir)
            self.loop = OpenLoop(engine_send(self.sched, run), max_in_flight)

        async def run(self, *args: Any) -> dict[str, list[Any]]:  # OpenLoop.run's arguments
            return await self.loop.run(*args)

        async def progress(self) -> dict[str, int]:
            return self.loop.progress()

        def node(self) -> str:
            return str(ray.get_runtime_context().get_node_id())

    return LoadClient


def start_clients(n: int, namespace: str, state_dir: str, run: str, max_in_flight: int) -> list[Any]:
    """``n`` load clients spread over the cluster's nodes (SPREAD), each ready to run."""
    import ray

    cls = _actor_class().options(scheduling_strategy="SPREAD")
    clients = [cls.remote(namespace, state_dir, run, max(1, max_in_flight // n)) for _ in range(n)]
    ray.get([c.progress.remote() for c in clients], timeout=120)  # connected
    return clients
