"""WorkerRegistry: the engine-wide map of worker names to shipped classes.

Classes travel as cloudpickle blobs (so notebook and test-module classes run on any
node). They are never written to the store (nothing read back from the store is
unpickled): the registry and the scheduler each keep a copy in memory, and whichever
restarts gets them back from the other. Only when both die together (the head node, a
full restart) are they gone; tasks of such workers then wait, PARKED, until the worker
is registered again. The scheduler hands out the versions.
"""

from __future__ import annotations

import asyncio
import logging

import ray

from .names import SCHEDULER, lookup
from .retry import call_with_retry
from .untraced import untrace

log = logging.getLogger("kmpray.registry")


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1000)
class WorkerRegistry:
    def __init__(self, namespace: str) -> None:
        untrace(self)  # its own calls without Ray's tracing shim (actors/untraced.py)
        self.namespace = namespace
        self._blobs: dict[str, tuple[int, bytes]] = {}
        self._reseeding = asyncio.ensure_future(self._reseed())

    async def _reseed(self) -> None:
        """After a restart, take back every class the scheduler holds (none at first start)."""
        try:
            scheduler = ray.get_actor(SCHEDULER, namespace=self.namespace)
        except ValueError:
            return  # a fresh engine: the scheduler is created after this actor
        try:
            blobs = await call_with_retry(lambda: scheduler.worker_blobs.remote(), timeout_s=60)
        except Exception:
            log.exception("could not take worker classes back from the scheduler; will ask per class")
            return
        await self.put_many([(name, version, blob) for name, (version, blob) in blobs.items()])

    async def put(self, name: str, version: int, blob: bytes) -> None:
        await self.put_many([(name, version, blob)])

    async def put_many(self, entries: list[tuple[str, int, bytes]]) -> None:
        for name, version, blob in entries:
            current = self._blobs.get(name)
            if current is None or current[0] < version:
                self._blobs[name] = (version, blob)

    async def dump(self) -> dict[str, tuple[int, bytes]]:
        await self._reseeding
        return dict(self._blobs)

    async def get(self, name: str) -> tuple[int, bytes] | None:
        entry = self._blobs.get(name)
        if entry is None:  # restarted: the scheduler still has it
            scheduler = lookup(SCHEDULER, self.namespace)
            entry = await call_with_retry(lambda: scheduler.worker_blob.remote(name), timeout_s=30)
            if entry is not None:
                await self.put(name, entry[0], entry[1])
                entry = self._blobs[name]
        return entry
