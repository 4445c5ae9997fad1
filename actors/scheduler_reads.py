"""What the SchedulerActor answers without changing anything: status, task and chain
info (with why each waits), ``explain``, listings, quarantined rows, rejections. A mixin
of SchedulerActor (scheduler.py): the attributes below are the actor's."""

from __future__ import annotations

import asyncio
import pickle
from collections import Counter, deque
from collections.abc import Mapping
from typing import Any

import ray

import kmpray
from kmpray.clock import ManualClock, SystemClock
from kmpray.engine import SchedulerCore
from kmpray.enums import TaskState
from kmpray.lane import LANE_METHODS, LANE_READS, REPORT
from kmpray.protocol import chain_answer
from kmpray.records import TaskRecord
from kmpray.store import SqliteTaskStore

from .blocked_loops import BlockedLoops
from .executor_pool import ExecutorPool
from .heavy_pool import HeavyPool
from .lane import LaneServer
from .stealing import Stealer
from .waiters import Waiters

#: Tasks of ``list_tasks`` built and pickled between two turns of the loop (~20 µs each).
LIST_CHUNK = 1_000


class SchedulerReads:
    namespace: str
    state_dir: str
    virtual_time: bool
    platform: str
    clock: ManualClock | SystemClock
    core: SchedulerCore
    store: SqliteTaskStore
    pool: ExecutorPool
    heavy: HeavyPool
    stealer: Stealer
    rejections: deque[tuple[float, str, str, str]]  # (when, id, result, reason)
    restored_in_s: float
    serving_in_s: float | None
    _blobs: dict[str, tuple[int, bytes]]
    _device_overrides: dict[str, dict[str, Any]] | None
    _blocked: BlockedLoops
    waiters: Waiters
    messages: Counter[str]
    _lane: LaneServer | None
    _ready: asyncio.Future[None]
    engine_config: dict[str, Any]

    def shard_count(self) -> int:
        """The engine's scheduler_shards (a client attaching learns it here)."""
        return self.config.scheduler_shards

    async def ready(self) -> dict[str, Any]:
        """What a connecting client learns: describe(), and the config and kmpray version the
        engine runs with (it tells the caller which of the fields it asked for differ)."""
        await self._ready
        return {**self.describe(), "config": self.engine_config, "engine_version": kmpray.__version__}

    def describe(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "state_dir": self.state_dir,
            "scheduler_shards": self.config.scheduler_shards,
            "virtual_time": self.virtual_time,
            "platform": self.platform,
            "now_ms": self.clock.now_ms(),
            "node": ray.get_runtime_context().get_node_id(),
            "executors": len(self.pool.serving()),
            "executor_nodes": [s.node for s in self.pool.serving()],
            # Suspect runs (a process died under their last run), each alone: probation
            # executors started, and the runs alone on an executor now.
            "probation_executors": len(self.pool.probation),
            "running_alone": sum(1 for k in self.pool.alone.values() if k is not None),
            "inflight": len(self.pool.where) + len(self.heavy.where),
            "stolen": self.stealer.stolen,  # runs taken back from busy executors (actors/stealing.py)
            "inflight_by_node": self.pool.inflight_by_node(),
            "heavy_workers": [i for i, slot in enumerate(self.heavy.slots) if slot.handle is not None],
            "heavy": self.heavy.status(),
            "gated": self.core.gated_count(),
            "nodes": {n: s.model_dump(mode="json") for n, s in self.core.devices.items()},
            "ready": self.core.ready_count(),
            "pending": self.core.pending,
            "counts": self.core.counts(),
            "finished_in_store_only": len(self.core.tasks.cold),  # kmpray/task_table.py
            "restored_in_s": self.restored_in_s,
            "serving_in_s": self.serving_in_s,
            "workers": sorted(self._blobs),
            "waiting_for_registration": self.core.parked(),
            "quarantined": len(self.store.quarantined()),
            "blocked_executors": self._blocked.describe(),
            "executor_lag_ms": [s.lag_ms for s in self.pool.serving()],
            "loop_blocks": dict(self._blocked.counts),
            "waiting_for": self._blocked.reason(self._serving(), self.core.ready_count()),
            # since this scheduler started: enqueue calls and executor reports received,
            # submits and event batches sent, store commits (a commit serves a whole turn)
            "messages": dict(self.messages),
            # clients' calls and executors' reports that came over the local lane
            # (kmpray/lane.py), batches of runs sent down it, connections, hellos refused
            "lane": None if self._lane is None else {
                "calls": sum(n for m, n in self._lane.calls.items() if m in LANE_METHODS),
                "reads": sum(n for m, n in self._lane.calls.items() if m in LANE_READS),
                "reports": self._lane.calls[REPORT],
                "submits": self.pool.lanes.sent, "heavy_submits": self.heavy.lanes.sent,
                "connections": self._lane.accepted, "refused": self._lane.refused},
            # runs handed over / finished since this scheduler started, and the last
            # second's enqueue -> hand-over waits (kmpray/run_stats.py)
            "runs": self.core.stats.describe(self.clock.now_ms()),
            # worker processes this scheduler ended on purpose, oldest first (actors/stops.py)
            "stopped_processes": sorted(self.pool.stops.describe() + self.heavy.stops.describe(),
                                        key=lambda entry: entry["at_ms"]),
        }

    def _serving(self) -> list[int]:
        return [s.index for s in self.pool.serving()]

    def worker_blob(self, name: str) -> tuple[int, bytes] | None:
        """The registry's fallback after it restarted (it asks here for what it lost)."""
        return self._blobs.get(name)

    def worker_blobs(self) -> dict[str, tuple[int, bytes]]:
        return dict(self._blobs)

    def device_overrides(self) -> dict[str, dict[str, Any]] | None:
        """A restarted oracle's: the device overrides it last sent (None: none reached this process)."""
        return self._device_overrides

    async def get_chain_info(self, chain_id: str) -> bytes | None:
        await self._ready
        return chain_answer(self.core.chain_info(chain_id))

    async def quarantined(self) -> list[dict[str, Any]]:
        """Stored rows that did not decode at restore (never decoded again; see kmpray/store.py)."""
        await self._ready
        return [q.as_dict() for q in self.store.quarantined()]

    async def drop_quarantined(self, key: str) -> int:
        await self._ready
        return self.store.drop_quarantined(key)

    def last_rejections(self, limit: int = 100) -> list[tuple[float, str, str, str]]:
        """The newest ``limit``, oldest first, each with its wall-clock time: the client
        merges the shards' lists by it (concatenated, shard 0's came first whatever their
        times, so ``rejections(limit=2)`` of two shards could miss the newest)."""
        return list(self.rejections)[-limit:]

    async def get_info(self, name: str) -> dict[str, Any] | None:
        await self._ready
        rec = self.core.latest(name)
        return self._info(rec) if rec is not None else None

    def _info(self, rec: Any, places: Mapping[str, int | None] | None = None) -> dict[str, Any]:
        """A task as users see it, as a dict (python mode: a result's bytes stay bytes; JSON
        mode made them str)."""
        return self._task_info(rec, places).model_dump()  # type: ignore[no-any-return]

    def _task_info(self, rec: Any, places: Mapping[str, int | None] | None = None) -> Any:
        """A task as users see it, with why it waits (what the pools add to the core's reason)."""
        info = self.core.info(rec, places)
        reason = info.waiting_for
        if reason is not None and reason.kind == "capacity" and self.core.is_queued(rec.key):
            why = (self.heavy.reason() if rec.constraints.is_heavy_task
                   else self._blocked.reason(self._serving(), self.core.ready_count()))
            if why is not None:
                info = info.model_copy(update={"waiting_for": reason.model_copy(
                    update={"message": why, "details": {**reason.details, "why": why}})})
        return info

    async def explain(self, name: str) -> str | None:
        """``kmpray why``: state, why it waits, recent decisions."""
        await self._ready
        rec = self.core.latest(name)
        if rec is None:
            return None
        text = self.core.explain(name) or ""
        core_reason, shown = self.core.info(rec).waiting_for, self._info(rec).get("waiting_for")
        if core_reason is not None and shown is not None and shown["message"] != core_reason.message:
            text = text.replace(core_reason.message, shown["message"], 1)
        return text

    async def newest_tasks(self, state: str | None, worker: str | None, limit: int) -> dict[str, Any]:
        """The dashboard's table: how many tasks match, every worker class with tasks, and
        the ``limit`` most recently updated that match, newest first. Read off the table's
        indexes (records.TaskTable), and only those shown made into TaskInfo, with their
        places in line (``places_of``): it refreshes every second, and a pass over the rows
        and the ready queue took ~1 s of the scheduler's loop per refresh at a million tasks."""
        await self._ready
        total, newest = self.core.tasks.newest(TaskState(state) if state else None, worker, limit)
        places = self.core.places_of(newest) if newest else {}
        return {"total": total, "workers": self.core.tasks.workers(),
                "tasks": [self._info(r, places) for r in newest]}

    async def wait_many(
        self, names: list[str], timeout_s: float, runs_before: list[int | None]
    ) -> list[bytes]:
        """``wait`` for many tasks in one call (``wait([...])`` made two calls per id, 4 ms
        each: 80 s for 20,000 tasks already finished): until all are finished or the
        timeout. Per name, in order: its TaskInfo if finished (a recurring task: a run
        after ``runs_before`` ended), else its ``runs_before`` for the next round, or None
        when no task has the name (a chain's id, or unknown: the client asks about it on
        its own). Pickled 1,000 at a time, as ``list_tasks`` (scheduler_reads.py)."""
        await self._ready
        if len(names) != len(runs_before):
            raise ValueError("wait_many: one runs_before per name")
        looked = self._settled(names, runs_before)
        parked = [(name, self.waiters.add(name, seen)) for name, seen in zip(names, looked, strict=True)
                  if type(seen) is int] if timeout_s > 0 else []
        try:
            if parked:
                await asyncio.wait([fut for _, fut in parked], timeout=timeout_s)
        finally:
            for name, fut in parked:
                self.waiters.forget(name, fut)
        befores = [seen if type(seen) is int else was for seen, was in zip(looked, runs_before, strict=True)]
        return await self._pickled(self._settled(names, befores))

    def _settled(self, names: list[str], runs_before: list[int | None]) -> list[Any]:
        """Per name: its record if settled, else its runs_before (None: its run count now),
        or None if no task has that name."""
        out: list[Any] = []
        for name, before in zip(names, runs_before, strict=True):
            rec = self.core.latest(name)
            if rec is None:
                out.append(None)
                continue
            before = rec.run_count if before is None else before
            out.append(rec if self.core.waited_out(rec, before) else before)
        return out

    async def list_tasks(self, state: str | None = None) -> list[bytes]:
        """Every task (in ``state``) as TaskInfo, LIST_CHUNK of them pickled together per
        turn of this loop, which serves the other calls in between: built in one pass and
        sent as dicts (one out-of-band pickle per enum in Ray's msgpack), listing 200,000
        tasks held every enqueue and report up to 6.7 s, and the client validated each
        dict again. Each row is its task when it was read (client/facade.py unpickles)."""
        await self._ready
        wanted = TaskState(state) if state else None
        places = self.core.places_in_line()  # once, not a queue scan per task
        table = self.core.tasks
        cold, in_memory = table.listing(wanted)  # one instant: rows going cold meanwhile listed once
        recs: list[Any] = []  # finished rows kept in the store only first (they are the older)
        for i in range(0, len(cold), LIST_CHUNK):
            if i:
                await asyncio.sleep(0)
            recs += table.load(cold[i:i + LIST_CHUNK]).values()
        return await self._pickled(recs + in_memory, places)

    async def _pickled(self, items: list[Any], places: Mapping[str, int | None] | None = None) -> list[bytes]:
        """Each task record among ``items`` as its TaskInfo (anything else as it is),
        LIST_CHUNK pickled together per turn of this loop, which serves the other calls
        in between (client/outputs.py unpickles)."""
        chunks: list[bytes] = []
        for i in range(0, len(items), LIST_CHUNK):
            if i:
                await asyncio.sleep(0)
            chunk = items[i:i + LIST_CHUNK]
            infos = [self._task_info(x, places) if isinstance(x, TaskRecord) else x for x in chunk]
            chunks.append(pickle.dumps(infos, protocol=5))
        return chunks

    async def now_ms(self) -> int:
        return self.clock.now_ms()
