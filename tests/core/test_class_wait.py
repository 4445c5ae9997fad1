"""An executor asking for a class the registry and the scheduler both lack (both restarted
since the run was handed out) asks again for a while instead of failing the run at once
(actors/worker_classes.py, session 58). A stand-in registry: no Ray."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kmpray.actors import worker_classes
from ray import cloudpickle


class Echo:
    pass


class Registry:
    """Answers None ``misses`` times, then the class."""

    def __init__(self, misses: int) -> None:
        self.asked = 0
        self.misses = misses
        outer = self

        class GetClass:
            @staticmethod
            async def remote(namespace: str, name: str) -> tuple[int, bytes] | None:
                outer.asked += 1
                return None if outer.asked <= outer.misses else (3, cloudpickle.dumps(Echo))

        self.get_class = GetClass


def _executor() -> Any:
    ex = object.__new__(worker_classes.WorkerClasses)
    ex.namespace = "ns"
    ex._classes, ex._class_blobs = {}, {}
    ex._instances, ex._loading = {}, {}
    return ex


def test_a_class_missing_for_a_moment_is_asked_for_again_and_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(misses=3)
    monkeypatch.setattr(worker_classes, "lookup", lambda name, namespace: registry)
    monkeypatch.setattr(worker_classes, "CLASS_ASK_EVERY_S", 0.01)
    ex = _executor()
    version, cls = asyncio.run(ex._load_class("Echo"))
    assert (version, cls.__name__, registry.asked) == (3, "Echo", 4)
    assert ex.class_blobs(["Echo", "Other"]) == {"Echo": (3, cloudpickle.dumps(Echo))}  # the third copy


def test_a_class_missing_for_good_still_fails_the_run_after_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(misses=10**6)
    monkeypatch.setattr(worker_classes, "lookup", lambda name, namespace: registry)
    monkeypatch.setattr(worker_classes, "CLASS_ASK_EVERY_S", 0.01)
    monkeypatch.setattr(worker_classes, "CLASS_WAIT_S", 0.1)
    with pytest.raises(LookupError, match="worker 'Echo' is not registered"):
        asyncio.run(_executor()._load_class("Echo"))
    assert registry.asked > 2
