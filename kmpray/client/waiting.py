"""Waiting on tasks and chains: bounded long-polls to the scheduler, or one progress bar
over many ids fed by the event stream (``BackgroundTaskScheduler.wait``)."""

from __future__ import annotations

import time
from typing import Any

from ..clock import deadline_after
from ..errors import KmprayError
from ..models import ChainInfo, TaskInfo
from ..protocol import UNFINISHED, chain_from_answer
from ..timing import CALL_TIMEOUT_S, WAIT_CHUNK_S
from ..triggers import EVENT_TRIGGER_KINDS
from .outputs import unpickled

#: The progress bar looks at the tasks events named at least this often (or every 0.25 s).
LOOK_BATCH = 1_000


class TaskNotFound(KmprayError, KeyError):
    """No task or chain with that id; ``refused``: what the engine answered when it refused
    an enqueue of that id, while it still remembers (its last 1,000 refusals per shard)."""

    def __init__(self, id: str, refused: str | None = None) -> None:  # noqa: A002
        self.id, self.refused = id, refused
        why = f"; its enqueue was refused: {refused}" if refused else ""
        super().__init__(f"no task or chain {id!r}{why}")

    def __str__(self) -> str:  # the message, not KeyError's repr of it
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:  # pickled (a Ray task raising it) with its id
        return type(self), (self.id, self.refused)


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
    def _done(id: str, first: TaskInfo | None, raw: Any) -> TaskInfo | ChainInfo | None:  # noqa: A002
        """The info if that round found ``id`` done, else None: finished, or for a periodic or
        event-triggered task, a run that ended after ``first``."""
        if raw is None:
            raise TaskNotFound(id)
        if first is None:
            if raw == UNFINISHED:
                return None
            chain = chain_from_answer(raw)
            return chain if chain is not None and chain.state.is_finished else None
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

    def _look(self, names: list[str], timeout_s: float, befores: dict[str, int]) -> dict[str, Any]:
        """Tasks, one ``wait_many`` call per shard: until all of them are finished or
        ``timeout_s`` (0: a look). Per name: its TaskInfo if finished (a recurring task: a
        run after its ``befores`` entry ended), else the run count to wait past, or None
        when no task has the name (a chain, or unknown). A name in ``befores`` was a task:
        no task under it now (replaced under its name and pruned) raises TaskNotFound."""
        by_shard: dict[int, list[str]] = {}
        for name in names:
            by_shard.setdefault(self._home(name), []).append(name)
        seen: dict[str, Any] = {}
        for shard, part in by_shard.items():
            answer = self._call("wait_many", part, timeout_s, [befores.get(n) for n in part],
                                timeout_s=timeout_s + CALL_TIMEOUT_S, shard=shard)
            seen.update(zip(part, unpickled([answer]), strict=True))
        gone = next((n for n in names if n in befores and seen[n] is None), None)
        if gone is not None:
            raise TaskNotFound(gone)
        return seen

    def _first_look(
        self, ids: list[str], timeout_s: float = 0
    ) -> tuple[dict[str, Any], dict[str, int], list[str]]:
        """``ids`` looked at once (or waited for up to ``timeout_s``): (the finished ones'
        infos, the unfinished tasks' run counts to wait past, the ids that are no task:
        chains, or unknown)."""
        done: dict[str, Any] = {}
        befores: dict[str, int] = {}
        others: list[str] = []
        for name, seen in self._look(list(dict.fromkeys(ids)), timeout_s, {}).items():
            if seen is None:
                others.append(name)
            elif isinstance(seen, int):
                befores[name] = seen
            else:
                done[name] = seen
        return done, befores, others

    def _wait_many(self, ids: list[str], deadline: float | None) -> list[Any]:
        """``wait([...])``: the tasks in one call per shard and round (two calls per id
        took 80 s for 20,000 tasks already finished), chains and unknown ids one by one
        (an unknown id raises TaskNotFound before anything is waited for)."""
        # One id: the first look already waits (a chain or an unknown id answers at once), so
        # a task not finished yet costs one call, not a look and then a wait. Several: a
        # look only, so that an unknown id among them raises before anything is waited for.
        done, befores, others = self._first_look(ids, self._chunk(deadline) if len(set(ids)) == 1 else 0)
        for name in others:
            done[name] = self._wait_one(name, deadline)
        while befores:
            chunk = self._chunk(deadline)
            for name, seen in self._look(list(befores), chunk, befores).items():
                if not isinstance(seen, int):
                    done[name] = seen
                    del befores[name]
            if befores and deadline is not None and time.monotonic() >= deadline:
                if len(befores) == 1:
                    self._expired(next(iter(befores)), deadline)
                raise TimeoutError(f"{len(befores)} of {len(set(ids))} not finished in time")
        return [done[i] for i in ids]

    def _wait_with_bar(self, ids: list[str], deadline: float | None) -> list[Any]:
        """One tqdm bar over every id (100 % each): a task moves with its progress events,
        a chain with its finished tasks, its steps shown as ``✓ ✓ 2/3 · ·``."""
        from tqdm.auto import tqdm

        sub = self.events.subscribe()
        done, befores, others = self._first_look(ids)
        chains = set(others)  # (or unknown ids: TaskNotFound at their first poll)
        pct = {i: 100 if i in done else 0 for i in ids}
        bar = tqdm(total=100 * len(pct), initial=100 * len(done), desc="kmpray", unit="%")
        chain_of: dict[str, str] = {}  # chain task id -> chain id (progress events carry no chain)
        drawn: dict[str, float] = {}  # chain id -> when its steps were last fetched
        try:
            for c in chains:
                self._chain_bar(c, bar, pct, chain_of)
            check = set(pct)  # ids to look at: all at first, then those an event names
            event, looked_at = None, 0.0
            while len(done) < len(pct):
                due = event is None or len(check) >= LOOK_BATCH or time.monotonic() - looked_at > 0.25
                if check and due:
                    self._poll(check - done.keys(), chains, befores, done, pct, bar)
                    check, looked_at = set(), time.monotonic()
                    continue
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{len(pct) - len(done)} of {len(pct)} not finished in time")
                event = sub.get(timeout_s=0.05 if check else 0.5)
                if event is None:
                    check = check or set(pct) - done.keys()  # nothing heard: look at everything once more
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
                        check.add(owner)
                elif event.kind == "progress" and owner == event.task_id and event.progress > pct[owner]:
                    bar.update(event.progress - pct[owner])
                    pct[owner] = event.progress
                    bar.set_postfix_str(f"{owner}: {event.message or ''}"[:40])
                elif event.kind == "completion":
                    check.add(owner)
        finally:
            bar.close()
            sub.close()
        return [done[i] for i in ids]

    def _poll(self, names: set[str], chains: set[str], befores: dict[str, int], done: dict[str, Any],
              pct: dict[str, int], bar: Any) -> None:
        """The bar's look at ``names``: the tasks in one call per shard, chains one by one."""
        from ..display import chain_progress

        looked = self._look([i for i in names if i not in chains], 0, befores)
        for i in names:
            info = self._poll_done(i, None) if i in chains else looked[i]
            if info is None or isinstance(info, int):
                continue
            done[i] = info
            bar.update(100 - pct[i])
            pct[i] = 100
            if i in chains:
                bar.set_postfix_str(f"{i}: {chain_progress(info)[1]}"[:60])

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
        deadline = deadline_after(timeout_s)
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
