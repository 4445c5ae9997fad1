"""Calls to a sharded engine (EngineConfig.scheduler_shards): each call about one task or
chain goes straight to the shard that holds it, with no hop through another; engine-wide
calls go to every shard at once (kmpray/shards.py says which shard holds what).

The sync and async halves differ only in how a batch of calls is made (``_fan``: threads
for the sync client, ``asyncio.gather`` for the async one); what to ask and how the
answers go together is shared."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Any

from ..errors import EngineUnavailable
from ..shards import reassemble, shard_of, split
from ..timing import ENQUEUE_CALL_ITEMS
from .remote import _ray, require_ray

Call = tuple[int, tuple[Any, ...]]  # (shard, args)


#: Chain task ids whose shard a client remembers (see ``Routing._remember``).
HOMES_KEPT = 100_000


def checked_id(value: Any) -> str:
    """``value`` if it is a task or chain id (a ``str``), else a TypeError naming ``id``.
    Until session 47 anything went: ``wait(chain.enqueue())`` (a ScheduleResult, a ``str``
    enum) waited for a task named "SUCCESS" and raised TaskNotFound for
    ``<ScheduleResult.SUCCESS: 'SUCCESS'>``; ``get_task_info(5)`` returned None;
    ``get_task_info(chain.enqueue)`` failed in Ray's pickling."""
    if isinstance(value, str) and not isinstance(value, Enum):
        return value
    hint = ""
    name = getattr(value, "__name__", "")
    if isinstance(value, Enum) or type(value).__name__ == "TaskChain" or name == "enqueue":
        hint = " (a chain's id is chain.id; enqueue() answers with a ScheduleResult, not an id)"
    raise TypeError(f"id: must be a task or chain id (a str), got {type(value).__name__} {value!r:.60}{hint}")


class Routing:
    """The routing half of the facade (it supplies ``_call``, ``_call_async``, ``shards``)."""

    _call: Any
    _call_async: Any
    shards: int
    _homes: dict[str, int]
    _fan_pool: ThreadPoolExecutor | None = None
    _schedulers: list[Any]
    namespace: str
    _closed = False  # shutdown() ran: calls fail at once, not after ~120 s of retrying a stopped engine

    def _check_alive(self, shard: int) -> None:
        """After an ActorDiedError: raise at once if the shard's scheduler is gone for good
        (stopped, by `kmpray stop` or another process's shutdown(): its name is free, or a
        new engine's actor holds it), instead of retrying a dead handle until the deadline
        (~120 s). A scheduler that restarts keeps its name and its actor id: retried."""
        from kmpray.actors.names import SCHEDULER, shard_namespace

        try:
            named = _ray().get_actor(SCHEDULER, namespace=shard_namespace(self.namespace, shard))
        except ValueError:
            named = None
        if named is None or named._actor_id != self._schedulers[shard]._actor_id:
            raise EngineUnavailable.stopped(self.namespace)

    def _after_fork(self) -> None:
        """In a forked child: the fan-out pool is its parent's, with no thread of it
        running here (a call handed to it waited for good); the next fan-out makes one."""
        self._fan_pool = None

    def _check_open(self) -> None:
        if self._closed:
            raise EngineUnavailable(
                f"this connection to engine {self.namespace!r} was shut down: connect() again")
        require_ray(self.namespace)

    def _home(self, id: str) -> int:  # noqa: A002
        """The shard that holds ``id``: its hash shard, unless it was found elsewhere."""
        return self._homes.get(checked_id(id), shard_of(id, self.shards))

    # ------------------------------------------------------------ a batch of calls
    def _fan(self, method: str, calls: list[Call], **kw: Any) -> list[Any]:
        """``method`` on each (shard, args) at once; answers in ``calls``' order."""
        if len(calls) == 1:
            k, args = calls[0]
            return [self._call(method, *args, shard=k, **kw)]
        if self._fan_pool is None:
            self._fan_pool = ThreadPoolExecutor(max_workers=self.shards, thread_name_prefix="kmpray-fan")
        futures = [self._fan_pool.submit(self._call, method, *args, shard=k, **kw) for k, args in calls]
        return [f.result() for f in futures]

    async def _fan_async(self, method: str, calls: list[Call], **kw: Any) -> list[Any]:
        return list(await asyncio.gather(*(self._call_async(method, *args, shard=k, **kw)
                                           for k, args in calls)))

    # ------------------------------------------------------------ engine-wide
    def _each(self, method: str, *args: Any, **kw: Any) -> list[Any]:
        """The same call on every shard (engine-wide reads and controls), shard 0's first."""
        return self._fan(method, [(k, args) for k in range(self.shards)], **kw)

    # ------------------------------------------------------------ one id
    def _find(self, method: str, id: str) -> Any:  # noqa: A002
        """A read about ``id`` from its shard; a task of a chain lives on the chain's shard,
        so an id not found on its hash shard is asked for on the others (and remembered)."""
        home = self._home(id)
        raw = self._call(method, id, shard=home)
        if raw is not None or self.shards == 1:
            return raw
        others = self._others(id, home)
        return self._found(id, others, self._fan(method, others))

    async def _find_async(self, method: str, id: str) -> Any:  # noqa: A002
        home = self._home(id)
        raw = await self._call_async(method, id, shard=home)
        if raw is not None or self.shards == 1:
            return raw
        others = self._others(id, home)
        return self._found(id, others, await self._fan_async(method, others))

    def _others(self, id: str, home: int) -> list[Call]:  # noqa: A002
        return [(k, (id,)) for k in range(self.shards) if k != home]

    def _found(self, id: str, asked: list[Call], answers: list[Any]) -> Any:  # noqa: A002
        for (k, _), raw in zip(asked, answers, strict=True):
            if raw is not None:
                self._remember(id, k)
                return raw
        return None

    def _remember(self, id: str, home: int) -> None:  # noqa: A002
        """A hint, not a record: ids off their hash shard, the latest HOMES_KEPT only (a
        producer enqueueing chains for days must not grow it without end); a forgotten one
        is found again by asking every shard."""
        homes = self._homes
        homes.pop(id, None)
        homes[id] = home
        if len(homes) > HOMES_KEPT:
            del homes[next(iter(homes))]

    # ------------------------------------------------------------ many items
    def _parts(self, items: list[dict[str, Any]]) -> tuple[dict[int, list[int]], list[Call]]:
        """Item positions by shard, and one enqueue_many argument list per shard."""
        parts = split([str(item.get("id")) for item in items], self.shards)
        return parts, [(k, ([items[i] for i in positions],)) for k, positions in parts.items()]

    def _enqueue_items(self, items: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
        """One enqueue_many per shard holding any of ``items``, all at once; answers in the
        items' order. Over ``ENQUEUE_CALL_ITEMS`` items, one such round per that many, in
        turn (see timing.py)."""
        if len(items) > ENQUEUE_CALL_ITEMS:
            return [answer for k in range(0, len(items), ENQUEUE_CALL_ITEMS)
                    for answer in self._enqueue_items(items[k:k + ENQUEUE_CALL_ITEMS])]
        if self.shards == 1 or not items:
            return list(self._call("enqueue_many", items, token=True))
        parts, calls = self._parts(items)
        return reassemble(len(items), parts, self._fan("enqueue_many", calls, token=True))

    async def _enqueue_items_async(self, items: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
        if len(items) > ENQUEUE_CALL_ITEMS:
            out: list[tuple[str, str | None]] = []
            for k in range(0, len(items), ENQUEUE_CALL_ITEMS):
                out += await self._enqueue_items_async(items[k:k + ENQUEUE_CALL_ITEMS])
            return out
        if self.shards == 1 or not items:
            return list(await self._call_async("enqueue_many", items, token=True))
        parts, calls = self._parts(items)
        return reassemble(len(items), parts, await self._fan_async("enqueue_many", calls, token=True))

    def _chain_home(self, payload: dict[str, Any]) -> int:
        """A chain and all its tasks live on the chain id's shard; its task ids are
        remembered there, so reads about them go straight to it."""
        home = shard_of(str(payload.get("id")), self.shards)
        if self.shards > 1:
            for step in payload.get("steps") or []:
                for req in step:
                    if isinstance(req, dict) and isinstance(req.get("id"), str):
                        self._remember(req["id"], home)
        return home
