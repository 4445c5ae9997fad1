"""How the SchedulerActor hands runs to executors and heavy workers: one pump turn sees
the pools' free room once (a ``Turn``), takes that many ready runs from the core, places
them (pure ``placement.assign``), sends each executor its part and confirms delivery.
A mixin of SchedulerActor (scheduler.py): the attributes below are the actor's."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import ray

from kmpray.clock import ManualClock, SystemClock
from kmpray.config import EngineConfig
from kmpray.driver import pump
from kmpray.engine import Dispatch, SchedulerCore
from kmpray.placement import assign
from kmpray.protocol import Began, Done, Misaddressed, Progress, Run, taken_from_wire
from kmpray.store import SqliteTaskStore

from .background import background
from .executor_pool import ExecutorPool
from .heavy_pool import HeavyPool
from .scheduler_artifacts import ArtifactKeeper
from .stealing import Stealer
from .submit_lane import LaneLost

log = logging.getLogger("kmpray.scheduler")


class Turn:
    """The pools' free room as one pump turn sees it: (room, executor) pairs and idle heavy
    slots, read by ``room`` and spent by ``hand_over`` of the same batch."""

    __slots__ = ("free", "idle_heavy")

    def __init__(self) -> None:
        self.free: list[tuple[int, int]] = []
        self.idle_heavy: list[int] = []


class SchedulerDispatch:
    config: EngineConfig
    clock: ManualClock | SystemClock
    core: SchedulerCore
    pool: ExecutorPool
    heavy: HeavyPool
    stealer: Stealer
    artifacts: ArtifactKeeper
    store: SqliteTaskStore
    _lead_ms: int
    _blobs: dict[str, tuple[int, bytes]]
    messages: Counter[str]

    if TYPE_CHECKING:  # the actor's
        def _flush(self) -> None: ...
        def _kick(self) -> None: ...
        async def _reconcile(self) -> None: ...
        async def _hear(self, done: list[Done], progress: Iterable[Progress], began: Iterable[Began]) -> None: ...

    def _pump(self) -> None:
        # Write first what the turn changed so far (results, promotions, new rows), then hand
        # runs out: a run never reaches an executor before what made it due is stored, so
        # a kill between the two cannot leave an executor running what a restarted
        # scheduler finds BLOCKED, or not at all (a new enqueue, applied again by the
        # client's retry). A dispatch itself is not stored; the write after it is nearly
        # always empty.
        self._flush()
        turn = Turn()
        cut = pump(self.core, lambda: self._room(turn), lambda batch: self._hand_over(turn, batch),
                   self._lead_ms)  # kmpray/driver.py
        self._flush()
        if cut:  # at its budget with due work left: the loop comes back after what waits
            self._kick()
        self.stealer.check()  # runs queued behind busy slots, while others are free (stealing.py)

    def _room(self, turn: Turn) -> tuple[int, int]:
        """How many light and heavy runs may go out now; heavy workers grow when heavy
        runs wait."""
        turn.free, turn.idle_heavy = self.pool.free(), self.heavy.idle()
        if self.core.heavy_ready_count() > len(turn.idle_heavy):
            self.heavy.grow()
        room = sum(n for n, _ in turn.free)
        return min(room, self.config.max_batch * len(turn.free)), len(turn.idle_heavy)

    def _hand_over(self, turn: Turn, batch: list[Dispatch]) -> bool:
        light = [d for d in batch if not d.heavy and not d.suspect]
        for d, i in zip((d for d in batch if d.heavy), turn.idle_heavy, strict=False):
            self.heavy.send(i, d)
        self._isolate([d for d in batch if d.suspect and not d.heavy])
        plan, unplaced, over = assign(light, turn.free, self.pool.nodes())
        for i, part in plan.items():
            self._send(i, part)
        for d in unplaced:  # no room on the nodes that satisfy it: waits for capacity there
            self.core.unplaced(d.key, d.run_id)
        for d in over:  # never expected (take_ready takes no more than the room): run later
            self.core.run_lost(d.key, d.run_id)
        return not unplaced

    def _isolate(self, suspects: list[Dispatch]) -> None:
        """A process died under these tasks' last runs: each runs alone on an executor, one
        at a time (the others wait, released when that run ends). Fewest deaths first: a
        run that was only beside a dying one goes before one that died alone already."""
        for d in sorted(suspects, key=lambda d: d.crashes):
            i = self.pool.isolate(d.nodes)
            if i is None:
                self.core.unplaced(d.key, d.run_id, "a process died under its last run: waits to run alone on "
                                                    "an executor (so a second death is its own)")
                continue
            self._send(i, [d], alone=True)

    def _wire(self, d: Dispatch) -> Run:
        refs = self.artifacts.refs_for(d.upstream) if d.upstream and self.artifacts.refs else None
        then = self._wire(d.then) if d.then is not None else None
        text = self.store.read_input(d.key) if d.input_stored else d.input
        merger = d.then.input_merger if d.then else ""
        return Run(d.key, d.run_id, d.worker, self._blobs.get(d.worker, (0, b""))[0], text, d.upstream,
                   d.previous_attempts, d.timeout_ms, d.start_at_ms, refs, then, merger, d.enqueued_ms)

    def _send(self, i: int, part: list[Dispatch], alone: bool = False) -> None:
        keys = [(d.key, d.run_id) for d in part]
        self.messages["submits_sent"] += 1
        acks = self.pool.take_acks(i)
        if alone:
            ref = self.pool.send_alone(i, keys[0], self._wire(part[0]), acks)
        else:
            ref = self.pool.send(i, keys, [self._wire(d) for d in part], acks)
        if self.core.decisions.maxlen:
            now, node, log_ = self.clock.now_ms(), self.pool.slots[i].node, self.core.decisions
            for d in part:
                log_.append((now, d.key, ("handed", d.run_id, f"executor {i}", node)))
        background(self._confirm(i, ref, keys, acks), f"executor {i}: confirming a submit")

    def _submitted(self, i: int) -> None:
        """Its submit answered: runs that became ready meanwhile go in the next turn."""
        self.pool.answered(i)
        self._kick()

    async def _confirm(self, i: int, ref: Any, keys: list[tuple[str, int]], acks: list[tuple[str, int]]) -> None:
        try:
            incarnation, done = taken_from_wire(await ref)
        except Exception as exc:
            self._submitted(i)
            self.pool.slots[i].acks.extend(acks)  # said again with the next call
            # The batch may or may not have arrived: run it again elsewhere (a copy that did
            # arrive reports under its old run id, which is ignored). At-least-once.
            if isinstance(getattr(exc, "cause", None), Misaddressed):
                log.warning("executor %d restarted unseen: its new process refused the batch for the old "
                            "one; %d runs go back to the queue", i, len(keys))
            else:
                log.warning("executor %d: submit failed (%s)", i, type(exc).__name__)
            self.pool.slots[i].reachable = False
            # Its process died with the call in flight: the runs may have begun there (and
            # one of them killed it), so they count as runs it died under.
            # (LaneLost: its lane closed with the batch unanswered, actors/submit_lane.py)
            died = isinstance(exc, (ray.exceptions.RayActorError, LaneLost))  # ActorDied, ActorUnavailable
            self.pool.lose(i, "did not take its batch", keys, crashed=died)
            self._flush()
            await self._reconcile()
            return
        self._submitted(i)
        if self.pool.accepted(i, keys, incarnation):
            self._flush()
        if done:  # results of runs that ended at once (actors/replies.py): stored, then acknowledged
            self.messages["results_in_answers"] += len(done)
            await self._hear(done, (), ())
            self.pool.slots[i].acks.extend((d.key, d.run_id) for d in done)
        if incarnation != self.pool.slots[i].incarnation:
            await self._reconcile()
