"""HeavyPool: the scheduler's pool of HeavyWorker actors, one slot record each.

A slot holds an actor (created on demand, when heavy work waits) and at most one run.
A slot takes runs only once its actor has been placed and has answered (``ready``);
until then it is pending placement: it keeps its one request open, so an autoscaler
sees the demand, and it is never taken for lost or replaced in a loop. Only an actor
that had answered and then stays silent for ``heavy_unreachable_s`` (its node left) is
replaced. Cancel is cooperative first, forced after ``heavy_cancel_grace_s``; idle
actors retire after ``heavy_idle_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import ray
from ray.exceptions import ActorUnavailableError

from kmpray.config import EngineConfig
from kmpray.engine import Dispatch, SchedulerCore
from kmpray.placement import heavy_demand
from kmpray.protocol import Began, Done, Fence, Holding, Progress, taken_from_wire
from kmpray.timing import (
    BLOCKED_PING_TIMEOUT_S,
    HEAVY_CANCEL_POLL_S,
    HEAVY_RESTART_POLL_S,
    HEAVY_SLOW_PLACE_S,
)

from .background import background
from .blocked_loops import BlockedLoops
from .executor_pool import ExecutorPool, ping, take_acks
from .heavy_worker import HeavyWorker
from .names import HEAVY
from .spool import beside, recover
from .stops import Stops, stop
from .submit_lane import LaneLost, SubmitLanes, ray_submit

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterable

log = logging.getLogger("kmpray.scheduler")

RunKey = tuple[str, int]


class Host(Protocol):
    """What the pool needs from the scheduler actor that owns it."""

    core: SchedulerCore
    pool: ExecutorPool  # its epoch: the heavy workers' submits carry it (actors/fencing.py)

    def _kick(self) -> None: ...

    def _flush(self) -> None: ...

    def _reconcile(self) -> Coroutine[Any, Any, None]: ...

    def _wire(self, d: Dispatch) -> tuple[Any, ...]: ...

    def _hear(self, done: list[Done], progress: Iterable[Progress], began: Iterable[Began]) -> Coroutine[Any, Any, None]: ...



@dataclass
class HeavySlot:
    """One place in the pool: an actor and the run it holds."""

    handle: Any = None
    incarnation: str | None = None
    ready: bool = False  # placed and answered since it was (re)created: may take a run
    run: RunKey | None = None
    # The process that took ``run`` (its submit's answer; the holding answer for an adopted
    # run), None while the submit is unanswered. Only a run some *other* process took died
    # when the incarnation changes: the slot's known incarnation may be stale (a restart
    # seen first in the answer to the run it now holds).
    taker: str | None = None
    idle_since: float = field(default_factory=time.monotonic)
    asked_at: float | None = None  # when its actor was asked for, until placed (reason())
    unreachable_since: float | None = None
    acks: list[RunKey] = field(default_factory=list)  # results of its answers stored (see ExecutorSlot)


class HeavyPool:
    def __init__(
        self, host: Host, namespace: str, config: EngineConfig, blocked: BlockedLoops,
        artifacts: tuple[str, str] | None = None,
    ) -> None:
        self.host = host
        self.artifacts = artifacts  # (folder, node) for large step data
        self.namespace = namespace
        self.config = config
        self.blocked = blocked
        self.slots = [HeavySlot() for _ in range(config.heavy_pool_size)]
        self.where: dict[RunKey, int] = {}  # run -> slot holding it
        self.capacity: int | None = None  # heavy actors the alive nodes can hold (reconcile sets it)
        self.replaced = 0
        self.refused: str | None = None  # why Ray would not start a heavy worker (grow)
        self.lanes = SubmitLanes()  # heavy workers on the scheduler's node: runs down their lanes
        self.stops = Stops()  # heavy workers' processes the engine ended (actors/stops.py)
        self.spool = beside(artifacts)  # results its dead workers spooled (actors/spool.py)

    # ------------------------------------------------------------------ reads
    def idle(self) -> list[int]:
        """Slots that may take a run now."""
        return [i for i, slot in enumerate(self.slots) if slot.run is None and slot.ready]

    def status(self) -> dict[str, Any]:
        return {
            "pool": len(self.slots),
            "placed": sum(1 for slot in self.slots if slot.ready),
            "pending": sum(1 for slot in self.slots if slot.handle is not None and not slot.ready),
            "busy": sum(1 for slot in self.slots if slot.run is not None),
            "capacity": self.capacity,
            "replaced": self.replaced,
            "waiting_for": self.reason(),
        }

    def reason(self) -> str | None:
        """Why ready heavy runs wait, if they do: the pool is busy, or not placed yet."""
        if self.idle() or not self.host.core.heavy_ready_count(exact=True):
            return None
        pool = len(self.slots)
        if not pool:
            return "waiting for a heavy worker: the heavy pool is empty (EngineConfig.heavy_pool_size=0)"
        if self.refused:
            return "waiting for a heavy worker: " + self.refused
        placed = sum(1 for slot in self.slots if slot.ready)
        text = f"waiting for a heavy worker: {placed} of {pool} placed"
        if placed == pool:
            return text + ", all busy"
        demand = heavy_demand(self.config.heavy_num_cpus, self.config.heavy_resources)
        if self.capacity == 0:
            return text + f"; no alive node has the resources a heavy worker asks for ({demand})"
        if placed:
            return text + f", all busy; the others wait for a node with room ({demand})"
        asked = [slot.asked_at for slot in self.slots if slot.asked_at is not None and not slot.ready]
        waited = time.monotonic() - min(asked) if asked else 0.0
        if waited >= HEAVY_SLOW_PLACE_S:  # "(starting)" said this for good while others held the CPUs
            return text + (f" (asked for {waited:.0f} s ago): a node has {demand} in all, but not free now; "
                           "other actors or tasks hold it (`ray status` shows the cluster's use)")
        return text + " (starting)"

    # ------------------------------------------------------------- lifecycle
    def grow(self) -> None:
        """Heavy work waits: ask for every slot not yet asked for (one request each)."""
        for i, slot in enumerate(self.slots):
            if slot.handle is None and not self._ask(i):
                return  # Ray refused the options: it would refuse the others too

    def _ask(self, i: int) -> bool:
        """Ask Ray for slot ``i``'s actor (named: one that exists is found); False if Ray refused."""
        slot = self.slots[i]
        options: dict[str, Any] = {
            "name": HEAVY.format(i),
            "namespace": self.namespace,
            "lifetime": "detached",
            "get_if_exists": True,
            "num_cpus": self.config.heavy_num_cpus,
        }
        resources = dict(self.config.heavy_resources)
        if "GPU" in resources:  # Ray takes GPUs only as num_gpus (and then sets CUDA_VISIBLE_DEVICES)
            options["num_gpus"] = resources.pop("GPU")
        if resources:
            options["resources"] = resources
        try:
            slot.handle = HeavyWorker.options(**options).remote(
                self.namespace, i, self.config.model_dump(), self.artifacts)
        except Exception as exc:  # Ray refused the options: heavy runs wait, nothing else does
            if self.refused is None:
                log.error("Ray refused to start a heavy worker (%s): heavy tasks wait", exc)
            self.refused = f"Ray refused to start a heavy worker: {exc}"
            return False
        self.refused = None
        slot.ready = False
        background(self._await(i, slot.handle), f"heavy worker {i}: waiting for it to start")
        return True

    async def _await(self, i: int, handle: Any, not_process: str | None = None) -> None:
        """Until the actor is placed and answers (however long that takes): then it may take
        runs. ``not_process``: a process about to end (``exiting``), whose answers do not count."""
        waiting = self.slots[i]
        if waiting.handle is handle and waiting.asked_at is None:  # for reason(): since when
            waiting.asked_at = time.monotonic()
        while True:
            try:
                answer = await handle.ping.remote()
                if not_process is None or answer.incarnation != not_process:
                    break
            except ActorUnavailableError:
                pass  # restarting: ask again
            except Exception as exc:
                if self.slots[i].handle is handle:
                    await self._ask_again(i, handle, exc)
                return  # retired or replaced (its slot moved on), or asked for again just now
            await asyncio.sleep(HEAVY_RESTART_POLL_S)
        slot = self.slots[i]
        if slot.handle is handle and not slot.ready:
            slot.ready, slot.incarnation, slot.idle_since = True, answer.incarnation, time.monotonic()
            slot.asked_at = None
            log.info("heavy worker %d placed on node %s", i, answer.node[:12])
            self.host._kick()

    async def _ask_again(self, i: int, handle: Any, exc: Exception) -> None:
        """Slot ``i``'s actor died before it was ever ready, and nothing moved the slot on:
        the actor Ray handed back was one being stopped (asked for by name while the worker
        it replaces was killed, which ``get_if_exists`` finds), or its creation failed. Left
        so, the slot stayed pending for ever (reconcile leaves pending slots alone) and heavy
        work ran on fewer workers than the pool has (a multi-node run, session 54)."""
        log.warning("heavy worker %d ended before it was placed (%s): asked for again", i, type(exc).__name__)
        await asyncio.sleep(HEAVY_RESTART_POLL_S)  # the dying actor's name is let go meanwhile
        if self.slots[i].handle is handle:
            self.slots[i] = HeavySlot()
            self._ask(i)

    def found(self, i: int, handle: Any, answer: Holding | None) -> None:
        """A restarted scheduler found this slot's actor still there (its warm state kept)."""
        slot = self.slots[i]
        slot.handle, slot.incarnation = handle, answer.incarnation if answer else None
        slot.ready = answer is not None
        if answer is None:
            background(self._await(i, handle), f"heavy worker {i}: waiting for it to answer")

    def exiting(self, i: int, incarnation: str, unbegun: list[RunKey]) -> bool:
        """Heavy worker ``i``'s process ends itself (a timed-out run's thread outlived the
        grace, actors/stray_threads.py): it takes nothing more, and the run it took but will
        never begin (``unbegun``) runs again elsewhere, not counted as a death of its own."""
        slot = self.slots[i]
        if slot.handle is None or slot.incarnation != incarnation:
            return False
        slot.ready, slot.incarnation = False, None
        if slot.run is not None and slot.run in {(k[0], k[1]) for k in unbegun}:
            self._lose_run(slot)  # innocent: re-queued, no crash counted against it
        background(self._await(i, slot.handle, not_process=incarnation),
                   f"heavy worker {i}: waiting for its next process")
        return True

    def adopted(self, i: int, key: RunKey) -> None:
        self.slots[i].run = key
        self.slots[i].taker = self.slots[i].incarnation  # what the holding answer said
        self.where[key] = i

    # ----------------------------------------------------------------- runs
    def send(self, i: int, d: Dispatch) -> None:
        slot = self.slots[i]
        slot.run, slot.taker = (d.key, d.run_id), None
        self.host.core.note(d.key, ("handed", d.run_id, f"heavy worker {i}", None))
        self.where[slot.run] = i
        run, acks = [self.host._wire(d)], take_acks(slot) or None
        # The epoch only (no batch numbers: a heavy worker holds one run, nothing to withdraw):
        # a submit of this scheduler's that arrives after its successor adopted this worker's
        # runs is refused there (actors/fencing.py).
        fence = Fence(self.host.pool.epoch, 0)
        pushed = self.lanes.submit(i, slot.incarnation, run, fence, acks)  # actors/submit_lane.py
        ref = pushed if pushed is not None else ray_submit(slot.handle, run, fence, acks)
        background(self._confirm(i, slot.run, ref), f"heavy worker {i}: confirming a submit")

    async def _confirm(self, i: int, key: RunKey, ref: Any) -> None:
        try:
            incarnation, done = taken_from_wire(await ref)
        except Exception as exc:
            # E.g. the actor is restarting after a forced stop: run it again, on a later try.
            log.warning("heavy worker %d did not take %s (%s); re-queued", i, key[0], type(exc).__name__)
            self.free(key)
            # Its process died with the call in flight: the run may have begun (and killed it).
            died = isinstance(exc, (ray.exceptions.RayActorError, LaneLost))  # ActorDied, ActorUnavailable
            self.host.core.run_lost(*key, crashed=died)
            slot = self.slots[i]
            slot.incarnation, slot.ready = None, False
            self.host._flush()
            if slot.handle is not None:
                await self._await(i, slot.handle)  # takes runs again once it answers
            self.host._kick()
            return
        slot = self.slots[i]
        if slot.run == key:
            slot.taker = incarnation
        if done:  # it ended at once: its result came with the answer (actors/replies.py)
            await self.host._hear(done, (), ())
            if self.slots[i] is slot:
                slot.acks.extend((d.key, d.run_id) for d in done)
        if slot.incarnation is None:
            slot.incarnation = incarnation
        elif incarnation != slot.incarnation:
            await self.host._reconcile()

    def free(self, key: RunKey) -> None:
        """The run reported: its slot is idle again."""
        i = self.where.pop(key, None)
        if i is not None and self.slots[i].run == key:
            self.slots[i].run = None
            self.slots[i].idle_since = time.monotonic()

    async def _heard(self, done: list[Done]) -> None:
        await self.host._hear(done, (), ())

    def _lose_run(self, slot: HeavySlot, crashed: bool = False) -> None:
        if slot.run is not None:
            self.where.pop(slot.run, None)
            self.host.core.run_lost(*slot.run, crashed=crashed)
            slot.run = None
            self.host._kick()

    def cancel(self, key: RunKey) -> Any | None:
        """Stop the run ``key`` where it is held (``_stop``). Returns the call that tells the
        worker (None if no worker holds it): once answered, the run never begins there if
        it had not (the scheduler answers a cancel after that, as for light executors)."""
        i = self.where.pop(key, None)
        if i is None:
            return None
        handle = self.slots[i].handle
        told = handle.cancel_cooperative.remote([key]) if handle is not None else None
        background(self._stop(i, key, told), f"heavy worker {i}: cancelling run {key[0]}")
        return told

    async def _stop(self, i: int, key: RunKey, told: Any) -> None:
        """Cancel a heavy run: cooperative first (ctx.is_cancelled(); ``told``, the call
        sent), forced after the grace."""
        slot = self.slots[i]
        handle = slot.handle
        try:
            await told
            deadline = time.monotonic() + self.config.heavy_cancel_grace_s
            while time.monotonic() < deadline:
                if not await handle.busy.remote(key):
                    break
                await asyncio.sleep(HEAVY_CANCEL_POLL_S)
            else:
                log.warning("heavy run %s ignored its cancel for %.1f s: stopping its worker",
                            key[0], self.config.heavy_cancel_grace_s)
                slot.incarnation, slot.ready = None, False
                await stop(self.stops, f"heavy worker {i}", handle, f"run {key[0]} ignored its cancel for "
                           f"{self.config.heavy_cancel_grace_s:g} s: stopped (Ray restarts it)", restart=True)
                background(self._await(i, handle), f"heavy worker {i}: waiting for its restart")
        except Exception:
            log.exception("stopping heavy run %s", key[0])
        finally:
            if slot.run == key:
                slot.run = None
                slot.idle_since = time.monotonic()
            self.host._kick()

    # ------------------------------------------------------------ reconcile
    async def reconcile(self, ping_timeout_s: float) -> None:
        """Retire idle actors, re-run what a restarted or lost actor held, replace lost ones."""
        now = time.monotonic()
        for i, slot in enumerate(self.slots):
            if slot.handle is None or not slot.ready:
                continue  # pending placement: not lost, not replaced; _await sees it start
            if slot.run is None and now - slot.idle_since > self.config.heavy_idle_timeout_s:
                ray.kill(slot.handle, no_restart=True)  # retired: its warm state goes with it
                self.slots[i] = HeavySlot()
                continue
            blocked = i in self.blocked.heavy
            answer = await ping(slot, BLOCKED_PING_TIMEOUT_S if blocked else ping_timeout_s)
            incarnation = answer.incarnation if answer is not None else None
            if answer is not None and answer.start_waits:
                self.host.core.stats.started_after(answer.start_waits, self.host.core.clock.now_ms())
            if incarnation is None and blocked:
                continue  # its loop is blocked by the run it holds, which its watch thread reported
            if incarnation is None:
                slot.unreachable_since = slot.unreachable_since or now
                if now - slot.unreachable_since > self.config.heavy_unreachable_s:
                    # It had answered before: its node is gone (or it hangs). Its run goes to
                    # the next ready worker; the replacement waits for placement like any new one.
                    log.warning("heavy worker %d unreachable for %.0f s: replaced", i, now - slot.unreachable_since)
                    await recover(self.spool, [slot.taker], self._heard)
                    self._lose_run(slot)
                    self.slots[i] = HeavySlot()
                    self.replaced += 1
                    await stop(self.stops, f"heavy worker {i}", slot.handle, f"unreachable for "
                               f"{now - slot.unreachable_since:.0f} s: replaced", restart=False)
                continue
            slot.unreachable_since = None
            # Lost only if a process other than the one answering took it; unanswered, the
            # submit's answer settles it (taken, or failed: run_lost). Session 21's chaos run
            # caught a restart noticed late re-running the run the new process had just taken.
            if slot.run is not None and slot.taker is not None and slot.taker != incarnation:
                await recover(self.spool, [slot.taker], self._heard)  # finished there: it counts
                if slot.run is not None:
                    log.warning("heavy worker %d restarted: re-running %s", i, slot.run[0])
                    self._lose_run(slot, crashed=True)  # one run per worker: the death is its own
            slot.incarnation = incarnation
