"""Calls to a sharded engine (EngineConfig.scheduler_shards): each call about one task or
chain goes straight to the shard that holds it, with no hop through another; engine-wide
calls go to every shard (kmpray/shards.py says which shard holds what)."""

from __future__ import annotations

import asyncio
from typing import Any

from ..shards import shard_of


class Routing:
    """The routing half of the facade (it supplies ``_call``, ``_call_async``, ``shards``)."""

    _call: Any
    _call_async: Any
    shards: int
    _homes: dict[str, int]

    def _home(self, id: str) -> int:  # noqa: A002
        """The shard that holds ``id``: its hash shard, unless it was found elsewhere."""
        return self._homes.get(id, shard_of(id, self.shards))

    def _each(self, method: str, *args: Any, **kw: Any) -> list[Any]:
        """The same call on every shard (engine-wide reads and controls), shard 0 first."""
        return [self._call(method, *args, shard=k, **kw) for k in range(self.shards)]

    def _find(self, method: str, id: str) -> Any:  # noqa: A002
        """A read about ``id`` from its shard; a task of a chain lives on the chain's shard,
        so an id not found on its hash shard is asked for on the others (and remembered)."""
        home = self._home(id)
        raw = self._call(method, id, shard=home)
        if raw is not None or self.shards == 1:
            return raw
        for k in range(self.shards):
            if k != home and (raw := self._call(method, id, shard=k)) is not None:
                self._homes[id] = k
                return raw
        return None

    async def _find_async(self, method: str, id: str) -> Any:  # noqa: A002
        home = self._home(id)
        raw = await self._call_async(method, id, shard=home)
        if raw is not None or self.shards == 1:
            return raw
        for k in range(self.shards):
            if k != home and (raw := await self._call_async(method, id, shard=k)) is not None:
                self._homes[id] = k
                return raw
        return None

    def _split(self, items: list[dict[str, Any]]) -> dict[int, list[int]]:
        """Item positions by shard, each shard's in their order."""
        out: dict[int, list[int]] = {}
        for i, item in enumerate(items):
            out.setdefault(shard_of(str(item.get("id")), self.shards), []).append(i)
        return out

    def _enqueue_items(self, items: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
        """One enqueue_many per shard holding any of ``items``; answers in the items' order."""
        parts = self._split(items)
        if len(parts) <= 1:
            return list(self._call("enqueue_many", items, shard=next(iter(parts), 0), token=True))
        out: list[Any] = [None] * len(items)
        for k, positions in parts.items():
            for i, answer in zip(positions, self._call("enqueue_many", [items[i] for i in positions],
                                                       shard=k, token=True), strict=True):
                out[i] = answer
        return out

    async def _enqueue_items_async(self, items: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
        parts = self._split(items)
        if len(parts) <= 1:
            return list(await self._call_async("enqueue_many", items, shard=next(iter(parts), 0), token=True))
        out: list[Any] = [None] * len(items)
        answers = await asyncio.gather(*(
            self._call_async("enqueue_many", [items[i] for i in positions], shard=k, token=True)
            for k, positions in parts.items()))
        for positions, got in zip(parts.values(), answers, strict=True):
            for i, answer in zip(positions, got, strict=True):
                out[i] = answer
        return out

    def _chain_home(self, payload: dict[str, Any]) -> int:
        """A chain and all its tasks live on the chain id's shard; its task ids are
        remembered there, so reads about them go straight to it."""
        home = shard_of(str(payload.get("id")), self.shards)
        if self.shards > 1:
            for step in payload.get("steps") or []:
                for req in step:
                    if isinstance(req, dict) and isinstance(req.get("id"), str):
                        self._homes[req["id"]] = home
        return home
