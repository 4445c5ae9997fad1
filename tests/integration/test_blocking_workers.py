"""An async worker that blocks its executor's event loop stalls nothing else (#20)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kmpray import Constraints, EngineConfig, TaskRequest, TaskState, TaskTrigger

from .helpers import ONE_SHARD, blocks_input, until
from .workers import register_all

# Counts one scheduler's executors and blocks them (per shard, each shard has its own).
pytestmark = [pytest.mark.ray, ONE_SHARD]
ONCE = TaskTrigger.OneTime()


def _ledger(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in path.read_text().splitlines()] if path.exists() else []  # type: ignore[misc]


@pytest.fixture
def engine(engines: Any) -> Any:
    sched = engines(config=EngineConfig(executors=0))  # real time, the default: one executor per CPU (two)
    register_all(sched)
    assert sched.status()["executors"] == 2
    return sched


def _blocked(sched: Any, n: int) -> None:
    until(lambda: len(sched.status()["blocked_executors"]) == n, timeout_s=20, what=f"{n} blocked executor(s)")


def test_a_blocking_worker_does_not_stall_the_other_runs(engine: Any, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    sub = engine.events.subscribe()
    engine.enqueue("blocker", ONCE, "Blocker", input=json.dumps({"ledger": str(ledger), "s": 5}))
    _blocked(engine, 1)
    (blocked,) = engine.status()["blocked_executors"]
    assert (blocked["worker"], blocked["task"]) == ("Blocker", "blocker")
    ids = [f"t{i}" for i in range(20)]
    engine.enqueue_many([TaskRequest("Ledgered", json.dumps({"ledger": str(ledger)}), id=i) for i in ids])
    assert all(engine.wait(i, timeout_s=30).state is TaskState.SUCCEEDED for i in ids)
    # All twenty finished while the blocker still held its executor's loop.
    assert ("end", "blocker") not in _ledger(ledger)
    assert engine.get_task_info("blocker").state is TaskState.RUNNING
    assert engine.wait("blocker", timeout_s=30).state is TaskState.SUCCEEDED
    starts = Counter(t for kind, t in _ledger(ledger) if kind == "start")
    assert starts == Counter({"blocker": 1, **dict.fromkeys(ids, 1)})  # nothing ran twice
    notice = None
    while notice is None and (event := sub.get(timeout_s=10)) is not None:
        if event.kind == "progress" and event.task_id == "blocker" and "event loop" in (event.message or ""):
            notice = event.message
    assert notice is not None and notice.startswith("Blocker blocked its executor's event loop for ")
    assert "blocking = True" in notice
    until(lambda: engine.status()["blocked_executors"] == [], timeout_s=10, what="the loop to be free again")
    status = engine.status()
    assert status["loop_blocks"] == {"Blocker": 1}
    assert len(status["executor_lag_ms"]) == 2 and all(lag < 1_000 for lag in status["executor_lag_ms"])


def test_with_every_loop_blocked_runs_wait_with_a_reason_then_run_when_one_frees(
    engine: Any, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    engine.enqueue("long", ONCE, "Blocker", input=json.dumps({"ledger": str(ledger), "s": 6}))
    _blocked(engine, 1)
    engine.enqueue("short", ONCE, "Blocker", input=json.dumps({"ledger": str(ledger), "s": 2}))
    _blocked(engine, 2)
    ids = [f"w{i}" for i in range(20)]
    engine.enqueue_many([TaskRequest("Ledgered", json.dumps({"ledger": str(ledger)}), id=i) for i in ids])
    status = engine.status()
    assert status["waiting_for"] is not None
    assert "every light executor's event loop is blocked" in status["waiting_for"]
    assert engine.get_task_info("w0").state is TaskState.ENQUEUED
    assert all(engine.wait(i, timeout_s=30).state is TaskState.SUCCEEDED for i in ids)
    entries = _ledger(ledger)
    assert ("end", "short") in entries and ("end", "long") not in entries  # ran once one loop was free
    assert entries.index(("end", "short")) < min(entries.index(("start", i)) for i in ids)
    assert engine.wait("long", timeout_s=30).state is TaskState.SUCCEEDED
    starts = Counter(t for kind, t in _ledger(ledger) if kind == "start")
    assert set(starts.values()) == {1} and len(starts) == 22


def test_a_class_marked_blocking_runs_in_a_thread_and_blocks_nothing(engine: Any, tmp_path: Path) -> None:
    """Its constructor too, as a sync worker's: one that loads a model in __init__ blocked
    the loop for as long (the advice named do_work), and no timeout could end it."""
    ledger = tmp_path / "ledger"
    engine.enqueue("init", ONCE, "LoadsInInit")  # 2 s in __init__
    engine.enqueue("init-timed", ONCE, "LoadsInInit", constraints=Constraints(timeout_ms=300, max_retries=0))
    for name in ("m1", "m2"):
        engine.enqueue(name, ONCE, "MarkedBlocker", input=json.dumps({"ledger": str(ledger), "s": 4}))
    until(lambda: sum(1 for k, _ in _ledger(ledger) if k == "start") == 2, what="both marked blockers to start")
    ids = [f"m{i}" for i in range(3, 23)]
    engine.enqueue_many([TaskRequest("Ledgered", json.dumps({"ledger": str(ledger)}), id=i) for i in ids])
    assert all(engine.wait(i, timeout_s=30).state is TaskState.SUCCEEDED for i in ids)
    assert not [e for e in _ledger(ledger) if e[0] == "end"]  # both still running in their threads
    assert engine.status()["blocked_executors"] == []
    assert [engine.wait(n, timeout_s=30).state for n in ("m1", "m2", "init")] == [TaskState.SUCCEEDED] * 3
    timed = engine.wait("init-timed", timeout_s=30)
    assert timed.state is TaskState.FAILED and timed.result.message.endswith("timed out after 300 ms")
    assert engine.status()["loop_blocks"] == {}


def test_after_n_blocks_a_class_runs_in_a_thread_by_itself(engines: Any, tmp_path: Path) -> None:
    from kmpray import EngineConfig

    sched = engines(config=EngineConfig(executors=1, auto_thread_after_blocks=2))
    register_all(sched)
    ledger = tmp_path / "ledger"
    sub = sched.events.subscribe()
    for n in range(3):
        sched.enqueue(f"b{n}", ONCE, "Blocker", input=json.dumps({"ledger": str(ledger), "s": 0.6}))
        assert sched.wait(f"b{n}", timeout_s=30).state is TaskState.SUCCEEDED
    notices = []
    while (event := sub.get(timeout_s=3)) is not None:
        if event.kind == "progress" and "event loop" in (event.message or ""):
            notices.append((event.task_id, event.message))
    assert [t for t, _ in notices] == ["b0", "b1"]  # the third ran in a thread: no block
    assert "from now on that executor runs Blocker's do_work in a thread" in notices[1][1]
    assert sched.status()["loop_blocks"] == {"Blocker": 2}


def test_a_lost_unblocked_notice_does_not_stall_an_executor_for_good(engines: Any) -> None:
    """The "unblocked" notice is a one-way message from the executor's watch thread; if it
    is lost, the next ping the executor answers proves its loop runs, and it serves again."""
    import ray

    sched = engines(config=EngineConfig(executors=1))
    register_all(sched)
    actor = ray.get_actor("kmpray.scheduler", namespace=sched.namespace)
    # A "blocked" notice as the watch thread sends it, never followed by "unblocked".
    fence = ray.get(actor.loop_blocked.remote("light", 0, "?", 0.2, "Ghost", None, []), timeout=30)
    assert fence is not None and fence[1] == 0  # nothing was handed over yet
    assert [b["worker"] for b in sched.status()["blocked_executors"]] == ["Ghost"]
    sched.enqueue("after", ONCE, "Echo", input="x")
    assert sched.wait("after", timeout_s=30).state is TaskState.SUCCEEDED
    assert sched.status()["blocked_executors"] == []


def test_a_scheduler_restarted_while_a_worker_blocks_a_loop_adopts_its_run_and_refuses_late_batches(
    engines: Any, tmp_path: Path
) -> None:
    """A restarted scheduler asks every executor what it holds (``holding(epoch)``). The
    question is answered on a thread of its own (the ``control`` concurrency group): a loop
    blocked past the question's timeout still answers, so the blocker is adopted, not run a
    second time elsewhere, and a batch the dying scheduler sent, queued behind the block, is
    refused when the loop frees. Answered on the loop, the blocker ran twice; with the
    restarted scheduler's start waiting on each executor's ping (on the loop), it served
    only once the block ended, and the late batch ran."""
    import time

    import ray

    from kmpray.protocol import Fence, Run

    sched = engines(config=EngineConfig(ping_timeout_s=3))  # the question's timeout too
    register_all(sched)
    ledger, release = tmp_path / "ledger", tmp_path / "release"
    cfg = {"ledger": str(ledger), "release": str(release)}
    sched.enqueue("blocker", ONCE, "Blocker", input=json.dumps(cfg))
    _blocked(sched, 1)
    (blocked,) = sched.status()["blocked_executors"]
    ns = sched.namespace
    scheduler = ray.get_actor("kmpray.scheduler", namespace=ns)
    epoch = ray.get(scheduler.__ray_call__.remote(lambda self: self.pool.epoch), timeout=30)
    version = ray.get(ray.get_actor("kmpray.oracle", namespace=ns).dump_classes.remote(ns), timeout=30)["Ledgered"][0]
    executor = ray.get_actor(f"kmpray.executor.{blocked['executor']}", namespace=ns)
    # The dying scheduler's last batch to the blocked executor: on its way, behind the block.
    late = Run("late", 1, "Ledgered", version, json.dumps({"ledger": str(ledger)}), None, 0, None, None)
    late_ref = executor.submit.remote([late], Fence(epoch, 10_000))
    ray.kill(scheduler, no_restart=False)
    # The restarted scheduler serves (store restored, runs adopted) while the loop is still
    # blocked: only then is the blocker let go.
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, "the restarted scheduler did not serve while the loop was blocked"
        try:
            actor = ray.get_actor("kmpray.scheduler", namespace=ns)
            ray.get(actor.ready.remote(), timeout=5)
            if ray.get(actor.__ray_call__.remote(lambda self: self.pool.epoch), timeout=5) != epoch:
                break
        except Exception:
            time.sleep(0.1)
    assert sched.get_task_info("blocker").state is TaskState.RUNNING  # adopted
    release.touch()
    ids = [f"after{i}" for i in range(5)]  # served by the restarted scheduler
    sched.enqueue_many([TaskRequest("Ledgered", json.dumps({"ledger": str(ledger)}), id=i) for i in ids])
    assert all(sched.wait(i, timeout_s=60).state is TaskState.SUCCEEDED for i in ids)
    info = sched.wait("blocker", timeout_s=60)
    assert info.state is TaskState.SUCCEEDED and info.run_attempt_count == 1
    # Its result did not ride the answer to the dead scheduler's submit (it did, now and
    # then, when the worker blocked within the reply window: actors/replies.py).
    assert ray.get(executor.__ray_call__.remote(lambda self: self._replies._superseded(epoch)), timeout=30)
    assert ray.get(late_ref, timeout=30).done == []
    starts = Counter(t for kind, t in _ledger(ledger) if kind == "start")
    assert starts == Counter({"blocker": 1, **dict.fromkeys(ids, 1)})  # no "late", nothing twice


def test_a_batch_for_an_executors_earlier_process_is_refused_by_the_process_after_it(
    engine: Any, tmp_path: Path
) -> None:
    """Sent by the Ray path (a remote executor; the local lane only writes to the process it
    knows) before the scheduler saw the executor restart: the earlier process's blocked
    loop may have had the batch withdrawn, and that fence died with it, so the new process
    refuses it (the scheduler runs it again and learns the new process); a batch for the
    process itself is taken."""
    import ray

    from kmpray.protocol import Fence, Misaddressed, Run

    ns = engine.namespace
    scheduler = ray.get_actor("kmpray.scheduler", namespace=ns)
    epoch = ray.get(scheduler.__ray_call__.remote(lambda self: self.pool.epoch), timeout=30)
    version = ray.get(ray.get_actor("kmpray.oracle", namespace=ns).dump_classes.remote(ns), timeout=30)["Ledgered"][0]
    executor = ray.get_actor("kmpray.executor.0", namespace=ns)
    incarnation = ray.get(executor.ping.remote(None), timeout=30)[0]
    ledger = tmp_path / "ledger"

    def run(key: str) -> Run:
        return Run(key, 1, "Ledgered", version, json.dumps({"ledger": str(ledger)}), None, 0, None, None)

    with pytest.raises(ray.exceptions.RayTaskError) as refused:
        ray.get(executor.submit.remote([run("for-earlier")], Fence(epoch, 10_000, "an-earlier-process")), timeout=30)
    assert isinstance(refused.value.cause, Misaddressed)
    assert incarnation in str(refused.value.cause) and "an-earlier-process" in str(refused.value.cause)
    taken = ray.get(executor.submit.remote([run("for-me")], Fence(epoch, 10_001, incarnation)), timeout=30)
    assert taken.incarnation == incarnation
    until(lambda: ("start", "for-me") in _ledger(ledger), timeout_s=20, what="the batch for this process to run")
    assert _ledger(ledger) == [("start", "for-me")]  # the refused one never began


def test_runs_queued_behind_long_runs_go_to_an_executor_with_free_slots(
        engines: Any, tmp_path: Path) -> None:
    """An executor takes runs beyond its slots (its window); behind long runs they waited
    however idle the other executor was: 14 short tasks enqueued after 2 long ones took
    8 s on two executors of 2 slots (session 42's tour). Now runs queue beyond an
    executor's slots only when no executor has one free, and queued runs that have not
    begun are taken back (stealing.py) for an executor with free slots; none runs twice."""
    sched = engines.registered(config=EngineConfig(executors=2, executor_concurrency=2, executor_window=8))
    ledger = tmp_path / "ledger"
    longs = []
    for i in range(2):
        cfg, _started, release = blocks_input(tmp_path, f"long{i}", max_s=60)
        longs.append((f"long{i}", cfg, release))
    shorts = [f"s{i}" for i in range(14)]
    sched.enqueue_many([TaskRequest("Blocks", cfg, id=name) for name, cfg, _ in longs]
                       + [TaskRequest("Ledgered", json.dumps({"ledger": str(ledger)}), id=s) for s in shorts])
    for s in shorts:  # all while both long runs hold their slots
        assert sched.wait(s, timeout_s=30).state is TaskState.SUCCEEDED
    assert all(sched.get_task_info(name).state is TaskState.RUNNING for name, _, _ in longs)
    starts = Counter(t for kind, t in _ledger(ledger) if kind == "start")
    assert starts == Counter(dict.fromkeys(shorts, 1))  # each once
    assert sched.status()["stolen"] >= 1  # (`kmpray status` says so too)
    for _name, _cfg, release in longs:
        release.write_text("1")
    assert all(sched.wait(name, timeout_s=30).state is TaskState.SUCCEEDED for name, _, _ in longs)
    attempts = {s: sched.get_task_info(s).run_attempt_count for s in shorts}
    assert set(attempts.values()) == {1}, attempts  # a run taken back is not an attempt
