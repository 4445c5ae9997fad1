"""What the SchedulerActor hears from executors and heavy workers: batched reports
(results, progress, "began" notices) and the watch thread's notices that a worker blocks
an event loop. A mixin of SchedulerActor (scheduler.py): the attributes below are the
actor's."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kmpray.config import EngineConfig
from kmpray.engine import SchedulerCore
from kmpray.protocol import Began, Done, Fence, Progress, RunKey, done_from_wire
from kmpray.results import GIVEN_BACK, Failure, from_wire
from kmpray.validation import check_output

from .blocked_loops import BlockedLoops
from .executor_pool import ExecutorPool
from .heavy_pool import HeavyPool
from .scheduler_artifacts import ArtifactKeeper
from .stops import pid_in

log = logging.getLogger("kmpray.scheduler")


class SchedulerReports:
    config: EngineConfig
    core: SchedulerCore
    pool: ExecutorPool
    heavy: HeavyPool
    artifacts: ArtifactKeeper
    _blocked: BlockedLoops
    messages: Counter[str]
    _ready: asyncio.Future[None]

    if TYPE_CHECKING:  # the actor's (and SchedulerReads')
        def _pump(self) -> None: ...
        def _serving(self) -> list[int]: ...

    async def report(self, done: list[Any], progress: list[Any], began: Iterable[Any] = ()) -> None:
        """From an executor or heavy worker, through Ray or over the local lane
        (actors/report_lane.py): results, progress and "began" notices, batched, each as the
        list of its fields (``done_to_wire``; Ray pickles each record apart)."""
        await self._ready
        self.messages["reports_received"] += 1
        await self._hear([done_from_wire(d) for d in done], [Progress(*p) for p in progress],
                         [Began(*b) for b in began])

    report_from_lane = report  # the lane's REPORT (actors/scheduler.py)

    async def _hear(self, done: list[Done], progress: Iterable[Progress], began: Iterable[Began]) -> None:
        """A report's content, or the results in a submit's answer (actors/replies.py)."""
        for key, run_id in began:
            self.core.started(key, run_id)
        for key, run_id, pct, message in progress:
            self.core.progress(key, run_id, pct, message)
        refused: dict[tuple[str, int], Failure] = {}
        for d in done:
            if d.stored and (failed := await self.artifacts.accept(d)) is not None:
                refused[(d.key, d.run_id)] = failed
        for key, run_id, raw, _stored, followed in done:
            # The process that ran it (a successor it began runs in the same one).
            i = self.pool.where.get((key, run_id))
            ran_in = self.pool.slots[i].inflight.get((key, run_id)) if i is not None else None
            self.pool.reported((key, run_id))
            self.heavy.free((key, run_id))
            self.core.release_unplaced()
            if raw[0] == GIVEN_BACK:  # uncalled: its class could not be had there (worker_classes.py)
                self.core.note(key, f"run {run_id} given back by its executor: {raw[1]}")
                self.core.run_lost(key, run_id)  # re-queued; parked while this scheduler lacks the class too
                continue
            try:
                result = from_wire(raw)
                if result.kind == "success" and result.data is not None:
                    check_output(result.data, self.config)
            except Exception as exc:
                result = Failure(f"invalid worker result: {exc}")
            if (key, run_id) in refused:
                result = refused[(key, run_id)]
            self.core.complete(key, run_id, result)
            if followed is not None:
                self._followed(key, run_id, followed, ran_in)
        self._pump()

    def _followed(self, key: str, run_id: int, followed: tuple[str, int, int], ran_in: str | None) -> None:
        """The executor began the chain task handed with this run (it succeeded): that run
        counts as dispatched there, or, if the chain changed meanwhile, it is dropped."""
        then, then_run, i = followed
        if i >= len(self.pool.slots):
            return
        slot = self.pool.slots[i]
        if self.core.follow(key, run_id, then, then_run):
            self.pool.held(i, (then, then_run), ran_in or slot.incarnation, handed=True)
            self.messages["handed_on"] += 1
        else:
            slot.handle.cancel.remote([(then, then_run)])

    async def still_held(self, kind: str, index: int, keys: list[RunKey]) -> list[RunKey]:
        """From an executor (``kind`` "light") or heavy worker whose event loop stood still
        (its process stopped, say) long enough that a cancel may have been answered without
        it: which of these runs, about to begin there, this scheduler still holds there. A
        run cancelled, replaced or withdrawn meanwhile is not, and never begins there
        (actors/executor_cancel.py)."""
        await self._ready
        where = self.pool.where if kind == "light" else self.heavy.where  # run -> where it is held
        return [(k, r) for k, r in keys if where.get((k, r)) == index]

    async def loop_blocked(
        self, kind: str, index: int, incarnation: str, lag_s: float, worker: str | None,
        run: RunKey | None, begun: list[RunKey],
    ) -> Fence | None:
        """From an executor's watch thread: a worker blocks its event loop. It gets nothing
        more until it runs again; its runs that had not begun are withdrawn and re-queued
        (not counted as attempts). Returns the fence: every batch up to it is withdrawn."""
        await self._ready
        task = run[0] if run else None
        if kind == "light" and index < len(self.pool.slots) and incarnation in self.pool.slots[index].dead:
            return None  # a process that has since died: its runs are settled as a death
        self._blocked.block(kind, index, worker, task, lag_s)
        if kind != "light" or index >= len(self.pool.slots):
            log.warning("heavy worker %d: %s (task %s) blocks its event loop", index, worker, task)
            return None
        held = {(k, r) for k, r in begun}
        for key in held:  # their own "began" notices wait behind the blocked loop
            self.core.started(*key)
        withdrawn = self.pool.withdraw(index, held, incarnation)
        log.warning("executor %d: %s (task %s) blocks its event loop (%.2f s so far); %d queued runs go to "
                    "other executors", index, worker, task, lag_s, len(withdrawn))
        if reason := self._blocked.reason(self._serving(), self.core.ready_count()):
            log.warning("%s", reason)
        self._pump()
        return Fence(self.pool.epoch, self.pool.slots[index].batch_seq)

    async def executor_exiting(self, index: int, incarnation: str, why: str) -> None:
        """A light executor is about to end its process (its memory cap): send it nothing
        more, and re-run what that process took as runs it died under."""
        await self._ready
        # (the runs' cause of death: what the cap measured, not what the process does next)
        cause = why.partition(": stopping this process")[0]
        if index < len(self.pool.slots) and self.pool.exiting(index, incarnation, cause):
            log.warning("executor %d: %s", index, why)
            self.pool.stops.add(f"executor {index}", f"ended its own process: {why}", pid_in(incarnation))
            self._pump()

    async def heavy_exiting(self, index: int, incarnation: str, unbegun: list[RunKey], why: str) -> None:
        """A heavy worker is about to end its process (actors/stray_threads.py): send it
        nothing more, and re-run the run it took and never began, blaming it for nothing."""
        await self._ready
        if index < len(self.heavy.slots) and self.heavy.exiting(index, incarnation, unbegun):
            log.warning("heavy worker %d: %s", index, why)
            self.heavy.stops.add(f"heavy worker {index}", f"ended its own process: {why}",
                                 pid_in(incarnation))
            self._pump()

    async def loop_unblocked(
        self, kind: str, index: int, incarnation: str, blocked_s: float, worker: str | None,
        run: tuple[str, int] | None, threaded: bool,
    ) -> None:
        """The loop runs again: it takes runs again; the blocking worker is named (log, event)."""
        await self._ready
        notice = self._blocked.unblock(kind, index, worker, blocked_s, threaded)
        log.warning("%s %d: %s (task %s)", "executor" if kind == "light" else "heavy worker", index, notice,
                    run[0] if run else None)
        if run is not None:
            self.core.notice(run[0], worker or "?", notice)
        if kind == "light" and index < len(self.pool.slots):
            self.pool.slots[index].reachable = True  # it just spoke: a ping that timed out meanwhile is stale
        self._pump()
