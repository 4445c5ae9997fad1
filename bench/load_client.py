"""One load client: an open loop that sends its share of the schedule at the intended
times, never waiting on earlier answers (at most ``max_in_flight`` unanswered), through
kmpray's async client. ``OpenLoop`` is plain asyncio (tested without Ray);
``LoadClient`` is the Ray actor that runs one, spread over the cluster's nodes.
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kmpray.clock import sleep_until

from .load_plan import EXACT_LEAD_MS

# send(kinds, indexes, intended_ms) -> per operation (error or "", due_ms): "" when the
# engine accepted it. One call: one operation, or a batch (see OpenLoop's window_ms).
Send = Callable[[list[str], list[int], list[float]], Awaitable[list[tuple[str, float]]]]
BATCHABLE = frozenset({"one-time", "heavy", "gated", "exact", "periodic"})  # one enqueue_many call


class OpenLoop:
    """Sends operations at their intended wall-clock times; records per operation when it
    was intended, sent and answered, and whether its send waited on the in-flight cap.

    ``window_ms`` > 0 coalesces: the operations due within that window from the first one
    waiting go out as one ``enqueue_many`` call when the last of them is due (what a
    producer at thousands per second does); their corrected latency includes the wait. Chains are
    always sent one per call. ``max_in_flight`` counts calls."""

    def __init__(
        self, send: Send, max_in_flight: int, window_ms: float = 0.0, max_batch: int = 1000,
        freeze_gc: bool = False,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight: must be >= 1, got {max_in_flight}")
        if window_ms < 0 or max_batch < 1:
            raise ValueError(f"window_ms must be >= 0 and max_batch >= 1, got {window_ms}, {max_batch}")
        self.send = send
        self.max_in_flight = max_in_flight
        self.window_ms = window_ms
        self.max_batch = max_batch
        self.freeze_gc = freeze_gc  # a generator process of its own (LoadClient): see run()
        self.in_flight = 0
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self.capped = 0
        self.stop_at = math.inf  # wall-clock ms: nothing due at or after it is sent (stop())

    def stop(self, at_ms: float) -> None:
        """The run was interrupted (Ctrl-C in ``kmpray bench load``): sending ends as at the
        deadline, at ``at_ms``; what is in flight is still answered and counted."""
        self.stop_at = min(self.stop_at, at_ms)

    def _batches(self, kinds: list[str], intended_ms: list[float]) -> list[list[list[int]]]:
        """The calls to make, as streams of batches of row numbers, each stream in schedule
        order: without a window one stream of single operations; with one, batchable
        operations coalesced per window in one stream and chains one per call in another
        (so a chain between them does not split a window)."""
        if self.window_ms <= 0:
            return [[[j] for j in range(len(kinds))]]
        coalesced: list[list[int]] = []
        singles: list[list[int]] = []
        for j, kind in enumerate(kinds):
            if kind not in BATCHABLE:
                singles.append([j])
            elif (
                coalesced
                and len(coalesced[-1]) < self.max_batch
                and intended_ms[j] <= intended_ms[coalesced[-1][0]] + self.window_ms
            ):
                coalesced[-1].append(j)
            else:
                coalesced.append([j])
        return [coalesced, singles]

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
        if self.freeze_gc:
            # The schedule's rows (a list per column, an item per operation) live through
            # the run: kept out of the collector's scans, or each full collection of this
            # process walks them all (70-160 ms at 100,000 operations per client), a stall
            # of the sends that the corrected latency then charges to the engine. What the
            # run allocates is freed by reference counting; cycles wait for the end.
            gc.collect()
            gc.freeze()
            gc.disable()

        async def call(batch: list[int]) -> None:
            try:
                answers = await self.send(
                    [kinds[j] for j in batch], [indexes[j] for j in batch], [intended_ms[j] for j in batch]
                )
                if len(answers) != len(batch):
                    raise ValueError(f"{len(answers)} answers to {len(batch)} operations")
            except Exception as exc:  # an answer that is an exception still counts as answered
                answers = [(type(exc).__name__, math.nan)] * len(batch)
            now = time.time() * 1000
            for j, (error, due) in zip(batch, answers, strict=True):
                rows["error"][j], rows["due_ms"][j] = error, due
                if error:
                    self.errors += 1
                else:
                    rows["acked_ms"][j] = now
                    self.acked += 1
            self.in_flight -= len(batch)
            room.release()

        async def stream(batches: list[list[int]]) -> None:
            for b, batch in enumerate(batches):
                # pacing the open loop to its schedule (a batch leaves when its last one is due)
                # and never before it (a send ahead of its intended time would make its corrected
                # latency smaller than its uncorrected one)
                # (kmpray.clock.sleep_until: never a wait under 1 ms. uvloop, which Ray runs the
                # LoadClient actors on when it is installed, rounds a shorter timer down to 0,
                # and until session 45 this pacing spun there until each send was due: 167 µs
                # of the generator's CPU per operation against 15 on asyncio's loop)
                await sleep_until(intended_ms[batch[-1]] / 1000)
                capped = room.locked()
                await room.acquire()
                now = time.time() * 1000
                # Sending stops at the deadline: nothing due after it goes, nor anything the
                # in-flight cap held past it; an operation due before it that is merely late
                # (this loop lagged) still goes, its lateness in the corrected latency.
                end = min(deadline_ms, self.stop_at)
                if intended_ms[batch[-1]] >= end or (capped and now >= end):
                    room.release()
                    for rest in batches[b:]:
                        for j in rest:
                            rows["error"][j] = "unsent"  # the deadline passed first
                    return
                for j in batch:
                    rows["sent_ms"][j], rows["capped"][j] = now, capped
                self.capped += len(batch) if capped else 0
                self.sent += len(batch)
                self.in_flight += len(batch)
                task = asyncio.ensure_future(call(batch))
                pending.add(task)
                task.add_done_callback(pending.discard)

        try:
            await asyncio.gather(*(stream(s) for s in self._batches(kinds, intended_ms)))
            if pending:
                await asyncio.wait(list(pending), timeout=drain_s)
        finally:
            if self.freeze_gc:
                gc.enable()
                gc.unfreeze()
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
    """Operations of each mix kind against a connected kmpray client (its async calls):
    a chain with ``enqueue_chain``, everything else with ``enqueue()`` (one) or
    ``enqueue_many`` (a batch window's worth)."""
    from kmpray import Constraints, ScheduleResult, TaskRequest, TaskTrigger

    heavy = Constraints(is_heavy_task=True)
    gated = Constraints(requires_storage_not_low=True, requires_battery_not_low=True)
    periodic = TaskTrigger.Periodic(15 * 60_000)
    one_time = TaskTrigger.OneTime()

    async def send(kinds: list[str], indexes: list[int], intended: list[float]) -> list[tuple[str, float]]:
        if kinds[0] == "chain":
            tid = task_id(run, indexes[0])
            chain = sched.begin_with(TaskRequest("BenchStamp", id=tid)).then(
                TaskRequest("BenchStamp", id=f"{tid}-2")
            )
            result = await chain.with_id(f"{tid}-c").enqueue_async()
            return [("" if result is ScheduleResult.SUCCESS else result.value, intended[0])]
        # due_times' rule, per operation without numpy (most sends are one operation: numpy's
        # array set-up was ~5 % of a load client's CPU at 12,000 single calls/s)
        items = []
        dues = [i + EXACT_LEAD_MS if k == "exact" else i for i, k in zip(intended, kinds, strict=True)]
        for kind, index, due in zip(kinds, indexes, dues, strict=True):
            trigger = (
                TaskTrigger.Exact(int(due))
                if kind == "exact"
                else periodic
                if kind == "periodic"
                else one_time
            )
            constraints = heavy if kind == "heavy" else gated if kind == "gated" else None
            items.append(
                {
                    "id": task_id(run, index),
                    "trigger": trigger,
                    "worker_class_name": "BenchStamp",
                    "constraints": constraints,
                }
            )
        if len(items) == 1:  # a single call, as a user makes it (concurrent ones share messages)
            one = items[0]
            results = [await sched.enqueue_async(one["id"], one["trigger"], "BenchStamp",
                                                 constraints=one["constraints"])]
        else:
            results = await sched.enqueue_many_async(items)
        return [
            ("" if r is ScheduleResult.SUCCESS else r.value, due)
            for r, due in zip(results, dues, strict=True)
        ]

    return send


def _actor_class() -> Any:
    import ray

    @ray.remote(num_cpus=0, max_concurrency=4)
    class LoadClient:
        """A generator process: connects to the engine and runs one OpenLoop."""

        def __init__(
            self, namespace: str, state_dir: str | None, run: str, max_in_flight: int, window_ms: float
        ) -> None:
            import kmpray

            self.sched = kmpray.connect(namespace=namespace, state_dir=state_dir)
            self.loop = OpenLoop(engine_send(self.sched, run), max_in_flight, window_ms, freeze_gc=True)

        async def run(self, *args: Any) -> dict[str, list[Any]]:  # OpenLoop.run's arguments
            return await self.loop.run(*args)

        async def progress(self) -> dict[str, int]:
            return self.loop.progress()

        async def stop(self, at_ms: float) -> None:
            self.loop.stop(at_ms)

        def node(self) -> str:
            return str(ray.get_runtime_context().get_node_id())

    return LoadClient


def start_clients(
    n: int, namespace: str, state_dir: str | None, run: str, max_in_flight: int, window_ms: float = 0.0
) -> list[Any]:
    """``n`` load clients spread over the cluster's nodes (SPREAD), each ready to run."""
    import ray

    cls = _actor_class().options(scheduling_strategy="SPREAD")
    clients = [cls.remote(namespace, state_dir, run, max(1, max_in_flight // n), window_ms) for _ in range(n)]
    ray.get([c.progress.remote() for c in clients], timeout=120)  # connected
    return clients
