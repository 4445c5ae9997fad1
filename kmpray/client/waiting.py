"""Waiting on tasks and chains: bounded long-polls to the scheduler, or one progress bar
over many ids fed by the event stream (``BackgroundTaskScheduler.wait``)."""

from __future__ import annotations

import time
from typing import Any

from ..errors import KmprayError
from ..models import ChainInfo, TaskInfo
from ..timing import CALL_TIMEOUT_S, WAIT_CHUNK_S
from ..triggers import EVENT_TRIGGER_KINDS


class TaskNotFound(KmprayError, KeyError):
    """No task or chain with that id."""


class Waiting:
    """The waiting half of the facade (it supplies ``_call``, ``events`` and the reads)."""

    _call: Any
    _call_async: Any
    _home: Any  # the scheduler shard that holds an id (facade)
    events: Any
    get_task_info: Any
    get_task_info_async: Any
    get_chain_info: Any

    @staticmethod
    def _wait_call(id: str, first: TaskInfo | None, chunk: float) -> tuple[Any, ...]:  # noqa: A002
        """The scheduler call for one bounded round of waiting on a task or (no task) a chain."""
        return ("wait_chain", id, chunk) if first is None else ("wait", id, chunk, first.run_count)

    @staticmethod
    def _done(id: str, first: TaskInfo | None, raw: dict[str, Any] | None) -> TaskInfo | ChainInfo | None:  # noqa: A002
        """The info if that round found ``id`` done, else None: finished, or for a periodic or
        event-triggered task, a run that ended after ``first``."""
        if raw is None:
            raise TaskNotFound(f"no task or chain {id!r}")
        if first is None:
            chain = ChainInfo.model_validate(raw)
            return chain if chain.state.is_finished else None
        info = TaskInfo.model_validate(raw)
        recurred = info.run_count > first.run_count and _recurs(info)
        return info if info.state.is_finished or recurred else None

    @staticmethod
    def _chunk(deadline: float | None) -> float:
        """How long the next round may wait: 0 once the deadline has passed (a last look)."""
        return WAIT_CHUNK_S if deadline is None else max(0.0, min(WAIT_CHUNK_S, deadline - time.monotonic()))

    @staticmethod
    def _expired(id: str, deadline: float | None) -> None:  # noqa: A002
        """After a round that found ``id`` unfinished: raise if the time is up. Every wait
        looks at least once, so a finished task is returned even with ``timeout_s=0``."""
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"{id!r} not finished in time")

    def _poll_done(self, id: str, first: TaskInfo | None) -> TaskInfo | ChainInfo | None:  # noqa: A002
        """The info if ``id`` is done now (no waiting), else None."""
        return self._done(id, first, self._call(*self._wait_call(id, first, 0), shard=self._home(id)))

    def _wait_with_bar(self, ids: list[str], deadline: float | None) -> list[Any]:
        """One tqdm bar over every id (100 % each): a task moves with its progress events,
        a chain with its finished tasks, its steps shown as ``✓ ✓ 2/3 · ·``."""
        from tqdm.auto import tqdm

        from ..display import chain_progress

        sub = self.events.subscribe()
        firsts = {i: self.get_task_info(i) for i in ids}
        done: dict[str, Any] = {}
        pct = dict.fromkeys(ids, 0)
        bar = tqdm(total=100 * len(ids), desc="kmpray", unit="%")
        chains = {i for i in ids if firsts[i] is None}
        chain_of: dict[str, str] = {}  # chain task id -> chain id (progress events carry no chain)
        drawn: dict[str, float] = {}  # chain id -> when its steps were last fetched
        try:
            for c in chains:
                self._chain_bar(c, bar, pct, chain_of)
            check = set(ids)
            while len(done) < len(ids):
                for i in check - done.keys():
                    info = self._poll_done(i, firsts[i])
                    if info is not None:
                        done[i] = info
                        bar.update(100 - pct[i])
                        pct[i] = 100
                        if i in chains:
                            bar.set_postfix_str(f"{i}: {chain_progress(info)[1]}"[:60])
                check = set()
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{len(ids) - len(done)} of {len(ids)} not finished in time")
                event = sub.get(timeout_s=0.5)
                if event is None:
                    check = set(ids)  # nothing heard: look at everything once more
                    continue
                owner = event.task_id if event.task_id in pct else getattr(event, "chain_id", None)
                if owner is None and event.task_id is not None:  # a chain task's progress names no chain
                    owner = chain_of.get(event.task_id)
                if owner not in pct or owner in done:
                    continue
                if owner in chains:  # a chain: its steps on the bar, redrawn at most 4 times a second
                    if time.monotonic() - drawn.get(owner, 0.0) > 0.25:
                        drawn[owner] = time.monotonic()
                        self._chain_bar(owner, bar, pct, chain_of)
                    if event.kind == "completion":
                        check = {owner}
                elif event.kind == "progress" and owner == event.task_id and event.progress > pct[owner]:
                    bar.update(event.progress - pct[owner])
                    pct[owner] = event.progress
                    bar.set_postfix_str(f"{owner}: {event.message or ''}"[:40])
                elif event.kind == "completion":
                    check = {owner}
        finally:
            bar.close()
            sub.close()
        return [done[i] for i in ids]

    def _chain_bar(self, chain_id: str, bar: Any, pct: dict[str, int], chain_of: dict[str, str]) -> None:
        """Move the bar by the chain's progress and show its steps (``✓ ✓ 2/3 · ·``)."""
        from ..display import chain_progress

        chain = self.get_chain_info(chain_id)
        if chain is None:
            return
        for step in chain.steps:
            for t in step:
                chain_of[t.id] = chain_id
        now, steps = chain_progress(chain)
        if now > pct[chain_id]:
            bar.update(now - pct[chain_id])
            pct[chain_id] = now
        bar.set_postfix_str(f"{chain_id}: {steps}"[:60])

    def _wait_one(self, id: str, deadline: float | None) -> TaskInfo | ChainInfo:  # noqa: A002
        first = self.get_task_info(id)
        while True:
            chunk = self._chunk(deadline)
            raw = self._call(*self._wait_call(id, first, chunk), timeout_s=chunk + CALL_TIMEOUT_S,
                             shard=self._home(id))
            if (done := self._done(id, first, raw)) is not None:
                return done
            self._expired(id, deadline)

    async def wait_async(self, id: str, timeout_s: float | None = None) -> TaskInfo | ChainInfo:  # noqa: A002
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        first = await self.get_task_info_async(id)
        while True:
            chunk = self._chunk(deadline)
            raw = await self._call_async(*self._wait_call(id, first, chunk), timeout_s=chunk + CALL_TIMEOUT_S,
                                         shard=self._home(id))
            if (done := self._done(id, first, raw)) is not None:
                return done
            self._expired(id, deadline)


def _recurs(info: TaskInfo) -> bool:
    kind = info.trigger.kind if info.trigger is not None else None
    return kind == "periodic" or kind in EVENT_TRIGGER_KINDS
