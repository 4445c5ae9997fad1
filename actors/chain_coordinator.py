"""ChainCoordinator: a small pool of actors, each owning the plans of the chains hashed to it.

The scheduler owns task states; a coordinator owns what happens between a chain's steps:
the step barrier (BLOCKED -> ENQUEUED promotion), data passing (each task's prerequisites'
``Success.data`` merged by its merger), and failure/cancel cascades. The scheduler sends
it "plan" and "step finished" messages; it answers with "promote"/"cascade" actions.

Durable by construction: everything a plan knows is in the scheduler's task rows (states
and outputs, persisted per step), so a restarted coordinator, or one whose scheduler
restarted, resyncs from a snapshot. Its state only grows and the scheduler applies an
action only to tasks still BLOCKED/unfinished of that chain generation, so re-sent
actions and late duplicate messages are harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import ray

from kmpray.chain_coordination import ChainCoordinatorCore, Message
from kmpray.protocol import chain_from_wire, chain_to_wire
from kmpray.timing import RESYNC_S

from .background import background
from .names import SCHEDULER, lookup, named
from .outbox import Outbox
from .retry import call_with_retry, said
from .untraced import untrace

log = logging.getLogger("kmpray.chains")



@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1000)
class ChainCoordinator:
    def __init__(self, namespace: str, index: int, pool: int) -> None:
        untrace(self)  # its own calls without Ray's tracing shim (actors/untraced.py)
        self.namespace = namespace
        self.index = index
        self.pool = pool
        self.core = ChainCoordinatorCore()
        self._actions: Outbox[Message] = Outbox(
            lambda actions: self._sched().chain_actions.remote(chain_to_wire(actions)),
            f"coordinator {index}: actions to the scheduler",
        )
        self._scheduler: Any = None
        self.handled = 0
        self.resyncs = 0
        self.checks = 0  # periodic checks of quiet plans (check_quiet)
        background(self._resync_after_restart(), f"coordinator {index}: its resync after a restart")
        background(self._housekeeping(), f"coordinator {index}: its housekeeping loop")

    async def _resync_after_restart(self) -> None:
        try:
            named(SCHEDULER, self.namespace)
        except ValueError:
            return  # a fresh engine: the scheduler does not exist yet, there is nothing to resync
        try:
            await self.resync()
        except Exception as exc:
            if (why := said(exc)) is not None:  # e.g. the engine was stopped meanwhile: one line
                log.warning("coordinator %d: resync after restart not done: %s", self.index, why)
            else:
                log.exception("coordinator %d: resync after restart failed", self.index)

    def _sched(self) -> Any:
        if self._scheduler is None:
            self._scheduler = lookup(SCHEDULER, self.namespace)
        return self._scheduler

    async def handle(self, messages: list[list[Any]]) -> list[list[Any]]:
        """From the scheduler: chains accepted, chain tasks finished (in order). The actions
        they imply go back as the reply: one round trip per step, not two. (A reply lost to
        a scheduler restart is re-sent by the resync every scheduler start triggers.) Both
        ways as ``chain_to_wire``'s lists."""
        self.handled += len(messages)
        return chain_to_wire(self.core.apply(chain_from_wire(messages)))

    async def resync(self) -> int:
        """Rebuild from the scheduler's view of the unfinished chains this coordinator owns."""
        held = await self._merge_snapshot(None)
        self.resyncs += 1
        return held

    async def check_quiet(self, since: int) -> int:
        """Resync only the plans that heard nothing since ``since`` (a mark): drops those
        of chains that finished where this coordinator could not see it, and re-sends what
        they wait for. Returns how many were asked about."""
        quiet = self.core.quiet_since(since)
        if not quiet:
            return 0
        await self._merge_snapshot(quiet)
        self.checks += 1
        return len(quiet)

    async def _merge_snapshot(self, ids: list[str] | None) -> int:
        """The scheduler's view of this coordinator's unfinished chains (of ``ids`` only,
        when given), merged into the plans; the actions it implies go back. Returns how
        many chains the snapshot held."""
        scheduler = self._sched()
        asked_at = self.core.mark()
        snapshot = await call_with_retry(
            lambda: scheduler.chain_snapshot.remote(self.index, self.pool, ids), 120)
        try:
            self._actions.add(self.core.resync(snapshot, asked_at, ids))
            await self._actions.delivered(120)
        finally:  # virtual time's advance_time waits for this (actors/virtual_time.py)
            with contextlib.suppress(Exception):
                await scheduler.resynced.remote(self.index)
        return len(snapshot)

    async def _housekeeping(self) -> None:
        """Every RESYNC_S: check the plans quiet for a whole round. Session 16: this was a
        whole resync, a pass over every chain the scheduler holds and a snapshot of every
        unfinished one (~120 ms of its thread and a 3 MB answer at 25,000 unfinished
        chains per coordinator, every 30 s per coordinator); a chain that moves is not in
        question, so only the quiet ones are asked about, by id."""
        since = self.core.mark()
        while True:
            await asyncio.sleep(RESYNC_S)
            mark = self.core.mark()
            try:
                await self.check_quiet(since)
            except Exception:
                log.exception("coordinator %d: periodic check failed", self.index)
            since = mark

    def stats(self) -> dict[str, int]:
        return {"plans": len(self.core.plans), "handled": self.handled, "resyncs": self.resyncs,
                "checks": self.checks}
