"""Virtual time: ``advance_time(ms)`` steps the engine's clock through every due time up
to the target, settling the runs each step hands out before the next (so a periodic
task runs once per period, in order, however far time jumps). A mixin of
SchedulerActor (scheduler.py): the attributes below are the actor's."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from kmpray.chain_coordination import Message
from kmpray.clock import ManualClock, SystemClock
from kmpray.config import EngineConfig
from kmpray.driver import step_through
from kmpray.engine import SchedulerCore
from kmpray.errors import VirtualTimeOnly
from kmpray.store import SqliteTaskStore
from kmpray.timing import RESYNC_WAIT_S, SETTLE_POLL_S

from .executor_pool import ExecutorPool
from .heavy_pool import HeavyPool
from .outbox import Outbox

log = logging.getLogger("kmpray.scheduler")


class VirtualTime:
    clock: ManualClock | SystemClock
    config: EngineConfig
    core: SchedulerCore
    store: SqliteTaskStore
    pool: ExecutorPool
    heavy: HeavyPool
    _idle: asyncio.Event
    _advancing: asyncio.Lock
    _ready: asyncio.Future[None]
    _events: Outbox[tuple[int | None, bytes]]
    _chain_outboxes: list[Outbox[Message]]
    _resyncing: dict[int, float]

    if TYPE_CHECKING:  # SchedulerDispatch's
        def _pump(self) -> None: ...

    async def advance_time(self, ms: int) -> int:
        """Move virtual time forward, firing and settling every due run in order. Calls made
        at once (two threads, an asyncio.gather) take turns, each moving the clock its own
        ``ms`` from where the one before left it: before session 42 the second began from
        the first's stop while that one settled, so two advances of 1,000 ms moved 1,500."""
        await self._ready
        if not isinstance(self.clock, ManualClock):
            raise VirtualTimeOnly("advance_time needs connect(virtual_time=True)")
        async with self._advancing:
            return await self._advance(ms)

    async def _advance(self, ms: int) -> int:
        deadline = time.monotonic() + self.config.settle_timeout_s
        for _instant in step_through(self.core, self.clock, ms):
            self._pump()
            await self._settle(deadline)
        self.core.warn_long_waits()
        self.store.put_meta("virtual_now", self.clock.now_ms())
        # The settled runs' events (completions and progress) reach the broker before this
        # returns, so a subscriber (a test, the demo) sees them at once instead of up to an
        # event linger and a call later: what virtual time is for is a run one can reason about.
        if not await self._events.delivered(max(0.0, deadline - time.monotonic())):
            log.warning("advance_time: events not delivered to the broker by the settle timeout")
        return self.clock.now_ms()

    async def _settle(self, deadline: float) -> None:
        """Until no run is in flight or ready and no chain message is on its way to a
        coordinator: a step's success promotes the next step only through its coordinator's
        answer (which pumps what it made ready), so until session 45 ``advance_time``
        returned with a chain's later steps still BLOCKED whenever a step ran alone (a
        parallel step, a gated one), and the state after the call depended on timing.
        Nor while a coordinator resyncs (``_resyncing``): the engine's first chain starts
        the coordinators, and their first snapshot may promote its step before (or
        instead of) the reply does (1 to 2 fresh engines in 25 were left so)."""
        while True:
            runs = bool(self.pool.where or self.heavy.where or self.core.ready_count())
            chains = [outbox for outbox in self._chain_outboxes if outbox.busy]
            # A coordinator's resync (its first start, with the engine's first chain) answers
            # in a call of its own, not as a reply: it too may promote a step.
            since = time.monotonic() - RESYNC_WAIT_S
            resyncing = any(at > since for at in self._resyncing.values())
            if not runs and not chains and not resyncing:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("advance_time: %d runs still in flight, %d chain coordinators not answered after "
                            "the settle timeout", len(self.pool.where), len(chains))
                return
            if not runs and chains:  # the coordinators' answers are outstanding
                for outbox in chains:
                    await outbox.delivered(min(remaining, SETTLE_POLL_S))
                continue
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), min(remaining, SETTLE_POLL_S))
            except TimeoutError:
                self._pump()
