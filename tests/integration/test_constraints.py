"""Device state on a real Ray: gating and release, device and content triggers, ordering."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kmpray import Constraints, EngineConfig, InvalidParameters, QualityOfService, TaskState, TaskTrigger

from .helpers import ONE_SHARD, began, blocks_input, next_completion, until, until_task
from .workers import register_all

pytestmark = pytest.mark.ray
ONCE = TaskTrigger.OneTime()


@pytest.fixture
def vengine(svengine: Any) -> Iterator[Any]:
    """The module's shared virtual-time engine (conftest.py), its device overrides cleared
    after each test (before svengine cancels what the test left)."""
    yield svengine
    svengine.clear_device_overrides()


def test_a_gated_task_waits_until_its_gate_opens(vengine: Any) -> None:
    vengine.set_device_state(charging=False, battery_level=50)
    vengine.enqueue("c", ONCE, "Echo", constraints=Constraints(requires_charging=True))
    vengine.enqueue("free", ONCE, "Echo")
    assert vengine.wait("free", timeout_s=30).state is TaskState.SUCCEEDED
    until(lambda: vengine.status()["gated"] == 1, what="the task to be held by its gate")
    info = vengine.get_task_info("c")
    assert info.state is TaskState.ENQUEUED and info.next_run_at_ms is None
    nodes = len(vengine.device_states())
    assert info.waiting_for.kind == "constraints"
    assert info.waiting_for.message == f"constraints unmet: 0/{nodes} nodes satisfy them ({nodes} not charging)"
    assert "waiting for: constraints unmet" in vengine.explain("c")
    assert "constraints unmet" in str(vengine.list_tasks(TaskState.ENQUEUED))  # the WAITING FOR column
    vengine.set_device_state(charging=True)
    done = vengine.wait("c", timeout_s=30)
    assert done.state is TaskState.SUCCEEDED and done.waiting_for is None
    assert "handed to executor" in vengine.explain("c")


def test_battery_low_trigger_fires_on_each_transition(vengine: Any) -> None:
    vengine.set_device_state(charging=False, battery_level=60)
    vengine.enqueue("low", TaskTrigger.BatteryLow, "Echo")
    sub = vengine.events.subscribe()
    assert vengine.get_task_info("low").run_count == 0
    vengine.set_device_state(battery_level=10)
    assert next_completion(sub, "low").success
    vengine.set_device_state(battery_level=60)
    vengine.set_device_state(battery_level=5)
    assert next_completion(sub, "low").success
    info = vengine.get_task_info("low")
    assert info.run_count == 2 and info.state is TaskState.ENQUEUED  # re-armed until cancelled


def test_content_uri_fires_on_notify_and_on_real_file_changes(vengine: Any, tmp_path: Path) -> None:
    watched = tmp_path / "photos"
    watched.mkdir()
    uri = watched.as_uri()
    vengine.enqueue("photos", TaskTrigger.ContentUri(uri), "Echo")
    sub = vengine.events.subscribe()
    assert vengine.notify_content_change(uri + "synthesis/x") == 0
    assert vengine.notify_content_change(uri + "/a.jpg") == 1
    with pytest.raises(InvalidParameters, match=r"uri: .media/photos/a.jpg. has no valid scheme"):
        vengine.notify_content_change("media/photos/a.jpg")  # fired nothing, silently
    next_completion(sub, "photos")
    assert vengine.get_task_info("photos").run_count == 1
    import time

    deadline = time.monotonic() + 30
    while vengine.get_task_info("photos").run_count < 2 and time.monotonic() < deadline:
        (watched / "b.jpg").write_bytes(str(time.monotonic()).encode())  # a real change on disk
        time.sleep(0.5)  # the watcher polls once a second: keep changing until it has looked
    assert vengine.get_task_info("photos").run_count >= 2


def test_bad_device_input_is_a_clear_error_and_changes_nothing(vengine: Any) -> None:
    before = vengine.device_states()
    with pytest.raises(ValueError, match="unknown node"):
        vengine.set_device_state(node_id="not-a-node", charging=False)
    with pytest.raises(ValueError, match="unknown field"):
        vengine.set_device_state(charge=False)
    with pytest.raises(ValidationError, match="battery_level"):
        vengine.set_device_state(battery_level=150)
    assert vengine.device_states() == before


def test_when_capacity_is_short_expedited_then_high_default_low(engines: Any, tmp_path: Path) -> None:
    sched = engines(config=EngineConfig(executors=1, executor_concurrency=1, executor_window=1))
    register_all(sched)
    inp, started, release = blocks_input(tmp_path, "blocker")
    sched.enqueue("blocker", ONCE, "Blocks", input=inp)
    until(began(started), what="the blocker to hold the only slot")
    log = tmp_path / "order"
    for tid, qos, exp in [("low", "LOW", False), ("default", "DEFAULT", False), ("high", "HIGH", False),
                          ("expedited", "LOW", True)]:
        c = Constraints(qos=QualityOfService(qos), expedited=exp)
        sched.enqueue(tid, ONCE, "Echo", input=json.dumps({"log": str(log)}), constraints=c)
    release.touch()
    sched.wait("low", timeout_s=30)
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["expedited", "high", "default", "low"]


def test_asking_about_a_refused_id_says_why_it_was_refused(vengine: Any) -> None:
    """The commonest answer to "why isn't my task running?": it was never accepted. A wait
    or ``explain`` (``kmpray why``) for an id whose enqueue was refused says so, with the
    reason; an id never enqueued gets the plain answer."""
    import pickle

    from kmpray import ScheduleResult, TaskRequest
    from kmpray.client import TaskNotFound

    assert vengine.enqueue("refused-1", ONCE, "NoSuchWorker") is ScheduleResult.REJECTED_INVALID_PARAMS
    (bad,) = vengine.enqueue_many([TaskRequest("Echo", id="refused-2", input="x" * 2_000_000)])
    assert bad is ScheduleResult.REJECTED_INVALID_PARAMS
    for ask in (vengine.explain, lambda i: vengine.wait(i, timeout_s=5), lambda i: vengine.wait([i], progress=True)):
        with pytest.raises(TaskNotFound) as exc:
            ask("refused-1")
        assert str(exc.value) == ("no task or chain 'refused-1'; its enqueue was refused: REJECTED_INVALID_PARAMS: "
                                  "worker_class_name: 'NoSuchWorker' is not a registered worker")
    with pytest.raises(TaskNotFound, match=r"^no task or chain 'refused-2'; its enqueue was refused: "
                                           r"REJECTED_INVALID_PARAMS: input: "):
        vengine.wait("refused-2", timeout_s=5)
    with pytest.raises(TaskNotFound) as never:
        vengine.explain("never-enqueued")
    assert str(never.value) == "no task or chain 'never-enqueued'" and never.value.refused is None
    again = pickle.loads(pickle.dumps(exc.value))
    assert (type(again), again.id, str(again)) == (TaskNotFound, "refused-1", str(exc.value))


def test_device_overrides_and_the_gates_they_close_survive_an_oracle_restart(engines: Any) -> None:
    """A simulated device state (``set_device_state``) is engine state: the oracle's crash
    must not put the probes back under the scheduler, which would open the gate it closed
    (the task below ran at the restarted oracle's first probe round, before session 49).
    The schedulers keep a copy; the oracle gives it back to a restarted scheduler."""
    from .helpers import asked, restarted

    sched = engines(config=EngineConfig(probe_interval_s=0.2))
    register_all(sched)
    sched.set_device_state(charging=False, battery_level=50)
    sched.enqueue("c", ONCE, "Echo", constraints=Constraints(requires_charging=True))
    until(lambda: sched.status()["gated"] == 1, what="the task to be held by its gate")

    def the_gate_stays_closed_over_an_oracle_restart() -> None:
        oracle = restarted("kmpray.oracle", sched.namespace)
        rounds = asked(oracle, lambda self: self.rounds)
        until(lambda: asked(oracle, lambda self: self.rounds) >= rounds + 2,
              what="two probe rounds of the new oracle")
        assert {s.charging for s in sched.device_states().values()} == {False}
        assert sched.get_task_info("c").state is TaskState.ENQUEUED
        assert sched.status()["gated"] == 1

    the_gate_stays_closed_over_an_oracle_restart()
    restarted("kmpray.scheduler", sched.namespace)  # it takes the overrides back from the oracle as it starts
    assert sched.get_task_info("c").state is TaskState.ENQUEUED  # served (after its start) by the new one
    the_gate_stays_closed_over_an_oracle_restart()  # and gives them back to the oracle
    sched.clear_device_overrides()  # the probes again: this server counts as charging
    assert sched.wait("c", timeout_s=30).state is TaskState.SUCCEEDED


@ONE_SHARD  # with two, shard 1's scheduler would still hold the overrides
def test_device_overrides_survive_the_oracle_and_the_scheduler_killed_together(engines: Any) -> None:
    """Each restarted empty and took back the other's nothing: the probes came back and
    opened the gate the overrides had closed (the task below ran). The scheduler keeps the
    overrides in its store too, and one Ray restarted begins with them."""
    import ray

    from .helpers import asked, killed_together

    sched = engines(config=EngineConfig(probe_interval_s=0.2))
    register_all(sched)
    sched.enqueue("warm", ONCE, "Echo")  # an executor holds the class (both lose their copies of it too)
    assert sched.wait("warm", timeout_s=30).state is TaskState.SUCCEEDED
    sched.set_device_state(charging=False, battery_level=50)
    sched.enqueue("c", ONCE, "Echo", constraints=Constraints(requires_charging=True))
    until(lambda: sched.status()["gated"] == 1, what="the task to be held by its gate")
    killed_together(sched.namespace, "kmpray.oracle", "kmpray.scheduler")
    oracle = ray.get_actor("kmpray.oracle", namespace=sched.namespace)
    until(lambda: asked(oracle, lambda self: self.rounds) >= 2, what="two probe rounds of the new oracle")
    assert {s.charging for s in sched.device_states().values()} == {False}
    until(lambda: sched.status()["gated"] == 1, what="the task at its gate again (its class taken back)",
          explain=lambda: sched.explain("c"))
    assert sched.get_task_info("c").state is TaskState.ENQUEUED
    sched.clear_device_overrides()  # the probes again: this server counts as charging
    assert sched.wait("c", timeout_s=30).state is TaskState.SUCCEEDED


def test_a_write_or_a_device_change_while_the_scheduler_is_down_sets_its_trigger_off_once(
        engines: Any, tmp_path: Path) -> None:
    """What a restarted scheduler first saw was a baseline only, until session 50: a file
    written before the watcher's first look at its path (right after ``enqueue``, or while
    the scheduler was down: the test above keeps writing until the watcher has looked), and
    a device state entered while it was down (its first states were a first sighting), set
    nothing off. Now each fires once: the first look counts files modified since the task
    was armed, and the store keeps the device states the scheduler saw last."""
    from .helpers import asked, restarted

    sched = engines(config=EngineConfig(probe_interval_s=0.2))
    register_all(sched)
    watched = tmp_path / "inbox"
    watched.mkdir()
    sched.enqueue("inbox", TaskTrigger.ContentUri(watched.as_uri()), "Echo")
    sched.enqueue("clean", TaskTrigger.StorageLow, "Echo")
    (watched / "a.txt").write_text("a")  # before the watcher's first look at the path
    until_task(sched, "inbox", lambda t: t.run_count == 1, what="the write's run")

    def while_down() -> None:
        (watched / "b.txt").write_text("b")
        sched.set_device_state(storage_low=True)  # the oracle's push waits for the new scheduler

    new = restarted("kmpray.scheduler", sched.namespace, while_down=while_down)
    until(lambda: (sched.get_task_info("inbox").run_count, sched.get_task_info("clean").run_count) == (2, 1),
          what="one run of each trigger set off while the scheduler was down",
          explain=lambda: (sched.explain("inbox"), sched.explain("clean")))
    polls = asked(new, lambda self: self._watcher.polls)
    until(lambda: asked(new, lambda self: self._watcher.polls) >= polls + 2, what="two more polls")
    for name, runs in (("inbox", 2), ("clean", 1)):  # each once; armed again
        info = sched.get_task_info(name)
        assert (info.run_count, info.state) == (runs, TaskState.ENQUEUED), name


def test_a_watched_path_is_looked_at_while_an_executor_does_not_answer(engines: Any, tmp_path: Path) -> None:
    """The file watch was a step of the round that also pings every executor, and a ping
    waits up to ``ping_timeout_s`` for one that does not answer (a lost node's, a stopped
    process's): until session 56 a write to a watched path set its task off only after
    that wait (here 60 s). Pings now go in a loop of their own."""
    import os
    import signal

    import ray

    from .helpers import asked, stop_process

    sched = engines(config=EngineConfig(executors=2, ping_timeout_s=60))
    register_all(sched)
    scheduler = ray.get_actor("kmpray.scheduler", namespace=sched.namespace)
    stuck = asked(ray.get_actor("kmpray.executor.1", namespace=sched.namespace), lambda self: os.getpid())
    watched = tmp_path / "inbox"
    watched.mkdir()
    sched.enqueue("inbox", TaskTrigger.ContentUri(watched.as_uri()), "Echo")
    stop_process(stuck)
    try:
        polls = asked(scheduler, lambda self: self._watcher.polls)
        until(lambda: asked(scheduler, lambda self: self._watcher.polls) >= polls + 2, timeout_s=20,
              what="two looks at the watched path while a ping waits")
        (watched / "a.txt").write_text("a")
        until_task(sched, "inbox", lambda t: t.run_count == 1, timeout_s=20,
                   what="the write's run (on the other executor)")
    finally:
        os.kill(stuck, signal.SIGCONT)
    assert sched.get_task_info("inbox").state is TaskState.ENQUEUED  # armed again


@ONE_SHARD  # it breaks shard 0's scheduler; the task must live there
def test_a_failing_housekeeping_step_does_not_stop_the_file_watch(engines: Any, tmp_path: Path) -> None:
    """Housekeeping's steps ran in one try: until session 56 a step failing before the file
    watch (here the eviction of finished rows, broken on purpose every second) skipped
    the watch too, and a write to a watched path never set its task off."""
    import ray

    from .helpers import asked

    sched = engines()
    register_all(sched)
    scheduler = ray.get_actor("kmpray.scheduler", namespace=sched.namespace)

    def break_eviction(self: Any) -> bool:
        async def evict() -> None:
            raise RuntimeError("eviction broken on purpose")

        self._evict_finished = evict
        return True

    assert asked(scheduler, break_eviction)
    watched = tmp_path / "inbox"
    watched.mkdir()
    sched.enqueue("inbox", TaskTrigger.ContentUri(watched.as_uri()), "Echo")
    (watched / "a.txt").write_text("a")
    until_task(sched, "inbox", lambda t: t.run_count == 1, what="the write's run")
