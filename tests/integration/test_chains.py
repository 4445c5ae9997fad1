"""Chains on a real Ray: data passing, parallel steps, cascades, policies, resume after kills."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import kmpray
from kmpray import ExistingPolicy, InputMerger, ScheduleResult, TaskRequest, TaskState, TaskTrigger

from .helpers import until, until_task
from .workers import register_all

pytestmark = pytest.mark.ray


def step(tid: str, **cfg: Any) -> TaskRequest:
    return TaskRequest("Step", input=json.dumps(cfg) if cfg else None, id=tid)


def runs(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_sequential_chain_passes_data_step_to_step(svengine: Any, tmp_path: Path) -> None:
    log = tmp_path / "log"
    chain = svengine.begin_with(step("qa", log=str(log))).then(step("qb")).then(step("qc"))
    assert chain.enqueue() is ScheduleResult.SUCCESS
    info = svengine.wait(chain.id, timeout_s=60)
    assert isinstance(info, kmpray.ChainInfo) and info.state is TaskState.SUCCEEDED
    assert [[t.id for t in s] for s in info.steps] == [["qa"], ["qb"], ["qc"]]
    assert info.steps[2][0].result.data["hops"] == 3
    assert runs(log) == ["qa", "qb", "qc"]
    assert {t.chain_id for t in svengine.list_tasks() if t.id in ("qa", "qb", "qc")} == {chain.id}


def test_parallel_step_fans_in_with_the_array_merger(svengine: Any) -> None:
    join = TaskRequest("Step", id="join", input_merger=InputMerger.ARRAY)
    chain = svengine.begin_with(step("pa")).then([step("p1"), step("p2"), step("p3")]).then(join)
    chain = chain.with_id("fan")
    assert chain.enqueue() is ScheduleResult.SUCCESS
    info = svengine.wait("fan", timeout_s=60)
    assert info.state is TaskState.SUCCEEDED
    data = svengine.get_task_info("join").result.data
    assert data["hops"] == 3  # max over the ARRAY-merged [2, 2, 2], plus one
    assert svengine.get_chain_info("fan").steps[1][2].id == "p3"


def test_failed_step_fails_dependents_which_never_run(svengine: Any, tmp_path: Path) -> None:
    log = tmp_path / "log"
    first = step("fa", log=str(log), fail=["fb"])
    chain = svengine.begin_with(first).then(step("fb")).then(step("fc")).with_id("f")
    chain.enqueue()
    info = svengine.wait("f", timeout_s=60)
    assert info.state is TaskState.FAILED
    assert [s[0].state for s in info.steps] == [TaskState.SUCCEEDED, TaskState.FAILED, TaskState.FAILED]
    assert info.steps[2][0].run_attempt_count == 0
    assert runs(log) == ["fa", "fb"]


def test_a_chain_explains_where_it_waits(svengine: Any) -> None:
    """``explain(chain_id)`` (and ``kmpray why``): its steps, then the first unfinished
    step's tasks by their own explanation (here: a gate no node satisfies)."""
    from kmpray import Constraints
    from kmpray.client import TaskNotFound

    gated = TaskRequest("Step", id="eb", constraints=Constraints(requires_charging=True))
    svengine.set_device_state(charging=False)
    try:
        svengine.begin_with(step("ea")).then(gated).then(step("ec")).with_id("e").enqueue()
        until(lambda: (w := svengine.get_task_info("eb").waiting_for) is not None and w.kind == "constraints",
              what="step 2 held by its gate")
        lines = svengine.explain("e").splitlines()
        assert lines[0].startswith("chain e: ") and lines[0].endswith(", 3 steps: ✓ · ·"), lines
        assert lines[1] == "step 2 of 3 is not finished (1 later step waits for it):", lines
        assert lines[2].startswith("  task eb (Step): ENQUEUED"), lines
        assert any("constraints unmet" in line for line in lines[3:]), lines
    finally:
        svengine.clear_device_overrides()
    assert svengine.wait("e", timeout_s=60).state is TaskState.SUCCEEDED
    assert svengine.explain("e").splitlines() == ["chain e: SUCCEEDED, 3 steps: ✓ ✓ ✓"]
    with pytest.raises(TaskNotFound, match="no task or chain 'no-such'"):
        svengine.explain("no-such")


def test_what_is_not_an_id_is_refused_naming_id(svengine: Any) -> None:
    """``wait(chain.enqueue())`` (a ScheduleResult, which is a ``str`` enum) waited for a
    task named "SUCCESS" and raised TaskNotFound for ``<ScheduleResult.SUCCESS: ...>``;
    ``get_task_info(5)`` answered None; a bound method failed in Ray's pickling."""
    chain = svengine.begin_with(step("na")).with_id("n")
    answer = chain.enqueue()
    hint = "a chain's id is chain.id; enqueue() answers with a ScheduleResult, not an id"
    calls = (svengine.wait, svengine.get_task_info, svengine.cancel, svengine.explain, svengine.get_output,
             svengine.get_chain_info, lambda x: svengine.wait([chain.id, x]))
    refused = r"^id: must be a task or chain id \(a str\), got "
    for call in calls:
        with pytest.raises(TypeError, match=refused + "ScheduleResult") as exc:
            call(answer)
        assert hint in str(exc.value)
        with pytest.raises(TypeError, match=refused + "int 5$"):
            call(5)
    with pytest.raises(TypeError, match=re.escape(hint)):
        svengine.get_task_info(chain.enqueue)
    assert svengine.wait(chain.id, timeout_s=60).state is TaskState.SUCCEEDED


def test_cancel_chain_mid_run(svengine: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    first = step("xa", gate=str(gate), block=["xb"])
    chain = svengine.begin_with(first).then(step("xb")).then(step("xc")).with_id("x")
    chain.enqueue()
    until_task(svengine, "xb", lambda t: t.state is TaskState.RUNNING, what="step b running")
    assert svengine.cancel("x") == 2
    info = svengine.wait("x", timeout_s=30)
    assert info.state is TaskState.CANCELLED
    assert [s[0].state for s in info.steps] == [TaskState.SUCCEEDED, TaskState.CANCELLED, TaskState.CANCELLED]


def test_keep_policy_runs_once_when_clicked_five_times(svengine: Any, tmp_path: Path) -> None:
    log, gate = tmp_path / "log", tmp_path / "gate"
    chain = svengine.begin_with(step("ka", log=str(log), gate=str(gate), block=["ka"])).then(step("kb"))
    keep = chain.with_id("report", ExistingPolicy.KEEP)
    assert [keep.enqueue() for _ in range(5)] == [ScheduleResult.SUCCESS] * 5
    gate.touch()
    assert svengine.wait("report", timeout_s=60).state is TaskState.SUCCEEDED
    assert runs(log) == ["ka", "kb"]


def test_in_process_coordination_has_the_same_semantics(engines: Any, tmp_path: Path) -> None:
    """EngineConfig(chain_coordinators=0): the same rules, run inside the scheduler."""
    sched = engines(config=kmpray.EngineConfig(chain_coordinators=0))
    register_all(sched)
    join = TaskRequest("Step", id="join", input_merger=InputMerger.ARRAY)
    chain = sched.begin_with([step("l"), step("r")]).then(join).then(step("last")).with_id("local")
    assert chain.enqueue() is ScheduleResult.SUCCESS
    info = sched.wait("local", timeout_s=60)
    assert info.state is TaskState.SUCCEEDED
    assert info.steps[1][0].result.data["hops"] == 2 and info.steps[2][0].result.data["hops"] == 3
    failing = sched.begin_with(step("f1", fail=["f1"])).then(step("never")).with_id("failing")
    failing.enqueue()
    info = sched.wait("failing", timeout_s=60)
    assert [t.state for s in info.steps for t in s] == [TaskState.FAILED, TaskState.FAILED]
    assert info.steps[1][0].run_attempt_count == 0


def test_bad_chains_are_rejected_with_nothing_stored(svengine: Any) -> None:
    cases = [
        (svengine.begin_with([]), "at least one"),
        (svengine.begin_with(step("a")).then([]), "at least one"),
        (svengine.begin_with(step("a")).then(TaskRequest("Unregistered")), "not a registered worker"),
        (svengine.begin_with(step("dup")).then(step("dup")), "used twice"),
    ]
    for chain, why in cases:
        assert chain.enqueue() is ScheduleResult.REJECTED_INVALID_PARAMS
        assert why in svengine.last_reason
    assert not {"a", "dup"} & {t.id for t in svengine.list_tasks()}  # nothing stored


def test_killed_scheduler_mid_chain_resumes_without_rerunning_succeeded_steps(engines: Any, tmp_path: Path) -> None:
    import ray

    sched = engines()
    register_all(sched)
    log, gate = tmp_path / "log", tmp_path / "gate"
    first = [step("p1", log=str(log), gate=str(gate), block=["mid"]), step("p2", log=str(log), gate=str(gate), block=["mid"])]
    chain = sched.begin_with(first).then(step("mid")).then(step("end")).with_id("k")
    chain.enqueue()
    until(lambda: "mid" in runs(log), what="the middle step to start")
    ray.kill(ray.get_actor("kmpray.scheduler", namespace=sched.namespace), no_restart=False)
    # The restarted scheduler adopts the run still on its executor: it goes on, not again.
    # (RUNNING shows ~20 ms after the worker began, so the first answer may still be ENQUEUED.)
    until_task(sched, "mid", lambda t: t.state is TaskState.RUNNING, what="mid adopted as running")
    gate.touch()
    info = sched.wait("k", timeout_s=60)
    assert info.state is TaskState.SUCCEEDED
    assert sorted(runs(log)) == ["end", "mid", "p1", "p2"]  # no step ran twice
    assert info.steps[3 - 1][0].result.data["by"] == "end"


def test_killed_chain_coordinators_mid_chain_resume_without_rerunning_succeeded_steps(
    engines: Any, tmp_path: Path
) -> None:
    import ray

    from kmpray.actors.names import shard_namespace
    from kmpray.shards import shard_of

    sched = engines()
    register_all(sched)
    # The chain's shard (all of it lives there: KMPRAY_TEST_SHARDS=2 runs this on two).
    home = shard_namespace(sched.namespace, shard_of("kc", sched.shards))

    def coordinators_up() -> list[str]:
        return sorted(e["name"] for e in ray.util.list_named_actors(all_namespaces=True)
                      if e["namespace"] == home and e["name"].startswith("kmpray.chain."))

    sched.enqueue("solo", TaskTrigger.OneTime(), "Echo")
    assert sched.wait("solo", timeout_s=30).state is TaskState.SUCCEEDED
    assert coordinators_up() == []  # started with the engine's first chain, not before
    log, gate = tmp_path / "log", tmp_path / "gate"
    first = [step("p1", log=str(log), gate=str(gate), block=["mid"]), step("p2", log=str(log))]
    chain = sched.begin_with(first).then(step("mid")).then(step("end")).with_id("kc")
    chain.enqueue()
    until(lambda: "mid" in runs(log), what="the middle step to start")
    pool = kmpray.EngineConfig().chain_coordinators
    assert coordinators_up() == [f"kmpray.chain.{i}" for i in range(pool)]
    coordinators = [ray.get_actor(f"kmpray.chain.{i}", namespace=home) for i in range(pool)]
    for handle in coordinators:  # every plan in memory is gone; "mid" finishing is told to no one alive
        ray.kill(handle, no_restart=False)
    gate.touch()
    info = sched.wait("kc", timeout_s=60)
    assert info.state is TaskState.SUCCEEDED
    assert sorted(runs(log)) == ["end", "mid", "p1", "p2"]  # nothing ran twice
    end = info.steps[2][0].result.data
    assert end["by"] == "end" and end["hops"] == 3  # the data chain was not broken
    # Each came back: a new process rebuilt its plans from the scheduler's rows (without
    # that, "mid" finishing would reach a coordinator with no plan and "end" never run).
    # After a resync, a finished chain leaves no plan behind.
    assert [_once_up(lambda h=h: h.resync.remote()) for h in coordinators] == [0] * pool
    assert [_once_up(lambda h=h: h.stats.remote())["plans"] for h in coordinators] == [0] * pool


def test_the_periodic_check_asks_about_a_quiet_chain_by_id_and_keeps_it_while_unfinished(
    svengine: Any, tmp_path: Path
) -> None:
    """The coordinators' every-RESYNC_S check, called at once: a chain quiet since the given
    mark is asked about (the scheduler looks it up by id over Ray) and kept while it runs;
    once it has finished there is no plan left to ask about."""
    import ray

    from kmpray.chain_coordination import coordinator_index

    gate = tmp_path / "gate"
    first = step("quiet-a", gate=str(gate), block=["quiet-b"])
    chain = svengine.begin_with(first).then(step("quiet-b")).then(step("quiet-c")).with_id("quiet")
    assert chain.enqueue() is ScheduleResult.SUCCESS
    until(lambda: svengine.get_task_info("quiet-b").state is TaskState.RUNNING,
          what="the second step to start", explain=lambda: svengine.explain("quiet-b"))
    pool = kmpray.EngineConfig().chain_coordinators
    owner = ray.get_actor(f"kmpray.chain.{coordinator_index('quiet', pool)}", namespace=svengine.namespace)
    before = ray.get(owner.stats.remote(), timeout=30)
    assert ray.get(owner.check_quiet.remote(10**9), timeout=30) >= 1  # every plan counts as quiet
    after = ray.get(owner.stats.remote(), timeout=30)
    assert after["checks"] == before["checks"] + 1 and after["plans"] >= 1  # unfinished: kept
    assert svengine.get_task_info("quiet-c").state is TaskState.BLOCKED  # nothing promoted early
    gate.touch()
    assert svengine.wait("quiet", timeout_s=60).state is TaskState.SUCCEEDED
    until(lambda: ray.get(owner.stats.remote(), timeout=30)["plans"] == 0, what="the finished plan to retire")
    assert ray.get(owner.check_quiet.remote(10**9), timeout=30) == 0


def _once_up(call: Any, timeout_s: float = 60) -> Any:
    """A call's answer once the actor has restarted: a coordinator the chain did not need
    may still be restarting when the chain is done (ActorUnavailableError: restarting)."""
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(call(), timeout=timeout_s)
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_shutdown_and_connect_resume_a_half_run_chain(ray_session: Any, tmp_path: Path) -> None:
    ns, state = "chain-resume", str(tmp_path / "state")
    log, gate = tmp_path / "log", tmp_path / "gate"
    first = kmpray.connect(namespace=ns, state_dir=state)
    register_all(first)
    first.begin_with(step("a", log=str(log), gate=str(gate), block=["b"])).then(step("b")).then(step("c")).with_id(
        "h"
    ).enqueue()
    until(lambda: "b" in runs(log), what="step b to start")
    # b begins on a's executor the moment a succeeds (one hop per step), while the scheduler
    # records a's success: a crash inside that window would run a again, as any run in flight.
    until_task(first, "a", lambda t: t.state is TaskState.SUCCEEDED, what="a's success recorded")
    first.shutdown()
    gate.touch()
    second = kmpray.connect(namespace=ns, state_dir=state)
    try:
        register_all(second)
        info = second.wait("h", timeout_s=60)
        assert info.state is TaskState.SUCCEEDED
        assert runs(log) == ["a", "b", "b", "c"]  # b was in flight at the shutdown
    finally:
        second.shutdown()


@pytest.mark.slow
def test_thousand_step_chain_and_five_thousand_wide_step_complete(engines: Any) -> None:
    sched = engines()
    register_all(sched)
    long = sched.begin_with(TaskRequest("Noop"))
    for _ in range(999):
        long = long.then(TaskRequest("Noop"))
    assert long.with_id("long").enqueue() is ScheduleResult.SUCCESS
    wide = sched.begin_with(TaskRequest("Noop")).then([TaskRequest("Noop") for _ in range(5000)]).then(
        TaskRequest("Noop")
    )
    assert wide.with_id("wide").enqueue() is ScheduleResult.SUCCESS
    assert sched.wait("long", timeout_s=240).state is TaskState.SUCCEEDED
    info = sched.wait("wide", timeout_s=240)
    assert info.state is TaskState.SUCCEEDED and len(info.steps[1]) == 5000


def test_a_sequential_stretch_runs_step_after_step_with_no_round_trip(svengine: Any, tmp_path: Path) -> None:
    """One hop per step (#15): each step begins on its predecessor's executor the moment
    it succeeds; the scheduler learns both from one report."""
    log = tmp_path / "log"
    handed = svengine.status()["messages"]["handed_on"]  # the module's engine: count from here
    chain = svengine.begin_with(step("s0", log=str(log)))
    for i in range(1, 6):
        chain = chain.then(step(f"s{i}"))
    assert chain.with_id("seq").enqueue() is ScheduleResult.SUCCESS
    info = svengine.wait("seq", timeout_s=60)
    assert info.state is TaskState.SUCCEEDED and runs(log) == [f"s{i}" for i in range(6)]
    assert info.steps[5][0].result.data["hops"] == 6  # each step saw its predecessor's output
    assert svengine.status()["messages"]["handed_on"] - handed == 5
    assert "begun when it succeeded" in svengine.explain("s3")
    assert all(t.run_attempt_count == 1 for s in info.steps for t in s)

    # A cancel inside a handed stretch stops the rest: c and d were handed over with a.
    log, gate = tmp_path / "log2", tmp_path / "gate"
    chain = svengine.begin_with(step("ha", log=str(log), gate=str(gate), block=["hb"]))
    chain.then(step("hb")).then(step("hc")).then(step("hd")).with_id("hk").enqueue()
    until(lambda: "hb" in runs(log), what="hb to begin after ha")
    until_task(svengine, "hb", lambda t: t.state is TaskState.RUNNING, what="hb taken as running")
    assert svengine.cancel("hk") == 3  # b (running) and the BLOCKED c, d
    gate.touch()
    info = svengine.wait("hk", timeout_s=60)
    assert [s[0].state for s in info.steps] == [TaskState.SUCCEEDED] + [TaskState.CANCELLED] * 3
    svengine.advance_time(1000)  # anything still due would run now
    assert runs(log) == ["ha", "hb"]  # hc and hd were handed over with ha, never begun


def test_advance_time_settles_a_chains_later_steps_through_their_coordinator(svengine: Any) -> None:
    """A step's success promotes the next through the chain's coordinator; advance_time
    returned before its answer, so a parallel step (no hand-on to one executor) and the
    steps after it were still BLOCKED after the call."""
    chain = svengine.begin_with(step("va")).then([step("vb"), step("vc")]).then(step("vd")).with_id("v")
    assert chain.enqueue() is ScheduleResult.SUCCESS
    svengine.advance_time(1000)
    assert [svengine.get_task_info(k).state for k in ("va", "vb", "vc", "vd")] == [TaskState.SUCCEEDED] * 4
    assert svengine.get_chain_info("v").state is TaskState.SUCCEEDED
