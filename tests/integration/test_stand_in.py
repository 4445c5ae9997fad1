"""An engine process that Ray gave a stand-in for an actor's class loads it again."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.ray


def test_a_stand_in_for_the_schedulers_class_is_forgotten_and_the_class_loaded_again(sengine: Any) -> None:
    """Ray gives a process a stand-in for an actor class it failed to load there (its
    methods take keyword arguments only) and keeps it for the process's life: every call
    through that process's handles fails "too many positional arguments". A chaos run's
    heavy worker had one for the scheduler's class (session 60) and could not report a
    result again. Here a fresh process's first load is made to fail the same way (Ray's
    own stand-in, put in its cache): ``ray.get_actor`` hands back the broken handle, and
    ``lookup`` forgets the stand-in and returns one that works."""
    import ray
    from kmpray.actors.names import SCHEDULER, STAND_IN_METHOD, lookup
    from kmpray.actors.scheduler import SchedulerActor

    function_id = SchedulerActor.__ray_metadata__.actor_creation_function_descriptor.function_id

    @ray.remote(num_cpus=0)
    class Fresh:
        def first_load_fails(self, namespace: str) -> tuple[bool, str, bool, dict[str, Any]]:
            manager = ray._private.worker.global_worker.function_actor_manager
            why = "Traceback (most recent call last):\nImportError: injected"
            manager._loaded_actor_classes[function_id] = manager._create_fake_actor_class(
                "SchedulerActor", ["ready", "explain"], why)
            broken = ray.get_actor(SCHEDULER, namespace=namespace)
            try:
                broken.explain.remote("t")  # (one positional argument, as the real method takes)
                said = ""
            except TypeError as exc:
                said = str(exc)
            handle = lookup(SCHEDULER, namespace)
            status = ray.get(handle.ready.remote(), timeout=30)
            return STAND_IN_METHOD in broken._ray_method_signatures, said, \
                STAND_IN_METHOD in handle._ray_method_signatures, status

    fresh = Fresh.remote()
    try:
        stand_in, said, still, status = ray.get(fresh.first_load_fails.remote(sengine.namespace), timeout=60)
    finally:
        ray.kill(fresh)
    assert stand_in and said == "too many positional arguments"  # the fault, as the chaos run met it
    assert not still and status["executors"] >= 1  # lookup's handle is the real class's, and answers
