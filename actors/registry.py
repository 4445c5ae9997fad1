"""WorkerRegistry: the engine-wide map of worker names to shipped classes.

Classes travel as cloudpickle blobs (so notebook and test-module classes run on any
node); they live only in this actor's memory and are never written to the store.
"""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0, max_restarts=-1)
class WorkerRegistry:
    def __init__(self) -> None:
        self._blobs: dict[str, tuple[int, bytes]] = {}
        self._next_version = 1

    def register(self, name: str, blob: bytes) -> int:
        current = self._blobs.get(name)
        if current is not None and current[1] == blob:
            return current[0]
        version = self._next_version
        self._next_version += 1
        self._blobs[name] = (version, blob)
        return version

    def versions(self) -> dict[str, int]:
        return {name: v for name, (v, _blob) in self._blobs.items()}

    def get(self, name: str) -> tuple[int, bytes] | None:
        return self._blobs.get(name)
