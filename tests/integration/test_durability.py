"""Nothing accepted is lost: scheduler kills, executor kills, whole-engine restarts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from kmpray.actors.names import shard_namespace

import kmpray
from kmpray import FIFTEEN_MINUTES, ONE_HOUR, EngineConfig, ScheduleResult, TaskState, TaskTrigger
from kmpray.protocol import RETRY_MARK
from kmpray.shards import shard_of

from .helpers import ONE_SHARD, began, blocks_input, count_runs, process_gone, stop_process, until
from .workers import ALL, register_all

pytestmark = pytest.mark.ray


def _kill(name: str, namespace: str) -> None:
    import ray

    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=False)


def test_second_connect_attaches_to_the_same_engine(engines: Any, tmp_path: Path) -> None:
    first = engines(virtual_time=True)
    register_all(first)
    first.enqueue("shared", TaskTrigger.OneTime(ONE_HOUR), "Echo")
    second = kmpray.connect(namespace=first.namespace, state_dir=first.state_dir, virtual_time=True)
    assert second.get_task_info("shared").state is TaskState.ENQUEUED
    second.advance_time(ONE_HOUR)
    assert first.get_task_info("shared").state is TaskState.SUCCEEDED
    # Stopped by the other connection: this one says so at once (it retried a dead handle
    # until its deadline, ~120 s), for a read, an enqueue (lane first) and an async call.
    first.shutdown()
    calls = [lambda: second.get_task_info("shared"), lambda: second.enqueue("x", TaskTrigger.OneTime(), "Echo"),
             lambda: asyncio.run(second.get_task_info_async("shared"))]
    for call in calls:
        with pytest.raises(kmpray.EngineUnavailable, match="was stopped \\(its scheduler is gone\\)"):
            call()


def test_killed_scheduler_restarts_and_loses_nothing(engines: Any, tmp_path: Path) -> None:
    sched = engines()
    register_all(sched)
    log = tmp_path / "runs.log"
    inp, started, release = blocks_input(tmp_path, "inflight")
    sched.enqueue("inflight", TaskTrigger.OneTime(), "Blocks", input=inp)
    until(began(started), what="in-flight run start")
    ids = [f"t{i}" for i in range(300)]
    results = sched.enqueue_many(
        [{"id": i, "trigger": TaskTrigger.OneTime(300), "worker_class_name": "Echo",
          "input": json.dumps({"log": str(log)})} for i in ids]
    )
    assert results == [ScheduleResult.SUCCESS] * 300
    _kill("kmpray.scheduler", sched.namespace)
    # Served again: the restarted scheduler rebuilt every task from the store.
    for i in ids:
        assert sched.wait(i, timeout_s=60).state is TaskState.SUCCEEDED
    assert len(set(log.read_text().split("\n")) - {""}) >= 300
    # The run in flight at the kill went on: the restarted scheduler adopted it, not re-ran it.
    assert sched.get_task_info("inflight").state is TaskState.RUNNING
    assert count_runs(str(started)) == 1
    release.touch()
    info = sched.wait("inflight", timeout_s=60)
    assert info.state is TaskState.SUCCEEDED and info.run_attempt_count == 1
    assert count_runs(str(started)) == 1
    assert sched.status()["counts"]["SUCCEEDED"] == 301


@pytest.mark.slow  # ~20 s: the question's timeouts and the raylet's kill of a stopped process
@ONE_SHARD  # it reaches into shard 0's executors and heavy worker
def test_processes_stalled_across_a_scheduler_restart_are_killed_before_their_runs_run_again(
    engines: Any, tmp_path: Path
) -> None:
    """A wholly stalled executor or heavy worker (SIGSTOP here; a paused VM, a C call
    holding the GIL) answers neither the restarted scheduler's ping nor its question about
    what it holds, so its run runs again: the light one on the other executor, the heavy
    one on its slot's restarted actor. Resumed, a stalled process would finish its run too
    (executed twice), so each is killed first, and each run ends once, elsewhere. (Not
    killed, the heavy slot also waited for its stopped actor for ever.)"""
    import contextlib
    import os
    import signal

    import ray

    sched = engines(config=EngineConfig(executors=2, heavy_pool_size=1, heavy_num_cpus=0, ping_timeout_s=2))
    register_all(sched)
    heavy = kmpray.Constraints(is_heavy_task=True, max_retries=0)
    inputs = {task: blocks_input(tmp_path, task, ended=True)[0] for task in ("light", "heavy")}
    sched.enqueue("light", TaskTrigger.OneTime(), "Blocks", input=inputs["light"])
    sched.enqueue("heavy", TaskTrigger.OneTime(), "Blocks", input=inputs["heavy"], constraints=heavy)
    cfgs = {task: json.loads(inp) for task, inp in inputs.items()}
    until(began(*(Path(c["started"]) for c in cfgs.values())), what="both runs' start")
    ns = sched.namespace
    names = ("kmpray.executor.0", "kmpray.executor.1", "kmpray.heavy.0")
    actors = [ray.get_actor(name, namespace=ns) for name in names]
    # The processes whose worker runs each now (``_begun``; ``_tasks`` also lists runs a
    # process took and will not begin: withdrawn for a blocked loop and sent on).
    what = [a.__ray_call__.remote(lambda self: (os.getpid(), [k for k, _ in self._begun])) for a in actors]
    running = [(task, pid) for pid, tasks in ray.get(what, timeout=30) for task in tasks]
    pids = dict(running)
    assert sorted(running) == sorted(pids.items()) and set(pids) == {"light", "heavy"}, running
    for pid in pids.values():
        # Wholly stopped before the release below (SIGSTOP alone raced it: on a busy machine
        # the light run saw the release and ended in its "stopped" process, CI, session 43).
        stop_process(pid)
    try:
        _kill("kmpray.scheduler", ns)
        for cfg in cfgs.values():  # resumed, a stalled run would end at once
            Path(cfg["release"]).touch()
        for task in pids:
            info = sched.wait(task, timeout_s=90)
            assert info.state is TaskState.SUCCEEDED and info.run_attempt_count == 1
        until(lambda: all(process_gone(p) for p in pids.values()), what="the stalled processes killed")
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # cleanup only: killed, they never run again
    # The engine names the processes it put down (the light one's slot depends on the shard).
    stopped = {s["pid"]: s for s in sched.status()["stopped_processes"]}
    assert stopped[pids["heavy"]]["what"] == "heavy worker 0", stopped
    assert stopped[pids["light"]]["what"].startswith("executor "), stopped
    assert all("answered no restarted scheduler" in stopped[p]["reason"] for p in pids.values()), stopped
    for task, cfg in cfgs.items():
        assert count_runs(cfg["started"]) == 2  # begun in the stopped process, then again
        (line,) = Path(cfg["ended"]).read_text().splitlines()  # ended once, not in the stopped process
        assert line.split()[0] == task and int(line.split()[1]) != pids[task]


@ONE_SHARD  # reaches into the scheduler's spool folder and its executor
def test_a_result_made_while_the_scheduler_is_down_outlives_its_process(engines: Any, tmp_path: Path) -> None:
    """The scheduler killed, the run ends while none serves (its result waits in the
    executor, for Ray's report call), then the executor killed before the restarted
    scheduler asks it what it holds. The result was spooled on the scheduler's node
    (actors/spool.py), so the restarted scheduler applies it: the task ran once. (Before,
    it died with the executor and the task ran again: chaos runs killing both within
    seconds found up to 256 such re-runs in one run.)"""
    import os
    import signal

    import ray

    sched = engines(config=EngineConfig(executors=1))
    register_all(sched)
    inp, started, release = blocks_input(tmp_path, "x", ended=True)
    sched.enqueue("x", TaskTrigger.OneTime(), "Blocks", input=inp)
    until(began(started), what="run start")
    spool = Path(sched.state_dir) / "spool"
    pids = {name: ray.get(ray.get_actor(name, namespace=sched.namespace).__ray_call__.remote(
        lambda _self: os.getpid()), timeout=30) for name in ("kmpray.scheduler", "kmpray.executor.0")}
    os.kill(pids["kmpray.scheduler"], signal.SIGKILL)  # gone now (ray.kill ends a process a moment later)
    until(lambda: process_gone(pids["kmpray.scheduler"]), what="the scheduler's process gone")
    release.touch()  # it ends now, with no scheduler to take its result
    # Its bytes, not only its file: the file is created a moment before the write, and a
    # process killed in between has spooled nothing (its run rightly runs again).
    until(lambda: spool.is_dir() and any(f.stat().st_size for f in spool.iterdir()), timeout_s=30,
          what="the result spooled")
    os.kill(pids["kmpray.executor.0"], signal.SIGKILL)  # long before the restarted scheduler serves (~2 s)
    info = sched.wait("x", timeout_s=90)
    assert info.state is TaskState.SUCCEEDED and info.run_attempt_count == 1
    assert info.result.data == {"released": True}
    assert count_runs(str(started)) == 1  # not run again
    assert len(Path(json.loads(inp)["ended"]).read_text().splitlines()) == 1
    assert list(spool.iterdir()) == []  # read once, then gone


@ONE_SHARD  # it opens shard 0's store while its scheduler is down
def test_runs_a_restarted_scheduler_does_not_adopt_are_stopped_not_left_running(
    engines: Any, tmp_path: Path
) -> None:
    """A scheduler killed after it stored a cancel and before the executor heard it (the
    stored state made here, while none serves), for a light run and a heavy one: the
    restarted scheduler finds each held for a task that is CANCELLED, so its report would
    be ignored. Each is stopped, as a cancel stops it, not left running to its end (until
    session 51 they ran on: side effects after an acknowledged cancel, in a slot the pool
    took for free)."""
    import ray

    from kmpray import lifecycle
    from kmpray.store import SqliteTaskStore

    from .helpers import asked, restarted

    sched = engines(config=EngineConfig(executors=1, heavy_pool_size=1, heavy_num_cpus=0))
    register_all(sched)
    inputs = {task: blocks_input(tmp_path, task, ended=True) for task in ("light", "heavy")}
    sched.enqueue("light", TaskTrigger.OneTime(), "Blocks", input=inputs["light"][0])
    sched.enqueue("heavy", TaskTrigger.OneTime(), "Blocks", input=inputs["heavy"][0],
                  constraints=kmpray.Constraints(is_heavy_task=True))
    until(began(*(started for _, started, _ in inputs.values())), what="both runs' start")
    holders = {task: ray.get_actor(name, namespace=sched.namespace)
               for task, name in (("light", "kmpray.executor.0"), ("heavy", "kmpray.heavy.0"))}
    runs = {task: asked(actor, lambda self: list(self._tasks)) for task, actor in holders.items()}
    assert [key for key, _ in runs["light"]] == ["light"] and [key for key, _ in runs["heavy"]] == ["heavy"]

    def cancel_stored_only() -> None:
        store = SqliteTaskStore(Path(sched.state_dir) / "tasks.db")
        try:
            recs = [r for r in store.load() if r.key in inputs]
            for rec in recs:
                assert rec.state in (TaskState.ENQUEUED, TaskState.RUNNING)  # (a hand-over is not stored)
                lifecycle.finish(rec, TaskState.CANCELLED, None)
            store.write(recs)
        finally:
            store.close()

    restarted("kmpray.scheduler", sched.namespace, while_down=cancel_stored_only)
    for task, actor in holders.items():
        (run,) = runs[task]
        until(lambda a=actor, r=run: not asked(a, lambda self: self.busy(r)), timeout_s=30,
              what=f"the {task} run no scheduler will take the result of stopped")
    for task, (inp, started, release) in inputs.items():
        release.touch()  # too late for it: it was stopped, so it never ends normally
        assert sched.get_task_info(task).state is TaskState.CANCELLED
        assert f"run {runs[task][0][1]}, still held after a scheduler restart, stopped" in sched.explain(task)
        assert count_runs(str(started)) == 1  # stopped, not run again
        assert not Path(json.loads(inp)["ended"]).exists(), task


def test_killed_executor_reruns_its_runs(engines: Any, tmp_path: Path) -> None:
    sched = engines(config=kmpray.EngineConfig(executors=1))
    register_all(sched)
    inp, started, release = blocks_input(tmp_path, "x")
    sched.enqueue("x", TaskTrigger.OneTime(), "Blocks", input=inp)
    until(began(started), what="run start")
    _kill("kmpray.executor.0", shard_namespace(sched.namespace, shard_of("x", sched.shards)))  # x's shard's
    until(lambda: count_runs(str(started)) == 2, timeout_s=60, what="the run to start again")
    release.touch()
    info = sched.wait("x", timeout_s=60)
    assert info.state is TaskState.SUCCEEDED and info.run_attempt_count == 1


@pytest.mark.slow  # ~15 s: an executor's restart, then the scheduler's
@ONE_SHARD  # it reaches into shard 0's executors
def test_a_suspect_alone_on_a_probation_executor_is_adopted_across_a_scheduler_restart(
    engines: Any, tmp_path: Path
) -> None:
    """A run whose executor died runs again alone on a probation executor (a suspect); the
    scheduler killed meanwhile keeps that executor and adopts the run: it begins twice in
    all, not three times (until session 37 a restarted scheduler killed its predecessor's
    probation executors, and the suspect ran once more: chaos found such re-runs)."""
    import os

    import ray

    sched = engines(config=kmpray.EngineConfig(executors=1))
    register_all(sched)
    inp, started, release = blocks_input(tmp_path, "x", ended=True)
    sched.enqueue("x", TaskTrigger.OneTime(), "Blocks", input=inp)
    until(began(started), what="run start")
    ns = sched.namespace
    os.kill(ray.get(ray.get_actor("kmpray.executor.0", namespace=ns).__ray_call__.remote(
        lambda self: os.getpid()), timeout=30), 9)  # SIGKILL: the process died under its run
    until(lambda: count_runs(str(started)) == 2, timeout_s=60, what="the run to start again, alone")
    holders = {}
    for k in range(2):
        try:
            actor = ray.get_actor(f"kmpray.executor.probation.{k}", namespace=ns)
        except ValueError:
            continue
        pid, keys = ray.get(actor.__ray_call__.remote(lambda self: (os.getpid(), list(self._tasks))),
                            timeout=30)
        if keys:
            holders[k] = pid
    assert len(holders) == 1, holders  # on a probation executor, alone
    (pid,) = holders.values()
    _kill("kmpray.scheduler", ns)
    until(lambda: sched.status()["running_alone"] == 1, timeout_s=60, what="the restarted scheduler to serve")
    release.touch()
    info = sched.wait("x", timeout_s=60)
    assert info.state is TaskState.SUCCEEDED and info.run_attempt_count == 1
    assert count_runs(str(started)) == 2  # not a third time after the restart
    (line,) = Path(json.loads(inp)["ended"]).read_text().splitlines()
    assert int(line.split()[1]) == pid  # ended in the probation executor that held it
    assert not process_gone(pid)  # kept, not killed
    assert sched.status()["running_alone"] == 0


def test_worker_classes_survive_an_oracle_restart_then_a_scheduler_restart(engines: Any) -> None:
    """Classes are never stored (no pickle read back): the registry (in the oracle, see
    actors/registry.py) and the scheduler hold copies, and each restores the other."""
    import ray

    from .helpers import restarted

    sched = engines()
    register_all(sched)
    oracle = restarted("kmpray.oracle", sched.namespace)  # a new process: it took every class back
    assert set(ALL) <= set(ray.get(oracle.dump_classes.remote(sched.namespace), timeout=30))
    sched.enqueue("after-oracle", TaskTrigger.OneTime(), "Echo", input="a")
    info = sched.wait("after-oracle", timeout_s=60)
    assert info.state is TaskState.SUCCEEDED, info.result
    _kill("kmpray.scheduler", sched.namespace)  # now the registry is the one with the copies
    sched.enqueue("after-both", TaskTrigger.OneTime(), "Echo", input="b")
    info = sched.wait("after-both", timeout_s=60)
    assert info.state is TaskState.SUCCEEDED, info.result
    assert sched.status()["waiting_for_registration"] == {}
    assert set(ALL) <= set(sched.status()["workers"])


@ONE_SHARD  # it kills shard 0's scheduler with the oracle
def test_classes_lost_by_the_registry_and_the_scheduler_together_come_back_from_the_executors(
        engines: Any) -> None:
    """The oracle and the scheduler SIGKILLed together: each restarts empty and takes back
    the other's nothing. Tasks of every worker then waited, parked, for a registration
    that never came (the no-wait mixed chaos run, session 58). The executors keep the blob
    of each class they ran (actors/class_recovery.py): the restarted scheduler takes those
    back, with the registry; a class no process ran stays missing, but kmpray's built-in
    workers are registered again from kmpray itself (before session 59 their tasks waited
    for the next client's connect())."""
    import ray

    from .helpers import killed_together

    sched = engines()
    register_all(sched)
    sched.enqueue("before", TaskTrigger.OneTime(), "Echo", input="a")  # an executor loads Echo
    assert sched.wait("before", timeout_s=60).state is TaskState.SUCCEEDED
    killed_together(sched.namespace, "kmpray.oracle", "kmpray.scheduler")
    sched.enqueue("after", TaskTrigger.OneTime(), "Echo", input="b")  # answered once a scheduler serves
    info = sched.wait("after", timeout_s=60)
    assert info.state is TaskState.SUCCEEDED, (info, sched.status()["waiting_for_registration"])
    workers = sched.status()["workers"]
    assert "Echo" in workers and "Progress" not in workers  # both copies were gone: no executor ran Progress
    until(lambda: "HttpRequestWorker" in sched.status()["workers"], what="the built-in workers registered again")
    oracle = ray.get_actor("kmpray.oracle", namespace=sched.namespace)
    assert "Echo" in ray.get(oracle.dump_classes.remote(sched.namespace), timeout=30)


def test_shutdown_then_connect_resumes_pending_and_periodic_work(ray_session: Any, tmp_path: Path) -> None:
    ns, state = "resume-test", str(tmp_path / "state")
    first = kmpray.connect(namespace=ns, state_dir=state, virtual_time=True)
    register_all(first)
    first.enqueue("later", TaskTrigger.OneTime(ONE_HOUR), "Echo")
    first.enqueue("every", TaskTrigger.Periodic(FIFTEEN_MINUTES), "Echo")
    # Inputs past INLINE_INPUT_CHARS live in the store only: read back for every run
    big = json.dumps({"blob": "b" * 100_000})
    first.enqueue("later-big", TaskTrigger.OneTime(ONE_HOUR), "Echo", input=big)
    first.enqueue("every-big", TaskTrigger.Periodic(FIFTEEN_MINUTES), "Echo", input=big)
    # (wait() on a periodic task waits for its next run to end: both first runs, polled)
    until(lambda: first.get_task_info("every").run_count == first.get_task_info("every-big").run_count == 1,
          what="one run of each", explain=lambda: (first.explain("every"), first.explain("every-big")))
    first.advance_time(FIFTEEN_MINUTES)
    assert first.get_task_info("every-big").run_count == 2
    assert first.get_task_info("every-big").result.data["input"] == big
    now = first.now_ms()
    first.shutdown()
    with pytest.raises(ValueError):
        import ray

        ray.get_actor("kmpray.scheduler", namespace=ns)
    # A shut-down connection says so at once (each call used to retry the stopped engine ~120 s)
    calls = (lambda: first.get_task_info("later"), lambda: first.enqueue("x", TaskTrigger.OneTime(), "Echo"))
    for call in calls:
        with pytest.raises(kmpray.EngineUnavailable, match="was shut down: connect"):
            call()
    second = kmpray.connect(namespace=ns, state_dir=state, virtual_time=True)
    try:
        register_all(second)
        assert second.now_ms() == now  # the virtual clock is durable too
        assert second.get_task_info("later").state is TaskState.ENQUEUED
        assert second.get_task_info("every").run_count == 2
        second.advance_time(ONE_HOUR)
        assert second.get_task_info("later").state is TaskState.SUCCEEDED
        assert second.get_task_info("every").run_count == 6
        assert second.get_task_info("later-big").result.data["input"] == big
        assert second.get_task_info("every-big").run_count == 6
        assert second.get_task_info("every-big").result.data["input"] == big
    finally:
        second.shutdown()


@pytest.mark.slow
def test_scheduler_killed_under_load_of_ten_thousand_tasks(engines: Any, tmp_path: Path) -> None:

    from kmpray import TaskRequest

    sched = engines()
    register_all(sched)
    log = tmp_path / "runs.log"
    inp = json.dumps({"log": str(log)})
    ids = [f"L{i}" for i in range(10_000)]
    for k in range(0, len(ids), 2_000):
        results = sched.enqueue_many([TaskRequest("Echo", inp, id=i) for i in ids[k : k + 2_000]])
        assert results == [ScheduleResult.SUCCESS] * 2_000
    until(lambda: count_runs(str(log)) > 500, what="the load to be running")
    _kill("kmpray.scheduler", sched.namespace)
    # One wait for all (wait_many, across the restart), not a poll: listing the 10,000 tasks
    # every 10 ms held the restarted scheduler's loop (this test took 27 s once instead of ~7).
    states = [info.state for info in sched.wait(ids, timeout_s=120)]
    ran = log.read_text().split()[::2]  # each Echo log line is "<task id> <attempt>"
    lost = len(ids) - states.count(TaskState.SUCCEEDED)
    duplicated = len(ran) - len(set(ran))
    print(f"scheduler kill under load: submitted={len(ids)} lost={lost} duplicated={duplicated}")
    assert lost == 0 and set(ran) == set(ids)
    # The restarted scheduler adopts the runs the executors still hold (running, queued or
    # finished but unreported) rather than running them again: nothing runs twice.
    assert duplicated == 0


def test_a_retried_enqueue_is_answered_again_not_applied_twice(engines: Any, tmp_path: Path) -> None:
    """The client retries a call whose answer was lost (the scheduler died after storing the
    work): with the same request token it gets the answer, and finished one-time work does
    not run a second time, even across a scheduler restart."""
    import ray

    sched = engines()
    register_all(sched)
    ledger = tmp_path / "ledger"
    actor = ray.get_actor("kmpray.scheduler", namespace=sched.namespace)
    item = {"id": "once", "trigger": {"kind": "one_time"}, "worker": "Ledgered",
            "input": json.dumps({"ledger": str(ledger)})}
    first = ray.get(actor.enqueue_many.remote([item], "call-1"), timeout=60)
    assert first == [["SUCCESS", None]]  # lists through Ray (actors/scheduler_intake.py: Answer)
    assert sched.wait("once", timeout_s=30).state is TaskState.SUCCEEDED
    # The client marks every try after the first (only a retry is looked up).
    again = ray.get(actor.enqueue_many.remote([item], "call-1" + RETRY_MARK), timeout=60)
    _kill("kmpray.scheduler", sched.namespace)
    from kmpray.actors.retry import call_with_retry_sync  # what the client does meanwhile

    def call(token: str) -> Any:
        return call_with_retry_sync(lambda: ray.get(actor.enqueue_many.remote([item], token), timeout=60), 60)

    after_restart = call("call-1" + RETRY_MARK)
    assert again == after_restart == first
    # A new call (another token) is new work: it runs again, as WorkManager's KEEP says.
    assert call("call-2") == [["SUCCESS", None]]
    until(lambda: ledger.exists() and ledger.read_text().count("start once") == 2, what="the second call's run")
    assert sched.wait("once", timeout_s=30).run_count == 1  # the new row ran once
    assert ledger.read_text().count("start once") == 2


@ONE_SHARD  # it edits shard 0's outbox
def test_at_start_only_completion_events_the_log_lacks_are_sent_again(engines: Any, tmp_path: Path) -> None:
    """The outbox is cleared of what the event log acknowledged only with the store's next
    write, so a shutdown soon after a completion leaves that event there: the next start
    forgets it (the log has it) instead of sending it again, and sends only what a crash
    really kept from the broker. Both set up in the store by hand, so neither is a race."""
    import sqlite3

    from kmpray import TaskCompletionEvent
    from kmpray.event_codec import encode_event

    state = tmp_path / "s"
    sched = engines(state_dir=state)
    register_all(sched)
    sub = sched.events.subscribe(since=0)
    sched.enqueue("c1", TaskTrigger.OneTime(), "Echo")
    assert sched.wait("c1", timeout_s=30).state is TaskState.SUCCEEDED
    while (e := sub.get(timeout_s=30)) is not None and not (e.kind == "completion" and e.task_id == "c1"):
        pass
    assert e is not None  # the event log has c1's completion
    sched.shutdown()
    db = sqlite3.connect(state / "tasks.db")
    with db:
        [(last,)] = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchall()
        logged = bytes(sqlite3.connect(state / "events.db").execute(
            "SELECT body FROM events ORDER BY cursor DESC LIMIT 1").fetchone()[0])
        ghost = encode_event(TaskCompletionEvent("Echo", True, "kept from the broker", task_id="ghost"))
        db.execute("DELETE FROM outbox")
        db.executemany("INSERT INTO outbox (seq, body) VALUES (?, ?)", [(last, logged), (last + 1, ghost)])
    db.close()

    again = engines(namespace=sched.namespace, state_dir=state)
    assert again.status()["messages"].get("events_resent") == 1  # the ghost alone
    seen = []
    sub = again.events.subscribe(since=0)
    while (e := sub.get(timeout_s=5)) is not None:
        if e.kind == "completion":
            seen.append(e.task_id)
        if e.task_id == "ghost":
            break
    assert seen == ["c1", "ghost"], seen  # each once, in outbox order
    until(lambda: sqlite3.connect(state / "tasks.db").execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0,
          what="the outbox to empty")
