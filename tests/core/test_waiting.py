"""'Why isn't my task running?': TaskInfo.waiting_for and explain, from the core's state (#21)."""

from __future__ import annotations

import logging

import pytest

from kmpray import ONE_HOUR, ONE_MINUTE, Constraints, TaskState, TaskTrigger, explain, waiting
from kmpray.config import EngineConfig
from kmpray.device import DeviceState

from .conftest import START, Harness, task

CHARGING = Constraints(requires_charging=True)
UNPLUGGED = DeviceState(charging=False, battery_level=50)


def _nodes(h: Harness, **state: object) -> None:
    h.core.set_devices({"node-a": DeviceState(**state), "node-b": DeviceState(**state)})  # type: ignore[arg-type]


def _info(h: Harness, key: str):  # type: ignore[no-untyped-def]
    return h.core.info(h.core.tasks[key])


def test_a_delayed_task_waits_for_its_time() -> None:
    h = Harness()
    h.core.submit("later", TaskTrigger.OneTime(10 * ONE_MINUTE), "Ok")
    info = _info(h, "later")
    assert info.waiting_for.kind == "due_at" and info.waiting_for.details["at_ms"] == START + 10 * ONE_MINUTE
    assert info.waiting_for.message.startswith("due at ") and info.next_run_at_ms == START + 10 * ONE_MINUTE


def test_a_gated_task_names_the_constraints_each_node_fails_and_has_no_past_next_run() -> None:
    h = Harness()
    _nodes(h, charging=False, battery_level=50)
    h.core.submit("charge", TaskTrigger.OneTime(), "Ok", constraints=CHARGING)
    h.step()
    info = _info(h, "charge")
    assert info.state is TaskState.ENQUEUED and h.runs == []
    assert info.waiting_for.kind == "constraints"
    assert info.waiting_for.message == "constraints unmet: 0/2 nodes satisfy them (2 not charging)"
    assert info.waiting_for.details["nodes"] == {"node-a": ["not charging"], "node-b": ["not charging"]}
    assert info.next_run_at_ms is None  # never a passed instant that looks like a missed run
    h.clock.set(START + ONE_HOUR)
    assert _info(h, "charge").next_run_at_ms is None


def test_the_reason_follows_the_state_until_it_runs() -> None:
    h = Harness()
    _nodes(h, charging=False, battery_level=50)
    h.core.submit("charge", TaskTrigger.OneTime(), "Ok", constraints=CHARGING)
    h.step()
    assert _info(h, "charge").waiting_for.kind == "constraints"
    _nodes(h, charging=True)
    (run,) = h.core.take_ready(10)
    h.core.started(run.key, run.run_id)
    assert _info(h, "charge").state is TaskState.RUNNING and _info(h, "charge").waiting_for is None
    h.core.complete(run.key, run.run_id, h.workers["Ok"](run))
    assert _info(h, "charge").waiting_for is None


def test_a_chain_step_names_its_gated_prerequisite_and_what_that_waits_for() -> None:
    h = Harness()
    _nodes(h, charging=False, battery_level=50)
    h.core.submit_chain("c", "REPLACE", [[task("Ok", "first", requires_charging=True)], [task("Ok", "second")]])
    h.step()
    first, second = _info(h, "first"), _info(h, "second")
    assert first.waiting_for.kind == "constraints"
    assert second.state is TaskState.BLOCKED and second.waiting_for.kind == "prerequisites"
    assert "first (ENQUEUED: constraints unmet: 0/2 nodes satisfy them (2 not charging))" in second.waiting_for.message
    assert second.waiting_for.details["tasks"]["first"]["waiting_for"]["kind"] == "constraints"


def test_appended_work_waits_for_the_work_it_follows() -> None:
    h = Harness()
    h.core.submit("x", TaskTrigger.OneTime(ONE_HOUR), "Ok")
    h.core.submit("x", TaskTrigger.OneTime(), "Ok", constraints=Constraints(existing_work_policy="APPEND"))
    reason = _info(h, "x#2").waiting_for
    assert reason.kind == "prerequisites" and reason.message.startswith("waits for 1 unfinished prerequisite(s): x (")


def test_a_worker_not_registered_again_after_a_restart() -> None:
    h = Harness()
    h.core.is_known = lambda name: name == "Gone"
    h.core.submit("w", TaskTrigger.OneTime(), "Gone")
    h.step()
    reason = _info(h, "w").waiting_for
    assert reason.kind == "worker" and "'Gone' is not registered" in reason.message


def test_due_tasks_wait_for_capacity_with_their_place_in_line() -> None:
    h = Harness()
    for n in range(3):
        h.core.submit(f"q{n}", TaskTrigger.OneTime(), "Ok")
    h.core.tick()  # due and queued; no executor has taken them
    reasons = [_info(h, f"q{n}").waiting_for for n in range(3)]
    assert [r.kind for r in reasons] == ["capacity"] * 3
    assert [r.details["ahead"] for r in reasons] == [0, 1, 2]
    assert reasons[2].message == "due, waiting for a light executor: 2 ahead of it (every light executor's window is full)"
    assert _info(h, "q2").next_run_at_ms is None
    places = h.core.places_in_line()  # what a listing computes once
    assert places == {"q0": 0, "q1": 1, "q2": 2}
    assert h.core.info(h.core.tasks["q2"], places).waiting_for == reasons[2]
    # A listing of a few rows counts only theirs, in one pass over the queue.
    shown = [h.core.tasks[k] for k in ("q2", "q0")]
    assert h.core.places_of(shown) == {"q0": 0, "q2": 2}


def test_a_listing_of_a_very_long_queue_does_not_count_places(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard lists rows every second: past PLACES_SCAN_MAX queued entries their
    places are not counted (the reason says how many are due); ``why`` still counts."""
    h = Harness()
    for n in range(5):
        h.core.submit(f"q{n}", TaskTrigger.OneTime(), "Ok")
    h.core.tick()
    monkeypatch.setattr(explain, "PLACES_SCAN_MAX", 4)
    places = h.core.places_of([h.core.tasks["q3"]])
    assert places == {"q3": None}
    reason = h.core.info(h.core.tasks["q3"], places).waiting_for
    assert reason.details["ahead"] is None
    assert reason.message == "due, waiting for a light executor: one of up to 5 due (every light executor's window is full)"
    assert _info(h, "q3").waiting_for.details["ahead"] == 3  # counted for one task


def test_a_run_with_no_executor_room_on_its_nodes_waits_for_capacity_there() -> None:
    h = Harness()
    _nodes(h, charging=True)
    h.core.submit("u", TaskTrigger.OneTime(), "Ok", constraints=CHARGING)
    h.core.tick()
    (run,) = h.core.take_ready(10)
    h.core.unplaced(run.key, run.run_id)
    reason = _info(h, "u").waiting_for
    assert reason.kind == "capacity" and "no executor room" in reason.message


def test_a_run_handed_over_but_not_begun_waits_for_a_slot() -> None:
    h = Harness()
    h.core.submit("s", TaskTrigger.OneTime(), "Ok")
    h.core.tick()
    h.core.take_ready(10)
    info = _info(h, "s")
    assert info.state is TaskState.ENQUEUED and info.waiting_for.kind == "capacity"
    assert "handed to an executor" in info.waiting_for.message


def test_a_window_not_open_yet() -> None:
    h = Harness()
    h.core.submit("win", TaskTrigger.Windowed(START + ONE_HOUR, START + 2 * ONE_HOUR), "Ok")
    reason = _info(h, "win").waiting_for
    assert reason.kind == "window" and reason.details["opens_at_ms"] == START + ONE_HOUR


def test_doze_alone_holds_a_task_back() -> None:
    h = Harness()
    _nodes(h, doze=True)
    h.core.submit("d", TaskTrigger.OneTime(), "Ok")
    h.step()
    reason = _info(h, "d").waiting_for
    assert reason.kind == "doze" and reason.message.startswith("paused by doze on 2/2 nodes")


def test_an_event_trigger_waits_for_its_event() -> None:
    h = Harness()
    h.core.submit("low", TaskTrigger.BatteryLow, "Ok")
    h.core.submit("uri", TaskTrigger.ContentUri("content://photos"), "Ok")
    assert _info(h, "low").waiting_for.message == "waits for its trigger: battery_low"
    assert _info(h, "uri").waiting_for.message == "waits for its trigger: a content change under content://photos"
    # With nodes known: where they stand. Servers count as charging, so a battery at 10 %
    # is not "low" there: what a user setting battery_level=10 alone is told.
    _nodes(h, battery_level=10)
    assert _info(h, "low").waiting_for.message == (
        "waits for its trigger: battery_low (fires when a node's battery becomes low (at or below its"
        " threshold, not charging); 0/2 node(s) in that state now, 2 charging)")
    first = Harness()  # nodes low from their first sighting (not a transition): it waits for one
    _nodes(first, battery_level=10, charging=False)
    first.core.submit("low", TaskTrigger.BatteryLow, "Ok")
    first.core.submit("idle", TaskTrigger.DeviceIdle, "Ok")
    assert _info(first, "low").waiting_for.message.endswith("; 2/2 node(s) in that state now)")
    assert _info(first, "idle").waiting_for.message == (
        "waits for its trigger: device_idle (fires when a node becomes idle; 0/2 node(s) in that state now)")


def test_a_long_wait_is_logged_once_in_virtual_time(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(config=EngineConfig(wait_warning_ms=10 * ONE_MINUTE))
    _nodes(h, charging=False, battery_level=50)
    h.core.submit("charge", TaskTrigger.OneTime(), "Ok", constraints=CHARGING)
    h.step()
    assert h.core.warn_long_waits() == []
    h.clock.set(START + 9 * ONE_MINUTE)
    assert h.core.warn_long_waits() == []
    h.clock.set(START + 11 * ONE_MINUTE)
    with caplog.at_level(logging.WARNING, logger="kmpray.engine"):
        warned = h.core.warn_long_waits()
        assert h.core.warn_long_waits() == []  # once
    assert warned == [("charge", "constraints unmet: 0/2 nodes satisfy them (2 not charging)")]
    assert [r.getMessage() for r in caplog.records] == [
        "task charge has waited 660 s: constraints unmet: 0/2 nodes satisfy them (2 not charging)"
    ]


def test_explain_gives_the_reason_per_node_and_the_recent_decisions() -> None:
    h = Harness()
    _nodes(h, charging=False, battery_level=50)
    h.core.submit("charge", TaskTrigger.OneTime(), "Ok", constraints=CHARGING)
    h.core.submit("flaky", TaskTrigger.OneTime(), "Flaky", constraints=Constraints(max_retries=3))
    h.step()
    text = h.core.explain("charge")
    assert text is not None
    assert text.splitlines()[:4] == [
        "task charge (Ok): ENQUEUED, attempt 0, 0 finished runs",
        "waiting for: constraints unmet: 0/2 nodes satisfy them (2 not charging)",
        "  node node-a: not charging",
        "  node node-b: not charging",
    ]
    assert "due, but no node satisfies its constraints" in text
    flaky = h.core.explain("flaky")
    assert flaky is not None and "run 1 asked to retry (not yet): retry 1 of 3 in 10000 ms" in flaky
    assert h.core.explain("nope") is None


def test_the_long_wait_check_reads_reason_kinds_cheaply(caplog: pytest.LogCaptureFixture) -> None:
    """warn_long_waits runs every few seconds over every gated, unplaced and parked task:
    it takes each one's kind from lookups (reason_kind, gated kinds once per constraints),
    equal to the full reason's, and a change of kind restarts that task's clock."""
    h = Harness(config=EngineConfig(wait_warning_ms=10 * ONE_MINUTE))
    h.core.is_known = lambda name: name == "Gone"
    _nodes(h, doze=True)
    h.core.submit("dozing", TaskTrigger.OneTime(), "Ok")
    h.core.submit("charge", TaskTrigger.OneTime(), "Ok", constraints=CHARGING)
    h.core.submit("parked", TaskTrigger.OneTime(), "Gone")
    h.core.submit("queued", TaskTrigger.OneTime(), "Ok")
    h.core.tick()
    h.core.take_ready(3)  # queued gets no room: it stays queued (no waiting set, no warning)
    gates: dict[tuple[int, str], str] = {}
    kinds = {k: waiting.reason_kind(h.core, h.core.tasks[k], gates)
             for k in ("dozing", "charge", "parked")}
    assert kinds == {k: _info(h, k).waiting_for.kind for k in kinds} == {
        "dozing": "doze", "charge": "doze", "parked": "worker"}
    assert h.core.warn_long_waits() == []
    h.clock.set(START + 5 * ONE_MINUTE)
    _nodes(h, doze=False, charging=False, battery_level=50)  # "charge" now waits on another reason
    assert _info(h, "charge").waiting_for.kind == "constraints"
    assert h.core.warn_long_waits() == []
    h.clock.set(START + 11 * ONE_MINUTE)
    with caplog.at_level(logging.WARNING, logger="kmpray.engine"):
        warned = dict(h.core.warn_long_waits())
    assert set(warned) == {"parked"}  # "dozing" ran once doze ended; "charge" waited 6 min on its new reason
    h.clock.set(START + 16 * ONE_MINUTE)
    assert [k for k, _ in h.core.warn_long_waits()] == ["charge"]
