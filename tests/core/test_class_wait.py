"""An executor asking for a class the registry and the scheduler both lack (both restarted
since the run was handed out) asks again for a while instead of failing the run at once
(actors/worker_classes.py, session 58), then gives the run back (``ClassMissing``; the
scheduler re-queues it: session 62). A stand-in registry: no Ray."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kmpray.actors import worker_classes
from ray import cloudpickle


class Echo:
    pass


class Registry:
    """Answers None ``misses`` times (raises instead, with ``failing``), then the class."""

    def __init__(self, misses: int, failing: bool = False) -> None:
        self.asked = 0
        self.misses = misses
        outer = self

        class GetClass:
            @staticmethod
            async def remote(namespace: str, name: str) -> tuple[int, bytes] | None:
                outer.asked += 1
                if outer.asked <= outer.misses and failing:  # (the scheduler it asks in turn did not answer)
                    raise RuntimeError("the registry could not ask the scheduler")
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


def test_a_registry_that_fails_to_answer_for_a_moment_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until session 62 an error from the registry (its own question to a restarting
    scheduler timing out) failed the run at once: "could not be constructed"."""
    registry = Registry(misses=2, failing=True)
    monkeypatch.setattr(worker_classes, "lookup", lambda name, namespace: registry)
    monkeypatch.setattr(worker_classes, "CLASS_ASK_EVERY_S", 0.01)
    version, cls = asyncio.run(_executor()._load_class("Echo"))
    assert (version, cls.__name__, registry.asked) == (3, "Echo", 3)


@pytest.mark.parametrize("failing", [False, True], ids=["none", "raising"])
def test_a_class_missing_past_the_wait_gives_the_run_back(
        monkeypatch: pytest.MonkeyPatch, failing: bool) -> None:
    """ClassMissing, not NotConstructed (which fails the run): the executor gives the run
    back uncalled (``GivenBack``) and the scheduler re-queues it."""
    registry = Registry(misses=10**6, failing=failing)
    monkeypatch.setattr(worker_classes, "lookup", lambda name, namespace: registry)
    monkeypatch.setattr(worker_classes, "CLASS_ASK_EVERY_S", 0.01)
    monkeypatch.setattr(worker_classes, "CLASS_WAIT_S", 0.1)
    ex = _executor()
    ex.keep_instances = True
    with pytest.raises(worker_classes.ClassMissing, match="'Echo': its class is in neither the registry nor"):
        asyncio.run(ex._instance("Echo", 1, threaded=False))  # (not wrapped in NotConstructed)
    assert registry.asked > 2 and ex._classes == {} and ex._instances == {}


def test_an_answer_slower_than_the_wait_is_not_cut_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large class (a notebook class holding a model, by value) may take longer than
    CLASS_WAIT_S to come: cut short, it would be asked for and given back for ever."""
    registry = Registry(misses=0)
    slow = registry.get_class.remote

    async def remote(namespace: str, name: str) -> tuple[int, bytes] | None:
        await asyncio.sleep(0.3)
        return await slow(namespace, name)

    registry.get_class = type("SlowGetClass", (), {"remote": staticmethod(remote)})  # type: ignore[assignment]
    monkeypatch.setattr(worker_classes, "lookup", lambda name, namespace: registry)
    monkeypatch.setattr(worker_classes, "CLASS_WAIT_S", 0.1)
    version, cls = asyncio.run(_executor()._load_class("Echo"))
    assert (version, cls.__name__, registry.asked) == (3, "Echo", 1)
