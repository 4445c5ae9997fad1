"""How the SchedulerActor talks to the chain coordinators (or, with
``chain_coordinators=0``, runs the coordinator rules in-process): step outcomes go out
batched per coordinator (``coordinator_index`` of the chain id), promotions and cascades
come back as actions for the core. A mixin of SchedulerActor (scheduler.py): the
attributes below are the actor's."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kmpray.chain_coordination import ChainCoordinatorCore, Message, coordinator_index
from kmpray.config import EngineConfig
from kmpray.engine import SchedulerCore
from kmpray.protocol import UNFINISHED, chain_answer, chain_from_wire, chain_to_wire

from .background import background
from .chain_coordinator import ChainCoordinator
from .names import CHAIN
from .outbox import Outbox
from .retry import call_with_retry
from .waiters import Waiters


class SchedulerChains:
    namespace: str
    config: EngineConfig
    core: SchedulerCore
    waiters: Waiters
    _ready: asyncio.Future[None]
    _coordinators: list[Any]
    _chain_outboxes: list[Outbox[Message]]
    _local_chains: ChainCoordinatorCore | None
    _resyncing: dict[int, float]
    _idle: asyncio.Event

    if TYPE_CHECKING:  # SchedulerDispatch's
        def _pump(self) -> None: ...

    #: The pool's actors wait for the first chain (see _start_chains).
    _coordinators_deferred = False

    def _start_chains(self) -> None:
        pool = self.config.chain_coordinators
        if pool == 0:
            self._local_chains = ChainCoordinatorCore()
            local = self._local_chains
            self.core.chain_actions(local.resync(self.core.chain_snapshot(0, 1), local.mark()))
        elif self.core.chains:  # restored chains: their coordinators (a restarted scheduler finds them alive)
            self._spawn_coordinators()
        else:
            # Started with the first chain: a process each (~0.7 s of CPU to start, ~100 MB
            # here), which an engine that never runs a chain does without, and which every
            # connect() spent while its caller's first calls ran.
            self._coordinators_deferred = True

    def _spawn_coordinators(self) -> None:
        pool = self.config.chain_coordinators
        # Created after the executors (Ray starts few processes at once; nothing waits for a
        # coordinator at start), on this node.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._coordinators = [
            ChainCoordinator.options(  # type: ignore[attr-defined]
                name=CHAIN.format(i), namespace=self.namespace, lifetime="detached", get_if_exists=True,
                scheduling_strategy=here,
            ).remote(self.namespace, i, pool)
            for i in range(pool)
        ]
        self._chain_outboxes = [
            Outbox(
                lambda batch, h=handle: h.handle.remote(chain_to_wire(batch)),
                f"chain coordinator {i}",
                lambda actions, _batch: self._chain_actions(chain_from_wire(actions)),
            )
            for i, handle in enumerate(self._coordinators)
        ]

    def _resync_coordinators(self) -> None:
        """Messages to the coordinators that were in flight when this scheduler (re)started
        are gone: each rebuilds its plans from this scheduler's rows (harmless at first start)."""
        for handle in self._coordinators:
            background(call_with_retry(lambda h=handle: h.resync.remote(), timeout_s=120),
                       "asking a chain coordinator to resync")

    def _to_coordinators(self, msgs: list[Message]) -> None:
        if not self._coordinators:
            if not self._coordinators_deferred:
                return  # not started yet: the coordinators resync from the rows at start
            # The first chain: its messages wait in the outboxes while the processes start.
            # Each also resyncs once up (the scheduler exists): the same meeting of a
            # snapshot and messages as a coordinator restarted mid-chain, and harmless.
            self._coordinators_deferred = False
            self._spawn_coordinators()
        pool = len(self._coordinators)
        for msg in msgs:
            self._chain_outboxes[coordinator_index(msg.chain_id, pool)].add((msg,))

    def _chain_actions(self, actions: list[Message]) -> None:
        """What chain messages imply: a coordinator's reply, or the in-process rules' answer.
        (A coordinator down for good resyncs from this scheduler when it restarts.)"""
        if actions:
            self.core.chain_actions(actions)
            self._pump()

    async def chain_actions(self, actions: list[list[Any]]) -> None:
        """From a chain coordinator: promote a step (with its merged data) or cascade
        (``chain_to_wire``'s lists)."""
        await self._ready
        self.core.chain_actions(chain_from_wire(actions))
        self._pump()

    async def chain_snapshot(self, index: int, pool: int, ids: list[str] | None = None) -> dict[str, Any]:
        """For coordinator ``index``'s resync; its actions follow in a call of their own,
        then ``resynced``: virtual time waits for them (``_resyncing``)."""
        await self._ready
        self._resyncing[index] = time.monotonic()
        return self.core.chain_snapshot(index, pool, ids)

    async def resynced(self, index: int) -> None:
        """Coordinator ``index`` delivered what its last snapshot implied (or nothing)."""
        self._resyncing.pop(index, None)
        self._idle.set()  # advance_time's settle looks again

    async def wait_chain(self, chain_id: str, timeout_s: float | None) -> bytes | str | None:
        """Until the chain is finished, at most ``timeout_s``: then its ChainInfo
        (``chain_answer``), else ``UNFINISHED`` (the client asks again), or None when no
        chain has the id."""
        await self._ready
        if chain_id not in self.core.chains:
            return None
        if not self.core.is_settled(chain_id) and timeout_s != 0:
            await self.waiters.wait(chain_id, 0, timeout_s)
        if not self.core.is_settled(chain_id):
            return UNFINISHED
        return chain_answer(self.core.chain_info(chain_id))
