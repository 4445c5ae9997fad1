"""A connection after ``ray.shutdown()`` in its process: every call says so at once, and
none reaches Ray (Ray would start a new local instance, ~6 s, then fail with its bare
"Can't find actor ... from a different cluster"). No Ray here: ``is_initialized`` is
made to answer False, and the handles fail the test if anything calls them."""

from __future__ import annotations

from typing import Any

import pytest

from kmpray import EngineUnavailable, TaskCompletionEvent, TaskRequest, TaskTrigger


class Untouchable:
    """An actor handle no call may reach."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} was called on an actor after ray.shutdown()")


def test_every_call_after_ray_shutdown_says_so_and_starts_no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from kmpray.client.facade import BackgroundTaskScheduler

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    handles = {"schedulers": [Untouchable()], "broker": Untouchable(), "oracle": Untouchable()}
    described = {"virtual_time": False, "platform": "cluster", "state_dir": "/x"}
    sched = BackgroundTaskScheduler("nb", handles, described)
    calls = {
        "enqueue": lambda: sched.enqueue("a", TaskTrigger.OneTime(), "Echo"),
        "chain": lambda: sched.begin_with(TaskRequest("Echo")).enqueue(),
        "get_task_info": lambda: sched.get_task_info("a"),
        "wait": lambda: sched.wait("a", timeout_s=1),
        "list_tasks": sched.list_tasks,
        "status": sched.status,
        "cancel": lambda: sched.cancel("a"),
        "get_output": lambda: sched.get_output("a"),
        "set_device_state": lambda: sched.set_device_state(battery_level=5),
        "subscribe": lambda: sched.events.subscribe(),
        "emit": lambda: sched.events.emit(TaskCompletionEvent(task_name="x", success=True, message=None)),
    }
    said = {}
    for name, call in calls.items():
        with pytest.raises(EngineUnavailable) as exc:
            call()
        said[name] = str(exc.value)
    assert set(said.values()) <= {
        "Ray was shut down in this process (ray.shutdown()), and this connection to engine 'nb' with it: "
        "connect() again",
        "Ray was shut down in this process (ray.shutdown()), and this connection to its engine with it: "
        "connect() again",
    }, said
    sched.shutdown()  # closes this connection, reaching nothing
    with pytest.raises(EngineUnavailable, match="was shut down: connect"):
        sched.status()
