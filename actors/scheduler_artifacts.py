"""Large step data on the scheduler's side (kmpray/artifacts.py): the object store
references of large output values, their artifact files, and the sweep that removes
files no row refers to any more. A mixin of SchedulerActor (scheduler.py).

An executor puts each large value in the object store and, on this node, writes its file;
an executor elsewhere cannot reach ``state_dir``, so the value is pulled here and written
before its result is applied. Either way the file exists before the step is SUCCEEDED, so
a restart of anything, or a value lost with its node, costs a read, never a re-run.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import ray

from kmpray.artifacts import MARK, ArtifactDir, Blob, descriptors
from kmpray.config import EngineConfig
from kmpray.engine import SchedulerCore
from kmpray.protocol import Done
from kmpray.results import Failure, Success
from kmpray.timing import ARTIFACT_GRACE_S, FETCH_TIMEOUT_S, PRUNE_S

log = logging.getLogger("kmpray.scheduler")


class ArtifactKeeper:
    """References by blake3 and the folder's size; nothing here touches the core."""

    def __init__(self, state_dir: str, config: EngineConfig) -> None:
        self.dir = ArtifactDir(Path(state_dir) / "artifacts", config.durability)
        self.node = ray.get_runtime_context().get_node_id()
        self.cap = config.max_artifacts_total_bytes
        self.refs: dict[str, Any] = {}  # blake3 -> ObjectRef
        self.sizes: dict[str, int] | None = None  # blake3 -> bytes on disk (scanned at first use)

    @property
    def where(self) -> tuple[str, str]:
        """What executors are told: the folder, and the node it is on."""
        return str(self.dir.root), self.node

    def _scan(self) -> dict[str, int]:
        if self.sizes is None:
            root = self.dir.root
            self.sizes = {
                p.name.split(".")[0]: p.stat().st_size
                for p in (root.iterdir() if root.is_dir() else ())
                if p.is_file() and not p.name.startswith(".")
            }
        return self.sizes

    async def accept(self, done: Done) -> Failure | None:
        """A result's large values: each file written (pulled and written here for an
        executor on another node) and each reference kept. Returns the step's failure
        instead, or None: past the folder's cap, for good; a value that could not be
        pulled or written (a full disk), retried (until session 62 for good, unlike the
        executor's own write of the same file, actors/executor_data.py ``_output``)."""
        sizes = self.sizes if self.sizes is not None else await asyncio.to_thread(self._scan)
        stored = done.stored or []
        new = [s for s in stored if s.digest not in sizes]
        total = sum(sizes.values())
        for s in new:
            total += s.nbytes
            if total > self.cap:
                return Failure(
                    f"{s.where}: {s.kind} of {s.nbytes} bytes would take the artifact folder past "
                    f"max_artifacts_total_bytes ({self.cap} bytes)"
                )
        for s in stored:
            if not s.saved and not self.dir.has(s.digest, s.kind):
                try:
                    value = await asyncio.wait_for(asyncio.wrap_future(s.ref.future()), FETCH_TIMEOUT_S)
                    blob = Blob(s.kind, value, s.nbytes, s.where, {MARK: s.kind, "blake3": s.digest})
                    await asyncio.to_thread(self.dir.write, blob)  # checks the content against the digest
                except Exception as exc:
                    why = f"{s.where}: its artifact could not be written ({type(exc).__name__}: {exc})"
                    return Failure(why, should_retry=True)
            sizes[s.digest] = s.nbytes
            self.refs[s.digest] = s.ref
        return None

    def refs_for(self, upstream: dict[str, Any]) -> dict[str, Any] | None:
        found = {
            d["blake3"]: self.refs[d["blake3"]] for d in descriptors(upstream) if d["blake3"] in self.refs
        }
        return found or None

    async def load(self, digest: str, kind: str, fresh: bool) -> Any:
        """A reference for one value: the one kept, or (none kept, or it was lost:
        ``fresh``) the artifact put in the object store again, owned by this process."""
        ref = None if fresh else self.refs.get(digest)
        if ref is None:
            try:
                value = await asyncio.to_thread(self.dir.read, {MARK: kind, "blake3": digest})
            except (FileNotFoundError, ValueError):
                return None
            ref = await asyncio.to_thread(ray.put, value)
            self.refs[digest] = ref
        return ref

    async def sweep(self, live: set[str], hot: set[str], grace_s: float) -> tuple[int, int]:
        for digest in [d for d in self.refs if d not in hot]:
            del self.refs[digest]  # the object store frees it when no one else holds it
        files, freed = await asyncio.to_thread(self.dir.sweep, live, grace_s)
        if files:
            self.sizes = None  # scanned again at the next large output
        return files, freed


def live_digests(core: SchedulerCore, recent_ms: int) -> tuple[set[str], set[str]]:
    """Every large value a row still refers to (its file stays), and those worth keeping in
    the object store: inputs of unfinished tasks, and outputs of the last ``recent_ms``
    (their successors are about to start). Other values are read from their file when
    asked for (get_output), so the object store does not fill with finished work."""
    live: set[str] = set()
    hot: set[str] = set()
    since = core.clock.now_ms() - recent_ms
    for rec in core.tasks.values():
        result = rec.result.data if isinstance(rec.result, Success) else None
        for data, wanted in ((result, rec.updated_at_ms >= since), (rec.upstream, not rec.state.is_finished)):
            if data:
                found = [d["blake3"] for d in descriptors(data)]
                live.update(found)
                if wanted:
                    hot.update(found)
    return live, hot


class SchedulerArtifacts:
    core: SchedulerCore
    artifacts: ArtifactKeeper
    _ready: asyncio.Future[None]

    async def get_output(self, name_or_key: str) -> tuple[dict[str, Any] | None, dict[str, Any]] | None:
        """A task's last ``Success.data`` as wire data, with the references this process
        holds for its large values (the client puts the values back; kmpray/client)."""
        await self._ready
        rec = self.core.latest(name_or_key)
        if rec is None:
            return None
        data = rec.result.data if isinstance(rec.result, Success) else None
        return data, (self.artifacts.refs_for(data) or {}) if data else {}

    async def blob(self, digest: str, kind: str, fresh: bool = False) -> list[Any] | None:
        """A reference for one large value (in a list: Ray passes it as a reference), read
        from its artifact when none is held or the one held was lost (``fresh``)."""
        await self._ready
        ref = await self.artifacts.load(digest, kind, fresh)
        return None if ref is None else [ref]

    async def sweep_artifacts(self, grace_s: float = ARTIFACT_GRACE_S) -> dict[str, int]:
        """Remove the files no row refers to any more, and let go of the object store
        references no unfinished task needs (at each prune round; callable for tests)."""
        await self._ready
        if not self.artifacts.refs and not self.artifacts.dir.root.is_dir():
            return {"removed": 0, "freed_bytes": 0, "kept": 0}  # no large data ever: no scan
        live, hot = live_digests(self.core, int(2 * PRUNE_S * 1000))
        files, freed = await self.artifacts.sweep(live, hot, grace_s)
        if files:
            log.info("artifacts: removed %d files (%d bytes) no task refers to", files, freed)
        return {"removed": files, "freed_bytes": freed, "kept": len(live)}
