"""Step data on an executor (kmpray/artifacts.py): a Success whose data holds arrays or
large values puts them in the object store (and writes their artifacts) before its result
is reported; a run whose upstream holds their descriptors gets the values back, from the
object store or, if that lost them, from their artifacts; a chain task handed along with
a run begins here with that run's output as its input (``_follow``). A mixin of the executors
(executor.py): the attributes below are the actor's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import ray

from kmpray.artifacts import (
    MARK,
    ArtifactDir,
    Blob,
    descriptors,
    from_stored,
    is_plain,
    join,
    split,
    to_json,
    too_deep,
)
from kmpray.config import EngineConfig
from kmpray.enums import InputMerger
from kmpray.errors import InvalidParameters
from kmpray.merging import merge
from kmpray.protocol import Run, RunKey, Stored
from kmpray.results import Failure, GivenBack, Success
from kmpray.timing import FETCH_TIMEOUT_S
from kmpray.validation import check_output

from .names import SCHEDULER, lookup

log = logging.getLogger("kmpray.executor")


class StepData:
    namespace: str
    config: EngineConfig
    index: int
    _artifacts: ArtifactDir | None
    _local_artifacts: bool
    _stopping: bool
    _cancelled: Any
    _unreported: dict[RunKey, None]
    _take: Callable[[list[Run]], list[RunKey]]
    _handed_here: set[RunKey]
    _stood_still: Callable[[], bool]

    async def _output(self, result: Success | Failure) -> tuple[Success | Failure, list[Stored] | None]:
        """A Success whose data is not plain msgpack: arrays and large values to the object
        store (and their artifacts), descriptors in the data (kmpray/artifacts.py)."""
        if isinstance(result, Success) and result.data and (why := too_deep(result.data)):
            return Failure(why), None  # it would have crashed the actors it reached
        if not isinstance(result, Success) or is_plain(result.data, self.config.max_output_bytes):
            return result, None  # the common case: plain msgpack, as before
        cfg = self.config
        try:
            wire, blobs = await asyncio.to_thread(
                split, result.data or {}, cfg.inline_data_bytes, cfg.max_output_bytes, cfg.max_artifact_bytes,
                False)  # hashed below, while written
            stored = list(await asyncio.gather(*(self._store(b) for b in blobs))) if blobs else None
            check_output(wire, cfg)
        except InvalidParameters as exc:
            return Failure(str(exc)), None
        except Exception as exc:  # the object store or the disk refused it
            why = f"Success.data: could not be stored ({type(exc).__name__}: {exc})"
            return Failure(why, should_retry=True), None
        return Success.model_construct(message=result.message, data=wire), stored

    async def _store(self, blob: Blob) -> Stored:
        """Put one large value in the object store (this process owns it) and, on the
        artifact node, write its file meanwhile: both before the result is reported."""
        put = asyncio.to_thread(ray.put, blob.value)
        if self._local_artifacts and self._artifacts is not None:
            ref, _ = await asyncio.gather(put, asyncio.to_thread(self._artifacts.write, blob))  # hashes it
        else:
            ref, _ = await asyncio.gather(put, asyncio.to_thread(blob.hash))
        return Stored(blob.digest, blob.kind, blob.nbytes, ref, self._local_artifacts, blob.where)

    async def _fetch(self, desc: dict[str, Any], refs: dict[str, Any]) -> Any:
        """One large upstream value: from the object store; if it was lost (its owner or its
        node died, or the scheduler restarted and holds no reference), from its artifact."""
        digest, kind = desc["blake3"], desc[MARK]
        ref = refs.get(digest)
        if ref is not None:
            try:
                return from_stored(kind, await _get(ref))
            except Exception as exc:
                log.warning("upstream value %s: the object store gave %s; reading its artifact",
                            digest[:12], type(exc).__name__)
        if self._local_artifacts and self._artifacts is not None:
            with contextlib.suppress(FileNotFoundError):
                return from_stored(kind, await asyncio.to_thread(self._artifacts.read, desc))
        # Elsewhere: the scheduler reads the artifact and puts it in the object store again.
        got = await lookup(SCHEDULER, self.namespace).blob.remote(digest, kind, ref is not None)
        if got is None:
            raise LookupError(f"its artifact {digest[:12]}… ({kind}, {desc.get('nbytes')} bytes) is missing")
        return from_stored(kind, await _get(got[0]))

    async def _upstream(self, upstream: dict[str, Any], refs: dict[str, Any]) -> dict[str, Any]:
        wanted = {d["blake3"]: d for d in descriptors(upstream)}
        values = dict(zip(wanted, await asyncio.gather(*(self._fetch(d, refs) for d in wanted.values())),
                          strict=True))
        return join(upstream, lambda d: values[d["blake3"]])  # type: ignore[no-any-return]

    def _follow(
        self, then: Run, merger: str, result: Success | Failure | GivenBack, stored: list[Stored] | None
    ) -> tuple[str, int, int] | None:
        """One hop per step: a run that succeeded begins the chain task handed with it,
        here and now, its input merged from this output (as a coordinator would). Said in
        the result's report; the scheduler takes it as dispatched, or tells this executor
        to drop it if the chain changed meanwhile. Not after this loop stood still (the
        process stopped, say): a ``cancel()`` that gave up waiting for this executor may
        have returned, its word not read here yet, and the step would begin after the
        answer; the scheduler, which knows, hands it on instead (found by the chaos
        driver's pauses scenario, session 59)."""
        key = (then.key, then.run_id)
        if (not isinstance(result, Success) or self._stopping or key in self._cancelled
                or key in self._unreported or self._stood_still()):
            return None
        try:
            upstream = merge(InputMerger(merger), [result.data])
        except InvalidParameters:
            return None  # the coordinator's promotion fails it, naming the key
        inp = then.input if then.input is not None else (to_json(upstream) if upstream else None)
        refs = {s.digest: s.ref for s in stored} if stored else None
        self._handed_here.add(key)
        self._take([then._replace(input=inp, upstream=upstream or None, refs=refs)])
        return (then.key, then.run_id, self.index)


async def _get(ref: Any) -> Any:
    """An object, awaited on this loop, bounded (a node that went may take Ray a while to notice)."""
    return await asyncio.wait_for(asyncio.wrap_future(ref.future()), FETCH_TIMEOUT_S)
