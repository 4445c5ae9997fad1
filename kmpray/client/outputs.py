"""``get_output``: a task's ``Success.data`` with its real values (kmpray/artifacts.py).

The scheduler answers with the wire data and the object store references it holds; the
values come straight from the object store to this process (arrays read-only, zero-copy
on the same node). A value whose reference is gone (restart) or lost (its node died) is
read back from its artifact by the scheduler and put in the object store again.

And what ``list_tasks`` and ``wait_many`` answer: TaskInfo pickled in chunks, unpickled.
"""

from __future__ import annotations

import asyncio
import gc
import pickle
from collections.abc import Iterable
from typing import Any

from ..artifacts import MARK, descriptors, from_stored, join
from ..errors import KmprayError
from ..models import TaskList
from ..timing import FETCH_TIMEOUT_S
from .remote import _await, _ray


class OutputMissing(KmprayError):
    """A large value's object and its artifact are both gone (removed by hand?)."""


def _missing(desc: dict[str, Any]) -> OutputMissing:
    return OutputMissing(
        f"artifact {desc['blake3'][:12]}… ({desc[MARK]}, {desc.get('nbytes')} bytes) is missing"
    )


def _wanted(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The large values to fetch, once each (equal content shares one descriptor)."""
    return {d["blake3"]: d for d in descriptors(data)}


def resolve(
    client: Any, answer: tuple[dict[str, Any] | None, dict[str, Any]] | None, shard: int = 0
) -> dict[str, Any] | None:
    """The real values of a get_output answer; ``shard``: the scheduler shard that gave it
    (it holds the references and the artifacts)."""
    if answer is None or answer[0] is None:
        return None
    data, refs = answer
    ray = _ray()
    values: dict[str, Any] = {}
    for digest, desc in _wanted(data).items():
        try:  # the reference the scheduler holds; else (none, or lost) the artifact, put again
            values[digest] = from_stored(desc[MARK], ray.get(refs[digest], timeout=FETCH_TIMEOUT_S))
        except Exception:
            got = client._call("blob", digest, desc[MARK], digest in refs, shard=shard)
            if got is None:
                raise _missing(desc) from None
            values[digest] = from_stored(desc[MARK], ray.get(got[0], timeout=FETCH_TIMEOUT_S))
    return join(data, lambda d: values[d["blake3"]])  # type: ignore[no-any-return]


async def resolve_async(
    client: Any, answer: tuple[dict[str, Any] | None, dict[str, Any]] | None, shard: int = 0
) -> dict[str, Any] | None:
    if answer is None or answer[0] is None:
        return None
    data, refs = answer
    values: dict[str, Any] = {}
    for digest, desc in _wanted(data).items():
        try:
            values[digest] = from_stored(desc[MARK], await asyncio.wait_for(_await(refs[digest]), FETCH_TIMEOUT_S))
        except Exception:
            got = await client._call_async("blob", digest, desc[MARK], digest in refs, shard=shard)
            if got is None:
                raise _missing(desc) from None
            values[digest] = from_stored(desc[MARK], await asyncio.wait_for(_await(got[0]), FETCH_TIMEOUT_S))
    return join(data, lambda d: values[d["blake3"]])  # type: ignore[no-any-return]


def task_list(shards: Iterable[list[bytes]]) -> TaskList:
    """The shards' ``list_tasks`` answers as one TaskList."""
    return TaskList(unpickled(shards))


def unpickled(answers: Iterable[list[bytes]]) -> list[Any]:
    """Answers of ``list_tasks`` and ``wait_many`` (actors/scheduler_reads.py: TaskInfo and
    plain values, pickled 1,000 at a time by the engine's own actors, as every Ray message
    is), in order. The garbage collector waits meanwhile: 200,000 new objects set off
    collections that scanned the growing list each time (31 µs a task; 5.5 µs without)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return [item for chunks in answers for chunk in chunks for item in pickle.loads(chunk)]
    finally:
        if paused:
            gc.enable()
