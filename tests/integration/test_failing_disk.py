"""A disk that fails for a while, other than by filling up (that is test_full_disk.py): it
turns read-only (ext4's ``errors=remount-ro``) while the engine runs, and a scheduler or
the event broker starting then cannot open its store for writing. Each says why, ends,
and serves again once the disk can be written, with everything acknowledged before.
The disk is a FUSE passthrough (bench/faultfs.py; root, libfuse 3 and mfusepy: skipped
elsewhere) that the test turns read-only and back. Found by `bench chaos --scenario io`
(session 63): the scheduler took the read-only disk for a state dir it could never use
and refused for good; the broker kept an event log in memory for good."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kmpray import ONE_HOUR, ScheduleResult, TaskState, TaskTrigger
from kmpray.errors import StoreWriteFailed

from .helpers import ONE_SHARD, asked, enqueues_again, refusing_anew, until

pytestmark = pytest.mark.ray


@pytest.fixture
def faulty_disk(tmp_path: Path) -> Iterator[Any]:
    from kmpray.bench.faultfs import FaultyDisk, unavailable

    why = unavailable()
    if why:
        pytest.skip(why)
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    disk = FaultyDisk(tmp_path / "backing", tmp_path / "mnt")
    try:
        disk.mount()
    except RuntimeError as exc:  # (no FUSE mounts allowed here)
        pytest.skip(str(exc))
    try:
        yield disk
    finally:
        disk.close()


def _ready(actor: Any) -> bool:
    import ray

    try:
        ray.get(actor.ready.remote(), timeout=5)
    except Exception:
        return False
    return True


@ONE_SHARD  # it follows shard 0's scheduler process
def test_a_scheduler_restarted_onto_a_read_only_disk_serves_again_once_it_is_writable(
        faulty_disk: Any, engines: Any) -> None:
    import ray

    sched = engines.registered(state_dir=faulty_disk.mountpoint / "state")
    assert sched.enqueue("before", TaskTrigger.OneTime(ONE_HOUR), "Echo") is ScheduleResult.SUCCESS
    actor = ray.get_actor("kmpray.scheduler", namespace=sched.namespace)
    first = asked(actor, lambda self: os.getpid())
    faulty_disk.ask(mode="ro")
    try:  # a write fails: the scheduler ends, and the one Ray starts meets the read-only disk
        said = sched.enqueue("refused", TaskTrigger.OneTime(ONE_HOUR), "Echo")
        assert said is ScheduleResult.FAILED_UNKNOWN, said
    except StoreWriteFailed:
        pass
    # (the code before: StoreRefused "cannot be created or opened here ... pass a state_dir
    # this engine's processes can write", and no restart: refused until the engine's)
    until(lambda: refusing_anew(actor, first, "is read-only"), timeout_s=60,
          what="the restarted scheduler saying it cannot write its store for now")
    faulty_disk.ask(mode="ok")
    served_in = enqueues_again(sched)
    # (a restart is ~1.5 s here; without the probe, the 10 s retry first)
    assert served_in < 6, f"served {served_in:.1f} s after the disk was writable"
    assert sched.wait("after", timeout_s=60).state is TaskState.SUCCEEDED
    info = sched.get_task_info("before")
    assert info is not None and info.state is TaskState.ENQUEUED  # acknowledged before: kept
    assert sched.get_task_info("refused") is None  # answered FAILED_UNKNOWN: never stored


def test_the_event_broker_restarted_onto_a_read_only_disk_serves_again_with_every_event(
        faulty_disk: Any, engines: Any) -> None:
    import ray
    from kmpray.bench.chaos_common import terminal_events

    sched = engines.registered(state_dir=faulty_disk.mountpoint / "state")
    assert sched.enqueue("first", TaskTrigger.OneTime(), "Echo") is ScheduleResult.SUCCESS
    assert sched.wait("first", timeout_s=60).state is TaskState.SUCCEEDED
    broker = ray.get_actor("kmpray.broker", namespace=sched.namespace)
    first = asked(broker, lambda self: os.getpid())
    faulty_disk.ask(mode="ro")
    os.kill(first, signal.SIGKILL)
    # (the code before: StoreRefused, and the broker kept its events in memory for good)
    until(lambda: refusing_anew(broker, first, "the broker restarts and serves again once it can write"),
          timeout_s=60, what="the restarted broker saying it cannot open its event log for now")
    faulty_disk.ask(mode="ok")
    until(lambda: _ready(broker), timeout_s=30, what="the broker serving again")
    assert sched.enqueue("second", TaskTrigger.OneTime(), "Echo") is ScheduleResult.SUCCESS
    assert sched.wait("second", timeout_s=60).state is TaskState.SUCCEEDED
    # replayed from the start of the log: the event from before the fault and the one after, once each
    assert terminal_events(sched, {"first", "second"}, timeout_s=60) == {"first": 1, "second": 1}
