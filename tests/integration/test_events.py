"""Events: stored, replayed from a cursor, pushed to callbacks; bad use gets clear errors."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import kmpray
from kmpray import TaskCompletionEvent, TaskProgressEvent, TaskTrigger

pytestmark = pytest.mark.ray


def _drain(sub: Any, n: int) -> list[Any]:
    out = []
    while len(out) < n and (event := sub.get(timeout_s=30)) is not None:
        out.append(event)
    return out


def test_completion_and_progress_events_arrive_in_order(vengine: Any) -> None:
    sub = vengine.events.subscribe()
    vengine.enqueue("p", TaskTrigger.OneTime(), "Progress")
    events = _drain(sub, 5)
    assert [e.progress for e in events[:4]] == [25, 50, 75, 100]
    assert all(isinstance(e, TaskProgressEvent) and e.task_id == "p" for e in events[:4])
    done = events[4]
    assert isinstance(done, TaskCompletionEvent)
    assert (done.task_id, done.task_name, done.success, done.output_data) == ("p", "Progress", True, {"done": True})
    assert vengine.get_task_info("p").progress == 100


def test_a_late_subscriber_replays_from_cursor_zero(vengine: Any) -> None:
    for i in range(3):
        vengine.enqueue(f"e{i}", TaskTrigger.OneTime(), "Echo")
        vengine.wait(f"e{i}", timeout_s=30)
    sub = vengine.events.subscribe(since=0)
    replayed = _drain(sub, 3)
    assert [e.task_id for e in replayed] == ["e0", "e1", "e2"]
    resumed = vengine.events.subscribe(since=sub.cursor - 1)
    assert resumed.get(timeout_s=5).task_id == "e2"
    assert sub.get(timeout_s=0.2) is None


def test_callback_subscription_receives_pushed_events(vengine: Any) -> None:
    got: list[Any] = []
    seen = threading.Event()

    def on_event(event: Any) -> None:
        got.append(event)
        seen.set()

    sub = vengine.events.subscribe(callback=on_event)
    try:
        vengine.enqueue("cb", TaskTrigger.OneTime(), "Echo")
        assert seen.wait(timeout=30)
        assert got[0].task_id == "cb" and got[0].success
    finally:
        sub.close()


def test_worker_code_can_emit_on_the_bus(vengine: Any) -> None:
    sub = vengine.events.subscribe()
    vengine.enqueue("em", TaskTrigger.OneTime(), "EmitsEvent", input="42")
    events = _drain(sub, 2)
    assert any(e.task_name == "custom" and e.message == "from worker 42" for e in events)


def test_bad_bus_use_is_a_clear_error(vengine: Any) -> None:
    with pytest.raises(ValueError, match="since"):
        vengine.events.subscribe(since=-1)
    with pytest.raises(ValueError, match="beyond"):
        vengine.events.subscribe(since=10**9)
    with pytest.raises(TypeError, match="TaskCompletionEvent"):
        kmpray.TaskEventBus.emit({"task_name": "x"})  # type: ignore[arg-type]
    kmpray.TaskEventBus.emit(TaskCompletionEvent("driver", True, "from the driver"))
    sub = vengine.events.subscribe(since=0)
    assert any(e.task_name == "driver" for e in _drain(sub, 1))
