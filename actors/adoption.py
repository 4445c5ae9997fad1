"""A restarted scheduler adopts the runs its predecessor handed out: executors and heavy
workers say which runs they hold (running, queued, or finished but not reported), and
those stay RUNNING under their run id (``SchedulerCore.adopt``), so their reports count
and nothing runs a second time. A light executor of the dead scheduler's that answers
neither the start's ping nor the question (a heavy worker: the question) is killed
before its runs go elsewhere (``_put_down``). A held run not adopted (its task ended, or
runs again elsewhere) is stopped as a cancel stops one (``_stop_stale``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import ray

from kmpray.engine import SchedulerCore
from kmpray.protocol import Done, Holding, RunKey
from kmpray.timing import CANCEL_ACK_TIMEOUT_S

from .awake import wait_awake
from .background import background
from .executor_pool import ExecutorPool
from .heavy_pool import HeavyPool
from .names import HEAVY
from .stops import Stops, stop

log = logging.getLogger("kmpray.scheduler")


async def adopt_held_runs(
    core: SchedulerCore, pool: ExecutorPool, heavy: HeavyPool, namespace: str, restarted: bool,
    spooled: Iterable[Done] = (),
) -> None:
    """Restarted: runs the previous scheduler left on executors and heavy workers
    stay theirs (their reports count) instead of running a second time. ``restarted``:
    Ray restarted this scheduler (its executors are its predecessor's). ``spooled``:
    results a process wrote to the spool (actors/spool.py), their runs adopted too, so the
    results the caller applies next count."""
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
            if answer is None and restarted:  # stalled, or still waiting for a node (no harm: Ray asks again)
                await _put_down(heavy.stops, f"heavy worker {slot_index}", handle, timeout_s)
            heavy.found(slot_index, handle, answer)  # its warm state kept (killed: takes runs once back)
        elif answer is not None:
            # The process that holds them: one whose start ping timed out (a blocked loop)
            # answered here all the same, and its death must still count for its runs.
            incarnations[i] = answer.incarnation
            if pool.slots[i].incarnation is None:
                pool.slots[i].incarnation = answer.incarnation
        elif restarted and not pool.slots[i].reachable:
            await _put_down(pool.stops, f"executor {i}", handle, timeout_s)
        for key in answer.held if answer else ():
            where[(key[0], key[1])] = (i, slot_index)
        for key in answer.waiting if answer else ():
            waiting.add((key[0], key[1]))
    for d in spooled:  # a live process that holds it too keeps it (its report counts once)
        where.setdefault((d.key, d.run_id), (None, -1))
    adopted = core.adopt(where, waiting)
    for key in adopted:
        i, slot_index = where[key]
        if i is not None:
            pool.held(i, key, incarnations[i])
            if pool.slots[i].probation:  # a suspect alone on a probation executor taken over
                pool.alone[i] = key
        elif slot_index >= 0:
            heavy.adopted(slot_index, key)
    if adopted:
        log.warning("restarted: %d runs still on executors are kept, not run again", len(adopted))
    kept = set(adopted)
    # Held by a live process and not adopted (a result only spooled has no process to stop).
    stale = {key: at for key, at in where.items() if key not in kept and at != (None, -1)}
    for task, run_id in stale:
        core.note(task, f"run {run_id}, still held after a scheduler restart, stopped: its task ended or "
                       "runs again elsewhere, so its result would not count")
    await _stop_stale(pool, heavy, stale)


async def _stop_stale(
    pool: ExecutorPool, heavy: HeavyPool, stale: dict[RunKey, tuple[int | None, int]]
) -> None:
    """Held runs not adopted: their tasks ended (a cancel or a REPLACE stored just before
    the crash, its word to the executor lost with the process; a result stored whose answer
    was lost), or a later run of theirs is out. Their reports are ignored, so they are
    stopped as a cancel stops a run: not left to run on, with side effects after an
    acknowledged cancel, in a slot the pool takes for free. As ``cancel()`` does, this
    waits (bounded) until each heavy worker and each light executor that answers pings
    has the stop, so a ``cancel()`` retried across the restart returns after it (a run not
    begun never begins there after that); a heavy run's stop is cooperative, then forced,
    as a heavy cancel always is; an executor whose loop is blocked (its ping unanswered)
    takes the stop when it runs again, and is not waited for."""
    by_executor: dict[int, list[RunKey]] = {}
    waits = []
    for key, (i, slot_index) in stale.items():
        if i is not None:
            by_executor.setdefault(i, []).append(key)
        elif slot_index >= 0 and heavy.slots[slot_index].run is None:
            heavy.adopted(slot_index, key)  # held there until stopped (cooperative, then forced)
            if (told := heavy.cancel(key)) is not None:
                waits.append(_tell(told, f"heavy worker {slot_index}"))
        elif slot_index >= 0:  # beside a run adopted there (one finished, not reported): told only
            told = heavy.slots[slot_index].handle.cancel.remote([key])
            waits.append(_tell(told, f"heavy worker {slot_index}"))
    for i, keys in by_executor.items():
        told = _tell(pool.slots[i].handle.cancel.remote(keys), f"executor {i}")
        if pool.slots[i].reachable:
            waits.append(told)
    if waits:
        await wait_awake(waits, CANCEL_ACK_TIMEOUT_S)  # (as cancel()'s: actors/awake.py)
    if stale:
        log.warning("restarted: %d runs held for tasks that ended or run again elsewhere are stopped",
                    len(stale))


def _tell(ref: Any, what: str) -> asyncio.Future[None]:
    """A stop sent; done when answered (or failed: logged, never raised)."""
    return background(_told(ref, what), what)


async def _told(ref: Any, what: str) -> None:
    try:
        await ref
    except Exception as exc:  # died meanwhile: its runs are gone with it, and re-queued as such
        log.info("restarted: %s did not take a stop of runs no scheduler takes the results of (%s)",
                 what, exc)


async def _put_down(stops: Stops, what: str, handle: Any, timeout_s: float) -> None:
    """A light executor of the dead scheduler's that answered neither the start's ping nor
    the question, each within ``ping_timeout_s`` (a heavy worker, which has no start ping:
    the question): dead, or wholly stalled (a stopped process, a paused VM, a C call
    holding the GIL); a heavy worker may also still wait for a node (killed, it waits
    again: no harm). The question is answered off the event loop, so a worker blocking the
    loop is not this. What it holds runs again elsewhere; a stalled process would finish
    those runs too once it resumed (executed twice). So it is killed now, and Ray starts it
    again: a stopped process is gone within ~5 s here (measured: ``ray.kill`` of a
    SIGSTOPped actor), having run nothing more. Calls to it meanwhile raise
    ``ActorUnavailableError`` (heavy_pool.py's ``_await`` asks again)."""
    log.warning("restarted: %s did not say what it holds within %.0f s: killed (Ray restarts it), so the "
                "runs it may hold, which run again elsewhere, cannot also finish there", what, timeout_s)
    await stop(stops, what, handle, f"answered no restarted scheduler within {timeout_s:g} s: killed (Ray "
               "restarts it), so runs it may hold, which run again elsewhere, cannot also finish there",
               restart=True)


async def _holding(handle: Any, epoch: str, timeout_s: float) -> Holding | None:
    """What ``handle`` holds; from then on it refuses batches of earlier schedulers."""
    try:
        return Holding(*await asyncio.wait_for(handle.holding.remote(epoch), timeout_s))
    except Exception:
        # Unreachable: it answers off its event loop (executor.py CONTROL), so a dead or
        # wholly stalled process. What it holds runs again.
        return None
