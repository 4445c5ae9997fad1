"""The engine's worker classes, held by value: a part of the ConstraintOracle's actor.

Classes travel as cloudpickle blobs (so notebook and test-module classes run on any
node). They are never written to the store (nothing read back from the store is
unpickled): this registry and each shard's scheduler keep a copy in memory, and whichever
restarts gets them back from the other. When both die together, the scheduler takes
back what its executors and heavy workers loaded (actors/class_recovery.py); only a
class none of them ran, or a full restart, leaves tasks of such workers waiting, PARKED,
until the worker is registered again. Each shard's scheduler hands out its own
versions, so the classes are kept per shard (by the shard's namespace).

Why not an actor of its own (as until session 49): every Ray actor is a worker process,
~0.6 s of CPU to start before any kmpray code runs and ~100 MB resident, and one per shard
was a sixth of what connect() waits for on two cores. The oracle is the engine's one
light, long-lived actor on the head node beside the schedulers; executors ask here only
for a class they have not loaded yet.
"""

from __future__ import annotations

import asyncio

from .names import SCHEDULER, lookup, shard_namespace
from .retry import call_with_retry, taken_back

Blob = tuple[int, bytes]


class ClassRegistry:
    """Mixed into the ConstraintOracle; its methods are the oracle's remote methods."""

    def _start_registry(self, namespace: str, shards: int) -> None:
        self._blobs: dict[str, dict[str, Blob]] = {}  # shard namespace -> name -> (version, blob)
        self._reseeding = asyncio.ensure_future(
            asyncio.gather(*(self._reseed(shard_namespace(namespace, k)) for k in range(shards))))

    async def _reseed(self, shard: str) -> None:
        """After a restart, take back every class a shard's scheduler holds (none at first start)."""
        blobs = await taken_back(SCHEDULER, shard, "worker_blobs")
        self._keep(shard, [(name, version, blob) for name, (version, blob) in (blobs or {}).items()])

    def _keep(self, shard: str, entries: list[tuple[str, int, bytes]]) -> None:
        held = self._blobs.setdefault(shard, {})
        for name, version, blob in entries:
            current = held.get(name)
            if current is None or current[0] < version:
                held[name] = (version, blob)

    async def put_classes(self, shard: str, entries: list[tuple[str, int, bytes]]) -> None:
        self._keep(shard, entries)

    async def dump_classes(self, shard: str) -> dict[str, Blob]:
        await self._reseeding
        return dict(self._blobs.get(shard, {}))

    async def get_class(self, shard: str, name: str) -> Blob | None:
        entry = self._blobs.get(shard, {}).get(name)
        if entry is None:  # restarted: the shard's scheduler still has it
            scheduler = lookup(SCHEDULER, shard)
            entry = await call_with_retry(lambda: scheduler.worker_blob.remote(name), timeout_s=30)
            if entry is not None:
                self._keep(shard, [(name, entry[0], entry[1])])
                entry = self._blobs[shard][name]
        return entry
