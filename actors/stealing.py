"""Runs queued on a busy executor go to one with free slots (work stealing).

An executor takes up to ``executor_window`` runs (256) for ``executor_concurrency`` slots
(64), so the round trip hides under load; the runs beyond its slots queue there, first in,
first out. When its slots are held by long runs, those queued runs wait for them, however
idle the other executors are: 14 short tasks enqueued after 2 long ones on two executors
of 2 slots finished 8 s late, the second executor idle all that time (session 42's tour;
Celery's prefetch has the same trap). The scheduler now asks such an executor to hand back
queued runs that have not begun, once they have waited ``STEAL_AFTER_S`` while another
executor has free slots and nothing waits in the ready queue, and re-queues what it gets
(not counted as attempts). The executor decides under its begin lock (``hand_back``): a run
either begins there or comes back, never both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from kmpray.timing import STEAL_AFTER_S, STEAL_CHECK_S

if TYPE_CHECKING:
    from kmpray.engine import SchedulerCore

    from .executor_pool import ExecutorPool, ExecutorSlot

log = logging.getLogger("kmpray.scheduler")

Key = tuple[str, int]


class Stealer:
    def __init__(self, pool: ExecutorPool, core: SchedulerCore, kick: Any, now_ms: Any) -> None:
        self.pool, self.core, self._kick, self._now_ms = pool, core, kick, now_ms
        self.concurrency = pool.config.executor_concurrency
        self._seen: dict[Key, float] = {}  # queued, not begun: first seen then (monotonic)
        self._asking: set[int] = set()  # executors asked, their answer not in yet
        self._last = 0.0
        self._again: asyncio.TimerHandle | None = None
        self._asks: set[asyncio.Future[None]] = set()  # held: the loop keeps only weak references
        self.stolen = 0  # runs handed back and re-queued (status)

    def check(self) -> None:
        """After a pump turn: cheap when there is nothing to steal (runs wait in the ready
        queue, no executor has free slots, or none has runs queued beyond its slots)."""
        now = time.monotonic()
        if now - self._last < STEAL_CHECK_S:
            self._later(STEAL_CHECK_S - (now - self._last))  # the turn that frees slots may be the last
            return
        self._last = now
        pool = self.pool
        serving = [s for s in pool.serving() if pool._usable(s) and s.index not in pool.alone]
        spare = sum(max(0, self.concurrency - len(s.inflight)) for s in serving)
        if not spare or self.core.ready_count() > self.core.heavy_ready_count():
            return  # (what was seen queued stays seen: its wait goes on counting)
        busy = [s for s in serving if len(s.inflight) > self.concurrency and s.index not in self._asking]
        if not busy:
            self._seen.clear()
            return
        # Where the free slots are: a run that may use none of those nodes (its constraints
        # gate it to busy ones) stays queued where it is; taken back, it only waited unplaced.
        free_nodes = {s.node for s in serving if len(s.inflight) < self.concurrency}
        seen, due_ms, wait = {}, self._now_ms(), None
        for slot in busy:
            ripe: list[Key] = []
            for key in reversed(slot.inflight):  # the back of its queue: the last to begin there
                if not self._movable(slot, key, due_ms, free_nodes):
                    continue
                seen[key] = first = self._seen.get(key, now)
                if now - first >= STEAL_AFTER_S:
                    ripe.append(key)
                else:
                    left = STEAL_AFTER_S - (now - first)
                    wait = left if wait is None else min(wait, left)
            take = ripe[: min(len(slot.inflight) - self.concurrency, spare)]
            if take:
                spare -= len(take)
                self._asking.add(slot.index)
                ask = asyncio.ensure_future(self._ask(slot, take))
                self._asks.add(ask)
                ask.add_done_callback(self._asks.discard)
            if not spare:
                break
        self._seen = seen
        if wait is not None:  # no pump turn may come: look again then
            self._later(wait)

    def _later(self, after_s: float) -> None:
        if self._again is None:
            self._again = asyncio.get_running_loop().call_later(after_s, self._look_again)

    def _look_again(self) -> None:
        self._again = None
        self.check()

    def _movable(self, slot: ExecutorSlot, key: Key, now_ms: int, free_nodes: set[str | None]) -> bool:
        """Taken by the executor's process, not begun as far as the scheduler knows, due now
        (a timed run waits there for its time), not begun there by its predecessor, and
        allowed on a node with a free slot (its gating constraints, device triggers, Doze:
        ``eligible_nodes``; None: anywhere)."""
        if slot.inflight.get(key) is None or key in slot.handed:
            return False
        rec = self.core.tasks.get(key[0])
        if rec is None or rec.run_id != key[1] or rec.started or (rec.next_run_at_ms or 0) > now_ms:
            return False
        nodes = self.core.eligible_nodes(rec)
        return nodes is None or any(node in free_nodes for node in nodes)

    async def _ask(self, slot: ExecutorSlot, keys: list[Key]) -> None:
        try:
            given = await slot.handle.hand_back.remote(keys)
        except Exception as exc:  # dead or restarting: the reconcile settles its runs
            log.debug("executor %d: hand_back failed (%s)", slot.index, type(exc).__name__)
            return
        finally:
            self._asking.discard(slot.index)
        back = [(k[0], k[1]) for k in given if (k[0], k[1]) in slot.inflight]
        self.pool.requeue(slot, back)  # not counted as attempts
        if back:
            self.stolen += len(back)
            log.info("executor %d: %d queued runs behind its busy slots go to executors with free ones",
                     slot.index, len(back))
            self._kick()
