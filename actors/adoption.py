"""A restarted scheduler adopts the runs its predecessor handed out: executors and heavy
workers say which runs they hold (running, queued, or finished but not reported), and
those stay RUNNING under their run id (``SchedulerCore.adopt``), so their reports count
and nothing runs a second time."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray

from kmpray.engine import SchedulerCore
from kmpray.protocol import Holding

from .executor_pool import ExecutorPool
from .heavy_pool import HeavyPool
from .names import HEAVY

log = logging.getLogger("kmpray.scheduler")


async def adopt_held_runs(core: SchedulerCore, pool: ExecutorPool, heavy: HeavyPool, namespace: str) -> None:
    """Restarted: runs the previous scheduler left on executors and heavy workers
    stay theirs (their reports count) instead of running a second time."""
    holders: list[tuple[int | None, int, Any]] = [(s.index, -1, s.handle) for s in pool.slots]
    for slot_index in range(len(heavy.slots)):
        try:
            handle = await asyncio.to_thread(ray.get_actor, HEAVY.format(slot_index), namespace)
        except ValueError:
            continue  # never started, or retired
        holders.append((None, slot_index, handle))
    timeout_s = pool.config.ping_timeout_s
    answers = await asyncio.gather(*(_holding(h, pool.epoch, timeout_s) for *_, h in holders))
    where: dict[tuple[str, int], tuple[int | None, int]] = {}
    waiting: set[tuple[str, int]] = set()
    incarnations: dict[int, str] = {}
    for (i, slot_index, handle), answer in zip(holders, answers, strict=True):
        if i is None:
            heavy.found(slot_index, handle, answer)  # found again: its warm state kept
        elif answer is not None:
            # The process that holds them: one whose start ping timed out (a blocked loop)
            # answered here all the same, and its death must still count for its runs.
            incarnations[i] = answer.incarnation
            if pool.slots[i].incarnation is None:
                pool.slots[i].incarnation = answer.incarnation
        for key in answer.held if answer else ():
            where[(key[0], key[1])] = (i, slot_index)
        for key in answer.waiting if answer else ():
            waiting.add((key[0], key[1]))
    adopted = core.adopt(where, waiting)
    for key in adopted:
        i, slot_index = where[key]
        if i is not None:
            pool.held(i, key, incarnations[i])
        else:
            heavy.adopted(slot_index, key)
    if adopted:
        log.warning("restarted: %d runs still on executors are kept, not run again", len(adopted))

async def _holding(handle: Any, epoch: str, timeout_s: float) -> Holding | None:
    """What ``handle`` holds; from then on it refuses batches of earlier schedulers."""
    try:
        return Holding(*await asyncio.wait_for(handle.holding.remote(epoch), timeout_s))
    except Exception:
        # Unreachable: it answers off its event loop (executor.py CONTROL), so a dead or
        # wholly stalled process. What it holds runs again.
        return None
