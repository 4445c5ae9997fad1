"""ExecutorPool: the scheduler's light executors, one slot record each.

A slot is one long-lived LightExecutor actor pinned to a node: the runs handed to it
and not reported yet, whether it answered its last ping, its event-loop lag, its
process incarnation (a new one means what it held is gone) and its batch count (the
fence for a blocked loop, see executor.py). Which executor a run goes to is
``kmpray.placement.assign`` (pure); this class performs it and keeps the books.
The heavy workers are the same idea with one run each: heavy_pool.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kmpray.config import EngineConfig
from kmpray.engine import SchedulerCore
from kmpray.protocol import Fence, Ping, Run, RunKey
from kmpray.timing import BLOCKED_PING_TIMEOUT_S

from .blocked_loops import BlockedLoops
from .executor import LightExecutor
from .names import EXECUTOR, PROBATION, named
from .spool import Heard, beside, recover
from .stops import Stops, stop
from .submit_lane import SubmitLanes, ray_submit

#: Probation executors (suspect runs, one each at a time); see ``ExecutorPool.isolate``.
PROBATION_LANES = 2

log = logging.getLogger("kmpray.scheduler")

Key = RunKey


# Submit calls in flight to one executor at a time: runs that become ready meanwhile wait
# for its answer and go together in the next one (the outbox pattern of every other message
# between the actors), so batches grow with the load while a lone call's run still goes at
# once. Session 16, four alternating pairs of `bench submit --quick`: 8 threads of single
# enqueue() calls 671-797 -> 815-959 calls/s (submits per task 0.46-0.50 -> 0.31-0.36);
# bulk dispatch unchanged (its batches were already large).
SUBMITS_IN_FLIGHT = 1


@dataclass(slots=True)
class ExecutorSlot:
    index: int
    handle: Any
    node: str | None  # where it runs, as its last ping said (its pinned node until then)
    incarnation: str | None = None
    # Handed over, not reported yet -> the incarnation (process) that accepted it, None
    # until its submit answers: only what a dead process accepted died with it.
    inflight: dict[Key, str | None] = field(default_factory=dict)
    # Of those, the chain tasks it began on its own, handed on by a run of theirs that
    # succeeded there (one hop per step): never withdrawn for a blocked loop, see ``withdraw``.
    handed: set[Key] = field(default_factory=set)
    reachable: bool = False  # answered its last ping: may be sent runs
    lag_ms: float = 0.0  # its event-loop lag at that ping
    batch_seq: int = 0  # batches sent under this scheduler's epoch
    retired: bool = False  # its node left the cluster: never used again
    dead: set[str] = field(default_factory=set)  # its incarnations seen replaced
    probation: bool = False  # the executor that runs suspects, one at a time, and nothing else
    # Results it sent in submit answers that this scheduler has stored: said with the next
    # submit or ping, so it forgets them (actors/replies.py).
    acks: list[Key] = field(default_factory=list)
    submits: int = 0  # submit calls in flight to it, not answered yet (SUBMITS_IN_FLIGHT)

    def forget(self, key: Key) -> None:
        """``key`` is no longer held here (reported, cancelled, lost or withdrawn)."""
        self.inflight.pop(key, None)
        self.handed.discard(key)


class ExecutorPool:
    def __init__(
        self, namespace: str, config: EngineConfig, core: SchedulerCore, blocked: BlockedLoops,
        kick: Callable[[], None], artifacts: tuple[str, str] | None = None, started: int = 0,
    ) -> None:
        self.namespace = namespace
        self.artifacts = artifacts  # (folder, node) for large step data (actors/scheduler_artifacts.py)
        self.config = config
        self.core = core
        self.blocked = blocked
        self._kick = kick  # wake the scheduler's loop (runs were re-queued)
        self.lanes = SubmitLanes()  # executors on this node, sent their runs down the local lane
        self.stops = Stops()  # processes of its executors the engine ended (actors/stops.py)
        # Where executors on the scheduler's node spool results it could not take (down,
        # restarting), read when one dies; ``heard``: the scheduler's report handling.
        self.spool = beside(artifacts)
        self.heard: Heard | None = None
        self.slots: list[ExecutorSlot] = []
        self.where: dict[Key, int] = {}  # run -> the executor holding it
        # Batches are numbered per executor under this scheduler's epoch, so a blocked
        # executor never begins a run withdrawn from it (see executor.py). Epochs compare
        # by value: first ``started`` (the scheduler's start number in its store), then its
        # start time, so an executor can tell a late batch of an earlier scheduler from an
        # early one of a later scheduler whatever the clock does (actors/fencing.py).
        self.epoch = f"{started:012d}-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
        # A suspect run (a process died under its task's last run) runs alone on an
        # executor, so a death there is that task's own (kmpray.engine.SchedulerCore.run_lost).
        self.alone: dict[int, Key | None] = {}  # executor -> the suspect run alone on it (None: emptying)
        # Where suspects go: executors of their own on the scheduler's node (made when
        # first needed), so a death there costs the ordinary executors nothing. A suspect
        # that may not run on that node is isolated on an ordinary executor instead.
        self.probation: list[int] = []
        self.home: str | None = None

    # ------------------------------------------------------------------ reads
    def serving(self) -> list[ExecutorSlot]:
        """The executors that take ordinary runs."""
        return [s for s in self.slots if not s.retired and not s.probation]

    def live(self) -> list[ExecutorSlot]:
        return [s for s in self.slots if not s.retired]

    def free(self) -> list[tuple[int, int]]:
        """(room, index) of every executor that may be sent runs now: it answered its last
        ping (one whose node died is pending forever), its loop is not blocked, it holds
        fewer than ``executor_window`` runs, and its last submit has answered."""
        limit = self.config.executor_window
        free = [
            (limit - len(s.inflight), s.index)
            for s in self.slots
            if len(s.inflight) < limit and s.reachable and not s.retired and s.index not in self.blocked.light
            and s.index not in self.alone and not s.probation and s.submits < SUBMITS_IN_FLIGHT
        ]
        # Runs queue beyond an executor's slots only once no executor has a slot free: else
        # they wait behind its runs while another idles (and runs taken back from it by
        # stealing.py would go straight back).
        slots = self.config.executor_concurrency
        if any(len(self.slots[i].inflight) < slots for _room, i in free):
            return [(room, i) for room, i in free if len(self.slots[i].inflight) < slots]
        return free

    def _usable(self, s: ExecutorSlot) -> bool:
        return s.reachable and not s.retired and s.index not in self.blocked.light

    def isolate(self, nodes: tuple[str, ...] | None) -> int | None:
        """The executor a suspect run may go to now, alone, or None (it waits).

        A probation executor that is idle, when the run may use the scheduler's node (two
        of them, so a death of one, which takes ~2 s to restart, holds nobody up). Else an
        ordinary executor, one at a time: the one holding fewest runs gets nothing new
        until it is empty, then only that run; never the only ordinary executor taking
        runs (one restarting, say) unless the engine has only one."""
        lanes = [lane for lane in self._probation() if nodes is None or lane.node in nodes]
        if lanes:
            idle = [lane for lane in lanes
                    if self._usable(lane) and not lane.inflight and lane.index not in self.alone]
            return idle[0].index if idle else None
        held = [i for i in self.alone if not self.slots[i].probation]
        if held and self.alone[held[0]] is not None:
            return None  # a suspect runs alone on an ordinary executor already
        reserved = held[0] if held else None
        if reserved is not None and not self._usable(self.slots[reserved]):
            del self.alone[reserved]
            reserved = None
        if reserved is None:
            usable = [s for s in self.serving() if self._usable(s)]
            if len(usable) < 2 and len(self.serving()) > 1:
                return None  # the one executor taking runs now keeps taking all of them
            options = [s for s in usable if nodes is None or s.node in nodes]
            if not options:
                return None
            reserved = min(options, key=lambda s: len(s.inflight)).index
            self.alone[reserved] = None  # emptied for it from now on
        slot = self.slots[reserved]
        if slot.inflight or (nodes is not None and slot.node not in nodes):
            return None
        return reserved

    def send_alone(self, i: int, key: Key, run: Run, acks: list[Key] | None = None) -> Any:
        self.alone[i] = key
        return self.send(i, [key], [run], acks)

    def _probation(self) -> list[ExecutorSlot]:
        """The probation executors, started when first needed (each answers its first
        ping within a reconcile; suspects wait until then)."""
        while len(self.probation) < PROBATION_LANES and self.home is not None:
            try:
                self.probation.append(self.add(self.home, probation=True))
            except Exception as exc:  # e.g. its name not yet freed by a predecessor's kill
                log.warning("probation executor not started (%s): suspects wait", type(exc).__name__)
                break
        return [self.slots[i] for i in self.probation]

    def end_isolation(self, key: Key | None = None) -> None:
        """The suspect run ``key`` alone on an executor ended; None: no suspect waits, so
        an ordinary executor being emptied for one takes runs again."""
        ended = [i for i, k in self.alone.items() if k == key]
        for i in ended:
            del self.alone[i]
        if key is not None and ended:
            self.core.release_unplaced()  # the suspects waiting meet at the next turn

    def nodes(self) -> list[str | None]:
        return [s.node for s in self.slots]

    def inflight_by_node(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.slots:
            if s.inflight and s.node is not None:
                out[s.node] = out.get(s.node, 0) + len(s.inflight)
        return out

    # ---------------------------------------------------------------- changes
    def add(self, node: str, probation: bool = False) -> int:
        i = len(self.slots)
        config = self.config.model_dump()
        if probation:  # one run at a time, nothing queued behind it
            config.update(executor_concurrency=1, executor_window=1)
        handle = LightExecutor.options(  # type: ignore[attr-defined]
            name=PROBATION.format(len(self.probation)) if probation else EXECUTOR.format(i),
            namespace=self.namespace,
            lifetime="detached",
            get_if_exists=not probation,  # a predecessor's was killed at start (its index differs)
            # Hard: a soft affinity may land elsewhere and leave a node with no executor,
            # so runs gated to that node would have nowhere to go.
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        ).remote(self.namespace, i, config, self.artifacts)
        self.slots.append(ExecutorSlot(i, handle, node, probation=probation))
        return i

    async def start(self) -> None:
        self.home = ray.get_runtime_context().get_node_id()
        await self._take_over_probation()
        # Bounded, and all at once: a ping runs on the executor's event loop, and a worker
        # blocking that loop across a scheduler restart held the whole start (adoption, and
        # with it the fence against the dead scheduler's late batches) until it let go.
        # Not answering is not loss: it gets nothing until a reconcile's ping answers.
        answers = await asyncio.gather(*(ping(s, self.config.ping_timeout_s) for s in self.slots))
        for s, answer in zip(self.slots, answers, strict=True):
            if answer is None:
                s.reachable = False
                continue
            s.incarnation, _running, s.node, s.lag_ms = answer[:4]
            s.reachable = True

    async def _take_over_probation(self) -> None:
        """A previous scheduler's probation executors (after the ordinary ones are added):
        each is kept as this one's when it answers that its slot index is the one it gets
        here (its reports name that index), so the suspect run it holds is adopted like any
        executor's (adoption.py) instead of running again; one that does not, and any after
        it, is killed, and what it ran is re-queued by the restore. (Until session 37 all
        were killed: each scheduler restart ran every suspect running alone once more.)"""
        for k in range(PROBATION_LANES):
            try:
                handle = named(PROBATION.format(k), self.namespace)
            except ValueError:
                continue
            index: int | None = None
            if k == len(self.probation):
                with contextlib.suppress(Exception):  # restarting, stalled or blocked: killed
                    index = await asyncio.wait_for(handle.__ray_call__.remote(lambda ex: ex.index),
                                                   self.config.ping_timeout_s)
            if index == len(self.slots):
                self.slots.append(ExecutorSlot(index, handle, self.home, probation=True))
                self.probation.append(index)
                continue
            await stop(self.stops, f"probation executor {k}", handle, "a restarted scheduler's probation "
                       "executor that did not answer with the slot it gets: killed, its run re-queued",
                       restart=False)

    def held(self, i: int, key: Key, incarnation: str | None = None, handed: bool = False) -> None:
        """A run executor ``i`` holds: handed over now (its process unknown until the
        submit answers), or adopted after a restart (``incarnation``: the one holding it);
        ``handed``: handed on there by its predecessor's run (one hop per step)."""
        self.slots[i].inflight[key] = incarnation
        if handed:
            self.slots[i].handed.add(key)
        self.where[key] = i

    def accepted(self, i: int, keys: list[Key], incarnation: str) -> bool:
        """Executor ``i``'s process ``incarnation`` took these runs (its submit answered).
        If that process is known to be gone already, they died with it (returns True)."""
        slot = self.slots[i]
        mine = [key for key in keys if key in slot.inflight]
        for key in mine:
            slot.inflight[key] = incarnation
        if incarnation in slot.dead and mine:
            self.lose(i, "died after taking them", mine, crashed=True)
            return True
        return False

    def send(self, i: int, keys: list[Key], runs: list[Run], acks: list[Key] | None = None) -> Any:
        """Hand a batch to executor ``i`` with the acknowledgements due to it (``take_acks``);
        returns the submit's ref (its answer: kmpray.protocol.Taken)."""
        slot = self.slots[i]
        for key in keys:
            self.held(i, key)
        slot.batch_seq += 1
        slot.submits += 1
        fence = Fence(self.epoch, slot.batch_seq, slot.incarnation)
        pushed = self.lanes.submit(i, slot.incarnation, runs, fence, acks or None)  # on this node: a frame
        return pushed if pushed is not None else ray_submit(slot.handle, runs, fence, acks)

    def answered(self, i: int) -> None:
        """A submit to executor ``i`` answered (or failed): it may be sent the next batch."""
        slot = self.slots[i]
        slot.submits = max(0, slot.submits - 1)

    def take_acks(self, i: int) -> list[Key]:
        return take_acks(self.slots[i])

    def reported(self, key: Key) -> None:
        i = self.where.pop(key, None)
        if i is not None:
            self.slots[i].forget(key)
        if key in self.alone.values():
            self.end_isolation(key)

    def cancel(self, keys: Iterable[Key]) -> list[Any]:
        """Tell the executors holding these runs to drop them; the answers (one per
        executor) say each has: nothing it held under these keys begins after that."""
        by_executor: dict[int, list[Key]] = {}
        for key in keys:
            i = self.where.pop(key, None)
            if key in self.alone.values():
                self.end_isolation(key)
            if i is not None:
                self.slots[i].forget(key)
                by_executor.setdefault(i, []).append(key)
        return [self.slots[i].handle.cancel.remote(part) for i, part in by_executor.items()]

    def lose(
        self, i: int, why: str, keys: list[Key] | None = None, crashed: bool = False, cause: str | None = None
    ) -> None:
        """Re-queue executor ``i``'s runs (only ``keys`` of them, if given) still unreported;
        ``crashed``: its process died under them (see ``SchedulerCore.run_lost``), of
        ``cause`` if known."""
        inflight = self.slots[i].inflight
        lost = list(inflight) if keys is None else [k for k in keys if k in inflight]
        for key in lost:
            self.slots[i].forget(key)
            self.where.pop(key, None)
            if key in self.alone.values():
                self.end_isolation(key)
            self.core.run_lost(*key, crashed=crashed, cause=cause)
        if lost:
            log.warning("executor %d %s: re-running %d runs", i, why, len(lost))
            self._kick()

    def exiting(self, i: int, incarnation: str, cause: str | None = None) -> bool:
        """Executor ``i``'s process ``incarnation`` ends itself now (of ``cause``, its memory
        cap): it gets nothing more until a new one answers a ping, and what it took is lost
        with it (a crash)."""
        slot = self.slots[i]
        if incarnation in slot.dead:
            return False
        slot.dead.add(incarnation)  # also one this pool has not seen answer a ping yet
        # Nothing more to this slot until a ping finds its successor, also when no ping has
        # seen the ending process yet (Ray restarted it; it took runs through Ray's calls):
        # a run sent meanwhile would fail on the dying process and count as one it died
        # under. A late notice from an older process only pauses the slot for a ping.
        slot.reachable = False
        self.lose(i, "is ending its process", [k for k, took in slot.inflight.items() if took == incarnation],
                  crashed=True, cause=cause)
        return True

    def withdraw(self, i: int, held: set[Key], incarnation: str) -> list[Key]:
        """Executor ``i``'s process ``incarnation`` has a blocked loop: every run it took
        (or may take: its submit not answered yet, which the fence covers) but ``held``
        (begun, or ended with its report on the way) goes back to the queue, not counted
        as an attempt. Runs an earlier process of the slot took died with it: they are
        left to the reconcile, which counts that death (a poison run's own). A report from
        a process already known dead withdraws nothing. Nor are runs handed on there by
        their predecessor's run withdrawn: the executor took them itself, in no batch, so
        no fence stops them there, and ``held`` may predate them (the report of a block is
        written when it begins, and a run that ended meanwhile may have handed on its
        successor, and said so over the faster local lane): withdrawn, they ran twice (a
        CI run: a chain's upload step arrived twice). They run there once the loop frees."""
        slot = self.slots[i]
        if incarnation in slot.dead:
            return []
        withdrawn = [key for key, took in slot.inflight.items()
                     if key not in held and key not in slot.handed and took in (None, incarnation)]
        self.requeue(slot, withdrawn)
        return withdrawn

    def requeue(self, slot: ExecutorSlot, keys: list[Key]) -> None:
        """Runs ``slot``'s executor will not begin (withdrawn, or handed back: stealing.py)
        go back to the ready queue, not counted as attempts."""
        for key in keys:
            slot.forget(key)
            self.where.pop(key, None)
            if key in self.alone.values():
                self.end_isolation(key)
            self.core.run_lost(*key)

    # -------------------------------------------------------------- reconcile
    async def reconcile(self, nodes: dict[str, dict[str, Any]]) -> bool:
        """Runs on an executor that died or restarted are lost: run them again. Executors
        of a node that left the cluster are retired; a node that joined gets its own.
        Returns whether an executor serves again (the scheduler should dispatch)."""
        live = self.live()
        # A blocked loop cannot answer (its watch thread said so): a short ping still sees a
        # restart or death, without holding up the whole round for the full timeout.
        timeout_s = self.config.ping_timeout_s
        answers = await asyncio.gather(*(
            ping(s, BLOCKED_PING_TIMEOUT_S if s.index in self.blocked.light else timeout_s) for s in live
        ))
        resumed = False
        for s, answer in zip(live, answers, strict=True):
            if answer is not None and answer[0] in s.dead:
                continue  # the process said it is ending (``exiting``): its successor will answer
            if answer is not None:
                incarnation, _running, s.node, s.lag_ms, waits = answer
                if waits:
                    self.core.stats.started_after(waits, self.core.clock.now_ms())
                if incarnation != s.incarnation:
                    if s.incarnation is not None:
                        s.dead.add(s.incarnation)
                    s.incarnation = incarnation
                # An actor has one live process: what any other process took died with it
                # (the process died under those runs), also a process this loop never saw
                # (it restarted twice between pings, or took a batch just before it died).
                # Runs the live one took run there; runs whose submit has not answered yet
                # are settled by that answer (``accepted``, then the next round here).
                died = [k for k, took in s.inflight.items() if took is not None and took != incarnation]
                if died:
                    # What the dead process finished and spooled counts; the rest runs again.
                    await recover(self.spool, {s.inflight.get(k) for k in died}, self.heard)
                    self.lose(s.index, "restarted", died, crashed=True)
                if not s.reachable:
                    resumed = True  # it may take runs again (none may come to say so otherwise)
                s.reachable = True
                if s.index in self.blocked.light and s.lag_ms < self.config.loop_block_ms:
                    # A ping runs on the executor's loop: an answer proves it runs again, even
                    # if its "unblocked" notice was lost (a one-way message from its thread).
                    self.blocked.light.pop(s.index, None)
                    log.warning("executor %d answers again: no longer treated as blocked", s.index)
                    resumed = True
                continue
            # No answer is not proof of loss (a busy, blocked or restarting executor answers
            # later, and its runs' results still arrive): stop sending to it, keep its runs, and
            # re-run them only on proof (a new incarnation, or its node gone).
            s.reachable = False
            if nodes and s.node not in nodes:
                # Pinned hard to a node that is gone: it would stay pending forever.
                log.warning("executor %d: its node left the cluster; retired", s.index)
                self.blocked.light.pop(s.index, None)
                self.lose(s.index, "lost with its node")
                s.retired = True
                await stop(self.stops, f"executor {s.index}", s.handle, "its node left the cluster: retired",
                           restart=False)
        if nodes:
            self._cover(nodes)
        return resumed

    def _cover(self, nodes: dict[str, dict[str, Any]]) -> None:
        serving = self.serving()
        if self.config.executors:
            # A fixed number: replace the retired ones on the alive nodes, fewest first.
            load = {n: sum(1 for s in serving if s.node == n) for n in nodes}
            for _ in range(self.config.executors - len(serving)):
                node = min(load, key=load.__getitem__)
                self.add(node)
                load[node] += 1
            return
        covered = {s.node for s in serving}
        for node, info in nodes.items():
            if node not in covered:
                log.info("node %s joined: starting its executors", node)
                for _ in range(executors_for(info)):
                    self.add(node)


def take_acks(slot: Any) -> list[Key]:
    """The acknowledgements due to an executor's or heavy worker's slot, to send now (put
    back in ``slot.acks`` if the call carrying them fails)."""
    acks: list[Key] = slot.acks
    slot.acks = []
    return acks


async def ping(slot: Any, timeout_s: float) -> Ping | None:
    """An executor's or heavy worker's (incarnation, runs held, node, loop lag ms), or None
    when it does not answer in time. The call carries the slot's acknowledgements (results
    of its submit answers now stored); they are kept for the next call if it fails."""
    acks = take_acks(slot)
    try:
        return Ping(*await asyncio.wait_for(slot.handle.ping.remote(acks or None), timeout_s))
    except Exception:
        slot.acks.extend(acks)
        return None


def executors_for(node: dict[str, Any]) -> int:
    """Light executors a node gets (``executors=0``): one per CPU, at least one."""
    return max(1, int(node["Resources"].get("CPU", 1)))
