"""Device state: the gate predicate, gating and release, device triggers, ordering, profiles."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmpray import Constraints, NetworkType, QualityOfService, ScheduleResult, TaskState, TaskTrigger
from kmpray.device import DeviceState, satisfies, transitions

from .conftest import Harness

UNMETERED = {NetworkType.UNMETERED, NetworkType.TEMPORARILY_UNMETERED}

constraints = st.builds(
    Constraints,
    requires_network=st.booleans(),
    network_type=st.sampled_from(list(NetworkType)),
    requires_unmetered_network=st.booleans(),
    requires_charging=st.booleans(),
    requires_battery_not_low=st.booleans(),
    requires_storage_not_low=st.booleans(),
    requires_device_idle=st.booleans(),
    allow_while_idle=st.booleans(),
    expedited=st.booleans(),
)
states = st.builds(
    DeviceState,
    network_connected=st.booleans(),
    network_type=st.sampled_from([t for t in NetworkType if t is not NetworkType.NOT_REQUIRED]),
    roaming=st.booleans(),
    charging=st.booleans(),
    battery_level=st.integers(0, 100),
    storage_low=st.booleans(),
    idle=st.booleans(),
    doze=st.booleans(),
)


def expected(c: Constraints, s: DeviceState) -> bool:
    """The rules written out once more, independently, as a table of conditions."""
    battery_low = not s.charging and s.battery_level <= 15
    net = {
        NetworkType.NOT_REQUIRED: True,
        NetworkType.CONNECTED: s.network_connected,
        NetworkType.UNMETERED: s.network_connected and s.network_type in UNMETERED,
        NetworkType.NOT_ROAMING: s.network_connected and not s.roaming,
        NetworkType.METERED: s.network_connected and s.network_type is NetworkType.METERED,
        NetworkType.TEMPORARILY_UNMETERED: s.network_connected
        and s.network_type is NetworkType.TEMPORARILY_UNMETERED,
    }[c.network_type]
    conditions = [
        not c.requires_network or net,
        not c.requires_unmetered_network or (s.network_connected and s.network_type in UNMETERED),
        not c.requires_charging or s.charging,
        not c.requires_battery_not_low or not battery_low,
        not c.requires_storage_not_low or not s.storage_low,
        not c.requires_device_idle or s.idle,
        not s.doze or c.allow_while_idle or c.expedited,
    ]
    return all(conditions)


@given(constraints, states)
def test_gate_predicate_over_every_combination(c: Constraints, s: DeviceState) -> None:
    assert satisfies(c, s) is expected(c, s)


def test_a_server_without_battery_satisfies_power_constraints() -> None:
    server = DeviceState()
    assert satisfies(Constraints(requires_charging=True, requires_battery_not_low=True), server)


def test_transitions_fire_on_entering_a_state_only() -> None:
    ok, low = DeviceState(charging=False, battery_level=50), DeviceState(charging=False, battery_level=10)
    assert transitions(ok, low) == ["battery_low"]
    assert transitions(low, low) == []
    assert transitions(low, ok) == ["battery_okay"]
    assert transitions(None, low) == []
    assert transitions(DeviceState(), DeviceState(storage_low=True, idle=True)) == ["storage_low", "device_idle"]


def test_gated_task_waits_then_runs_on_a_node_that_satisfies_it(h: Harness) -> None:
    h.core.set_devices({"n1": DeviceState(charging=False, battery_level=50), "n2": DeviceState(charging=False)})
    h.core.submit("c", TaskTrigger.OneTime(), "Ok", constraints=Constraints(requires_charging=True))
    h.core.submit("free", TaskTrigger.OneTime(), "Ok")
    assert [(d.key, d.nodes) for d in h.step()] == [("free", None)]
    assert h.state("c") == "ENQUEUED" and h.core.gated_count() == 1
    h.core.set_devices({"n1": DeviceState(charging=False), "n2": DeviceState(charging=True)})
    [d] = h.step()
    assert (d.key, d.nodes) == ("c", ("n2",))


def test_a_network_type_given_alone_requires_that_network(h: Harness) -> None:
    """Android's one network constraint is ``setRequiredNetworkType(UNMETERED)``: naming the
    type requires the network. Until session 47 ``Constraints(network_type=UNMETERED)``
    without ``requires_network=True`` was ignored, and the task ran on a metered node."""
    assert Constraints(network_type=NetworkType.UNMETERED).requires_network is True
    assert Constraints(networkType="METERED").requires_network is True
    assert Constraints(network_type=NetworkType.NOT_REQUIRED).requires_network is False
    assert Constraints().requires_network is False
    # said both ways, the explicit flag stands (a builder may pass its own switch)
    assert Constraints(requires_network=False, network_type=NetworkType.UNMETERED).requires_network is False
    wanted = Constraints(network_type=NetworkType.UNMETERED)
    assert Constraints.model_validate(wanted.model_dump(exclude_defaults=True)) == wanted
    h.core.set_devices({"n": DeviceState(network_type=NetworkType.METERED)})
    h.core.submit("wifi", TaskTrigger.OneTime(), "Ok", constraints=wanted)
    h.core.submit("any", TaskTrigger.OneTime(), "Ok", constraints=Constraints(network_type=NetworkType.CONNECTED))
    assert [d.key for d in h.step()] == ["any"]
    assert h.state("wifi") == "ENQUEUED" and h.core.gated_count() == 1
    h.core.set_devices({"n": DeviceState(network_type=NetworkType.UNMETERED)})
    assert [d.key for d in h.step()] == ["wifi"]


def test_a_closing_gate_stops_new_starts(h: Harness) -> None:
    h.core.set_devices({"n": DeviceState()})
    h.core.submit("a", TaskTrigger.OneTime(initial_delay_ms=10), "Ok", constraints=Constraints(requires_charging=True))
    h.core.set_devices({"n": DeviceState(charging=False)})
    assert h.advance(10) == [] and h.state("a") == "ENQUEUED"


def test_delayed_work_no_node_satisfies_goes_to_its_gate_as_its_timer_fires(h: Harness) -> None:
    """A timer firing for work no node satisfies puts it at its gate at once: it went to the
    ready queue (in due order) and the dispatch turns set it aside there, 2,000 a turn, while
    every timer due after it waited (100,000 such tasks: 8.3 -> 4.4 us each in the core,
    session 48). A worker not registered is still the dispatch turn's to fail; an eligible
    task still goes to the ready queue; the gate opening runs them."""
    from kmpray.device import DeviceState

    h.core.set_devices({"n": DeviceState(charging=False)})
    charging = Constraints(requires_charging=True)
    for i in range(5):
        h.core.submit(f"g{i}", TaskTrigger.OneTime(initial_delay_ms=10), "Ok", constraints=charging)
    h.workers["Gone"] = h.workers["Ok"]
    h.core.submit("nobody", TaskTrigger.OneTime(initial_delay_ms=10), "Gone", constraints=charging)
    h.core.submit("free", TaskTrigger.OneTime(initial_delay_ms=10), "Ok")
    del h.workers["Gone"]  # (as after a restart, before anyone registers it again)
    h.clock.advance(10)
    h.core.tick()
    assert h.core.gated_count() == 5 and h.core.ready_count() == 2  # "nobody" and "free"
    assert "waits for a device state change" in h.core.explain("g0")
    assert [d.key for d in h.step()] == ["free"]
    assert h.state("nobody") == "FAILED"  # not registered: failed when due (the harness knows no
    # worker a restart forgot; the actor parks such a run), not held at the gate
    h.core.set_devices({"n": DeviceState(charging=True)})
    assert sorted(d.key for d in h.step()) == [f"g{i}" for i in range(5)]


def test_battery_low_trigger_fires_on_the_transition_and_rearms(h: Harness) -> None:
    ok, low = DeviceState(charging=False, battery_level=60), DeviceState(charging=False, battery_level=5)
    h.core.set_devices({"a": ok, "b": ok})
    h.core.submit("t", TaskTrigger.BatteryLow, "Ok")
    assert h.step() == []
    h.core.set_devices({"a": ok, "b": low})
    [d] = h.step()
    assert d.nodes == ("b",)  # placed on the node in that state
    assert h.state("t") == "ENQUEUED"  # re-armed, not finished
    h.core.set_devices({"a": ok, "b": low})
    assert h.step() == []  # no new transition, no run
    h.core.set_devices({"a": low, "b": low})
    assert len(h.step()) == 1
    assert h.core.latest("t").run_count == 2  # type: ignore[union-attr]


def test_a_transition_while_the_scheduler_was_down_fires_once_after_its_restart(h: Harness) -> None:
    """The states it last saw come back from its store (``seen_before``): storage that went
    low during the restart fires StorageLow once; a node it never saw fires nothing."""
    ok, low = DeviceState(), DeviceState(storage_low=True)
    h.core.set_devices({"a": ok})
    h.core.submit("clean", TaskTrigger.StorageLow, "Ok")
    h.core.submit("idle", TaskTrigger.DeviceIdle, "Ok")
    assert h.step() == []
    seen = dict(h.core.devices)
    h.restart()
    assert h.core.devices == {}
    now = {"a": low, "new": DeviceState(storage_low=True, idle=True)}
    assert h.core.set_devices(now, seen_before=seen) == ["storage_low"]
    [d] = h.step()
    assert (d.key, d.nodes) == ("clean", ("a", "new"))  # any node in that state; "idle" did not fire
    assert h.core.set_devices(now, seen_before=seen) == []
    assert h.step() == []  # the push that follows the restart is no second transition
    # Without what it saw, the same first push after a restart is a first sighting.
    h.restart()
    assert h.core.set_devices({"a": low}) == []


def test_content_uri_matches_descendants_and_coalesces(h: Harness) -> None:
    h.core.submit("photos", TaskTrigger.ContentUri("file:///data/photos"), "Ok")
    assert h.core.fire("content_uri", "file:///data/photosynthesis") == 0
    assert h.core.fire("content_uri", "file:///data/photos/a.jpg") == 1
    h.core.fire("content_uri", "file:///data/photos/b.jpg")  # still queued: coalesces
    assert len(h.step()) == 1 and h.step() == []


def test_a_change_while_the_task_runs_queues_one_more_run_across_a_scheduler_restart(h: Harness) -> None:
    """The run the change owes is stored with the row (until session 50 it was in memory
    only, and a scheduler restart before the run ended lost it)."""
    from kmpray.results import Success

    h.core.submit("u", TaskTrigger.ContentUri("file:///d"), "Ok")
    assert h.core.fire("content_uri", "file:///d/a") == 1
    h.core.tick()
    [d] = h.core.take_ready(10)
    h.flush()
    assert h.core.fire("content_uri", "file:///d/b") == 1  # while it runs
    h.restart(adopt=lambda core: core.adopt([(d.key, d.run_id)]))
    assert h.core.tasks["u"].refire
    h.core.complete(d.key, d.run_id, Success())  # the adopted run ends
    assert [x.key for x in h.step()] == ["u"] and h.step() == []  # one more run, then armed
    assert h.core.latest("u").run_count == 2  # type: ignore[union-attr]


def test_priority_expedited_then_qos_then_due(h: Harness) -> None:
    for tid, qos, exp in [("low", "LOW", False), ("default", "DEFAULT", False), ("high", "HIGH", False),
                          ("exp-low", "LOW", True)]:
        h.core.submit(tid, TaskTrigger.OneTime(), "Ok", constraints=Constraints(qos=QualityOfService(qos), expedited=exp))
    h.core.tick()
    assert [d.key for d in h.core.take_ready(10)] == ["exp-low", "high", "default", "low"]


def test_low_priority_ages_instead_of_starving(h: Harness) -> None:
    low = Constraints(qos=QualityOfService.LOW)
    h.core.submit("old-low", TaskTrigger.OneTime(), "Ok", constraints=low)
    h.core.tick()  # ready now, but capacity is short for a long while
    h.clock.set(h.clock.now_ms() + 2 * h.core.config.qos_aging_ms + 1)
    h.core.submit("new-high", TaskTrigger.OneTime(), "Ok", constraints=Constraints(qos=QualityOfService.HIGH))
    h.core.tick()
    assert [d.key for d in h.core.take_ready(1)] == ["old-low"]


def test_ios_drops_constraints_it_cannot_honour(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """...saying so once per set of fields, not once per task (a bulk of 100,000 tasks
    was 100,000 warning lines until session 46)."""
    import logging

    from kmpray import unique_work

    monkeypatch.setattr(unique_work, "_IGNORED_SAID", set())
    h = Harness("ios")
    c = Constraints(requires_charging=True, requires_network=True)
    with caplog.at_level(logging.WARNING):
        for i in range(3):
            out = h.core.submit(f"t{i}", TaskTrigger.OneTime(), "Ok", constraints=c)
            assert out.result is ScheduleResult.SUCCESS
    kept = h.core.latest("t2").constraints  # type: ignore[union-attr]
    assert (kept.requires_charging, kept.requires_network) == (False, True)
    assert caplog.text.count("platform 'ios' ignores requires_charging") == 1


def test_windowed_task_whose_constraints_stay_unmet_fails_at_window_end(h: Harness) -> None:
    h.core.set_devices({"n": DeviceState(charging=False)})
    now = h.clock.now_ms()
    h.core.submit("w", TaskTrigger.Windowed(now, now + 1_000), "Ok", constraints=Constraints(requires_charging=True))
    h.advance(1_001)
    rec = h.core.latest("w")
    assert rec is not None and rec.state is TaskState.FAILED and rec.result.message == "window expired"  # type: ignore[union-attr]


def test_placeable_counts_actors_a_cluster_can_hold_at_once() -> None:
    from kmpray.placement import UNBOUNDED, heavy_demand, placeable

    nodes = [{"CPU": 1.0}, {"CPU": 1.0, "heavy": 1.0}, {"CPU": 8.0, "heavy": 2.0}]
    assert placeable(nodes, heavy_demand(1, {"heavy": 1})) == 3
    assert placeable(nodes, heavy_demand(0, {"heavy": 1})) == 3
    assert placeable(nodes, heavy_demand(4, {"heavy": 1})) == 2
    assert placeable(nodes, heavy_demand(1, {"gpu": 1})) == 0  # no node has it
    assert placeable(nodes, heavy_demand(0, {})) == UNBOUNDED
    assert placeable([], heavy_demand(1, {})) == 0


def test_a_replacement_does_not_inherit_the_wait_of_the_work_it_replaced(h: Harness) -> None:
    """A REPLACE reuses the key. The old work's place among the tasks waiting for a gate,
    for executor room or for their worker is not the new work's: a gate opening, room
    freeing or the worker registering again must not start it before its own trigger says
    (found by the simulation's device-state schedule: seed 1068 of 1,000 steps)."""
    from kmpray import ExistingWorkPolicy

    replace = ExistingWorkPolicy.REPLACE
    h.core.set_devices({"n": DeviceState(idle=False)})
    h.core.submit("g", TaskTrigger.OneTime(), "Ok", constraints=Constraints(requires_device_idle=True))
    assert h.step() == [] and h.core.is_gated("g")  # due, but no node is idle
    h.core.submit("g", TaskTrigger.BatteryOkay, "Ok", constraints=Constraints(existing_work_policy=replace))
    assert not h.core.is_gated("g")
    h.core.set_devices({"n": DeviceState(idle=True)})  # the old gate opens; no battery_okay transition
    assert h.step() == [] and h.state("g") == "ENQUEUED"

    # Waiting for executor room (unplaced), then replaced by work due in a minute.
    h.core.submit("u", TaskTrigger.OneTime(), "Ok")
    h.core.tick()
    d = h.core.take_ready(1)[0]
    h.core.unplaced(d.key, d.run_id)
    assert h.core.is_unplaced("u")
    h.core.submit("u", TaskTrigger.OneTime(initial_delay_ms=60_000), "Ok",
                  constraints=Constraints(existing_work_policy=replace))
    h.core.release_unplaced()
    assert h.step() == [] and h.state("u") == "ENQUEUED"
    assert [x.key for x in h.advance(60_000)] == ["u"]  # on its own time


def test_bulk_payloads_carry_each_requests_own_models_and_dump_a_shared_instance_once(
    monkeypatch,
) -> None:
    from kmpray.client import payloads
    from kmpray.models import TaskRequest

    monkeypatch.setattr(payloads, "_DUMPS", {})  # nothing dumped earlier in this process counts
    charging, heavy = Constraints(requires_charging=True), Constraints(is_heavy_task=True)
    at_noon, at_one = TaskTrigger.Exact(1_800_000_000_000), TaskTrigger.Exact(1_800_000_003_600)
    dumps = []
    real = Constraints.model_dump
    monkeypatch.setattr(Constraints, "model_dump", lambda self, **kw: dumps.append(self) or real(self, **kw))
    reqs = [TaskRequest("W", constraints=charging), TaskRequest("W", constraints=charging),
            TaskRequest("W"), TaskRequest("W", constraints=heavy),
            {"id": "d", "worker_class_name": "W", "constraints": {"expedited": True}, "trigger": at_noon},
            {"id": "e", "worker_class_name": "W", "constraints": heavy, "trigger": at_noon},
            {"id": "f", "worker_class_name": "W", "trigger": at_one}]
    items = payloads.items(reqs)
    assert [i["constraints"] for i in items] == [
        {"requires_charging": True}, {"requires_charging": True}, {}, {"is_heavy_task": True},
        {"expedited": True}, {"is_heavy_task": True}, None]
    assert [i["trigger"]["kind"] for i in items] == ["one_time"] * 4 + ["exact"] * 3
    assert [i["trigger"]["at_epoch_millis"] for i in items[4:]] == [1_800_000_000_000] * 2 + [1_800_000_003_600]
    assert dumps == [charging, TaskRequest.model_fields["constraints"].default, heavy]
