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
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kmpray.config import EngineConfig
from kmpray.engine import SchedulerCore
from kmpray.protocol import Fence, Ping, Run, RunKey
from kmpray.timing import BLOCKED_PING_TIMEOUT_S, PING_TIMEOUT_S

from .blocked_loops import BlockedLoops
from .executor import LightExecutor
from .names import EXECUTOR

log = logging.getLogger("kmpray.scheduler")

Key = RunKey


@dataclass(slots=True)
class ExecutorSlot:
    index: int
    handle: Any
    node: str | None  # where it runs, as its last ping said (its pinned node until then)
    incarnation: str | None = None
    inflight: dict[Key, None] = field(default_factory=dict)  # handed over, not reported yet
    reachable: bool = False  # answered its last ping: may be sent runs
    lag_ms: float = 0.0  # its event-loop lag at that ping
    batch_seq: int = 0  # batches sent under this scheduler's epoch
    retired: bool = False  # its node left the cluster: never used again


class ExecutorPool:
    def __init__(
        self, namespace: str, config: EngineConfig, core: SchedulerCore, blocked: BlockedLoops,
        kick: Callable[[], None],
    ) -> None:
        self.namespace = namespace
        self.config = config
        self.core = core
        self.blocked = blocked
        self._kick = kick  # wake the scheduler's loop (runs were re-queued)
        self.slots: list[ExecutorSlot] = []
        self.where: dict[Key, int] = {}  # run -> the executor holding it
        # Batches are numbered per executor under this scheduler's epoch, so a blocked
        # executor never begins a run withdrawn from it (see executor.py).
        self.epoch = uuid.uuid4().hex

    # ------------------------------------------------------------------ reads
    def serving(self) -> list[ExecutorSlot]:
        return [s for s in self.slots if not s.retired]

    def free(self) -> list[tuple[int, int]]:
        """(room, index) of every executor that may be sent runs now: it answered its last
        ping (one whose node died is pending forever), its loop is not blocked, and it
        holds fewer than ``executor_window`` runs."""
        limit = self.config.executor_window
        return [
            (limit - len(s.inflight), s.index)
            for s in self.slots
            if len(s.inflight) < limit and s.reachable and not s.retired and s.index not in self.blocked.light
        ]

    def nodes(self) -> list[str | None]:
        return [s.node for s in self.slots]

    def inflight_by_node(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.slots:
            if s.inflight and s.node is not None:
                out[s.node] = out.get(s.node, 0) + len(s.inflight)
        return out

    # ---------------------------------------------------------------- changes
    def add(self, node: str) -> int:
        i = len(self.slots)
        handle = LightExecutor.options(  # type: ignore[attr-defined]
            name=EXECUTOR.format(i),
            namespace=self.namespace,
            lifetime="detached",
            get_if_exists=True,
            # Hard: a soft affinity may land elsewhere and leave a node with no executor,
            # so runs gated to that node would have nowhere to go.
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        ).remote(self.namespace, i, self.config.model_dump())
        self.slots.append(ExecutorSlot(i, handle, node))
        return i

    async def start(self) -> None:
        for s in self.slots:
            s.incarnation, _running, s.node, s.lag_ms = await s.handle.ping.remote()
            s.reachable = True

    def held(self, i: int, key: Key) -> None:
        """A run executor ``i`` holds: handed over now, or adopted after a restart."""
        self.slots[i].inflight[key] = None
        self.where[key] = i

    def send(self, i: int, keys: list[Key], runs: list[Run]) -> Any:
        """Hand a batch to executor ``i``; returns the submit's ref (its incarnation)."""
        slot = self.slots[i]
        for key in keys:
            self.held(i, key)
        slot.batch_seq += 1
        return slot.handle.submit.remote(runs, Fence(self.epoch, slot.batch_seq))

    def reported(self, key: Key) -> None:
        i = self.where.pop(key, None)
        if i is not None:
            self.slots[i].inflight.pop(key, None)

    def cancel(self, keys: Iterable[Key]) -> None:
        by_executor: dict[int, list[Key]] = {}
        for key in keys:
            i = self.where.pop(key, None)
            if i is not None:
                self.slots[i].inflight.pop(key, None)
                by_executor.setdefault(i, []).append(key)
        for i, part in by_executor.items():
            self.slots[i].handle.cancel.remote(part)

    def lose(self, i: int, why: str, keys: list[Key] | None = None) -> None:
        """Re-queue executor ``i``'s runs (only ``keys`` of them, if given) still unreported."""
        inflight = self.slots[i].inflight
        lost = list(inflight) if keys is None else [k for k in keys if k in inflight]
        for key in lost:
            del inflight[key]
            self.where.pop(key, None)
            self.core.run_lost(*key)
        if lost:
            log.warning("executor %d %s: re-running %d runs", i, why, len(lost))
            self._kick()

    def withdraw(self, i: int, held: set[Key]) -> list[Key]:
        """Executor ``i``'s loop is blocked: every run there but ``held`` (begun, or ended
        with its report on the way) goes back to the queue, not counted as an attempt."""
        withdrawn = [key for key in self.slots[i].inflight if key not in held]
        for key in withdrawn:
            del self.slots[i].inflight[key]
            self.where.pop(key, None)
            self.core.run_lost(*key)
        return withdrawn

    # -------------------------------------------------------------- reconcile
    async def reconcile(self, nodes: dict[str, dict[str, Any]]) -> bool:
        """Runs on an executor that died or restarted are lost: run them again. Executors
        of a node that left the cluster are retired; a node that joined gets its own.
        Returns whether an executor serves again (the scheduler should dispatch)."""
        live = self.serving()
        # A blocked loop cannot answer (its watch thread said so): a short ping still sees a
        # restart or death, without holding up the whole round for the full timeout.
        answers = await asyncio.gather(*(
            ping(s.handle, BLOCKED_PING_TIMEOUT_S if s.index in self.blocked.light else PING_TIMEOUT_S)
            for s in live
        ))
        resumed = False
        for s, answer in zip(live, answers, strict=True):
            if answer is not None:
                incarnation, _running, s.node, s.lag_ms = answer
                if incarnation != s.incarnation:
                    self.lose(s.index, "restarted")  # a new process: what it had is gone
                    s.incarnation = incarnation
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
                try:
                    ray.kill(s.handle, no_restart=True)
                except Exception:
                    pass
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


async def ping(handle: Any, timeout_s: float) -> Ping | None:
    """An executor's or heavy worker's (incarnation, runs held, node, loop lag ms), or None
    when it does not answer in time."""
    try:
        return Ping(*await asyncio.wait_for(handle.ping.remote(), timeout_s))
    except Exception:
        return None


def executors_for(node: dict[str, Any]) -> int:
    """Light executors a node gets (``executors=0``): one per CPU, at least one."""
    return max(1, int(node["Resources"].get("CPU", 1)))
