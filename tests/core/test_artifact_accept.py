"""The scheduler's side of a large output made on another node than its own: it pulls the
value and writes its artifact before the step counts (actors/scheduler_artifacts.py
``accept``). A write the disk refuses (full) fails the step to be retried, as the
executor's own write of the same file does; until session 62 it failed it for good. Past
the folder's cap it fails for good. Stand-ins for the folder and the reference: no Ray."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
from typing import Any

from kmpray.actors.scheduler_artifacts import ArtifactKeeper
from kmpray.protocol import Done, Stored


class Ref:
    def __init__(self, value: Any) -> None:
        self.value = value

    def future(self) -> concurrent.futures.Future[Any]:
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        done.set_result(self.value)
        return done


class FullDisk:
    def __init__(self) -> None:
        self.tried = 0

    def has(self, digest: str, kind: str) -> bool:
        return False

    def write(self, blob: Any) -> None:
        self.tried += 1
        raise OSError(errno.ENOSPC, "No space left on device")


def _keeper(cap: int) -> ArtifactKeeper:
    keeper = object.__new__(ArtifactKeeper)
    keeper.dir, keeper.cap, keeper.refs, keeper.sizes = FullDisk(), cap, {}, {}  # type: ignore[assignment]
    return keeper


def _done(nbytes: int) -> Done:
    stored = Stored("d1", "bytes", nbytes, Ref(b"x" * nbytes), False, "Success.data['x']")
    return Done("a", 1, ("s", None, {"x": {"$kmpray": "bytes"}}), [stored])


def test_an_artifact_the_disk_refuses_fails_the_step_to_be_retried() -> None:
    keeper = _keeper(cap=10**9)
    failed = asyncio.run(keeper.accept(_done(100)))
    assert failed is not None and failed.should_retry, failed
    assert failed.message.startswith("Success.data['x']: its artifact could not be written (OSError")
    assert "No space left on device" in failed.message
    assert keeper.dir.tried == 1 and keeper.refs == {} and keeper.sizes == {}  # nothing kept of it


def test_an_output_past_the_artifact_folder_cap_fails_the_step_for_good() -> None:
    keeper = _keeper(cap=50)
    failed = asyncio.run(keeper.accept(_done(100)))
    assert failed is not None and not failed.should_retry, failed
    assert "bytes of 100 bytes would take the artifact folder past max_artifacts_total_bytes (50 bytes)" in \
        failed.message
    assert keeper.dir.tried == 0
