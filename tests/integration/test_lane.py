"""The local lane on a real engine (kmpray/lane.py): a client on the scheduler's node
enqueues over the Unix socket; a lane answer lost on the way is answered again through
Ray, never applied twice; with the lane off, or after the scheduler restarted, enqueues
still land and the lane is found again. Executors report over it: a result written there
survives its process being killed the next moment."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

import kmpray
from kmpray import Constraints, NetworkType, ScheduleResult, TaskRequest, TaskState, TaskTrigger
from kmpray.client import lane as client_lane
from kmpray.client.lane import LaneDown

from .helpers import ONE_SHARD, until
from .workers import register_all

LATER = TaskTrigger.OneTime(initial_delay_ms=600_000)


def _lane_status(sched: Any) -> dict[str, Any] | None:
    return sched.status()["lane"]


def _messages(sched: Any) -> dict[str, int]:
    return sched.status()["messages"]


@ONE_SHARD
def test_enqueues_from_this_node_go_over_the_lane_and_run(engines: Any) -> None:
    sched = engines()
    register_all(sched)
    assert sched.enqueue("one", TaskTrigger.OneTime(), "Noop") is ScheduleResult.SUCCESS
    many = sched.enqueue_many([TaskRequest("Noop", id=f"m{i}") for i in range(3)])
    assert many == [ScheduleResult.SUCCESS] * 3

    async def concurrently() -> list[ScheduleResult]:
        return list(await asyncio.gather(*(sched.enqueue_async(f"a{i}", LATER, "Noop") for i in range(20))))

    assert asyncio.run(concurrently()) == [ScheduleResult.SUCCESS] * 20
    chain = sched.begin_with(TaskRequest("Noop", id="c1")).then(TaskRequest("Noop", id="c2")).with_id("chain")
    assert chain.enqueue() is ScheduleResult.SUCCESS
    # a rejection is an answer like any other: it comes back over the lane with its reason
    assert sched.enqueue("x" * 300, TaskTrigger.OneTime(), "Noop") is ScheduleResult.REJECTED_INVALID_PARAMS
    assert "256" in (sched.last_reason or "")  # the id's length limit, said over the lane
    for name in ("one", "m2", "chain"):
        assert sched.wait(name, timeout_s=60).state is TaskState.SUCCEEDED
    status = sched.status()  # a read over the lane as well, counted before its answer
    lane, messages = status["lane"], status["messages"]
    assert lane is not None and lane["refused"] == 0
    # every enqueue call of this client came over the lane (the 20 coroutines in a few groups),
    # and so did its reads (a task's wait: wait_many; the chain's: wait_chain; this status)
    assert lane["calls"] == messages["enqueue_calls"] == sched._lanes[0].calls - lane["reads"]
    assert lane["reads"] >= 4
    # the client's few connections, and one per executor and heavy worker reporting here
    assert 5 <= lane["calls"] <= 25 and lane["connections"] <= 3 + sched.status()["executors"] + 1
    assert sched.get_task_info("a19").state is TaskState.ENQUEUED


@ONE_SHARD
def test_reads_go_over_the_lane_and_answer_what_ray_answers(engines: Any) -> None:
    sched = engines()
    register_all(sched)
    gated = Constraints(requires_network=True, network_type=NetworkType.UNMETERED, expedited=True)
    ok = ScheduleResult.SUCCESS
    assert sched.enqueue("later", TaskTrigger.Periodic(3_600_000), "Noop", constraints=gated) is ok
    assert sched.enqueue("echo", TaskTrigger.OneTime(), "Echo", input='{"x": [1, 2]}') is ok
    chain = sched.begin_with(TaskRequest("Noop", id="c1")).then(TaskRequest("Nests", input="3", id="c2"))
    assert chain.with_id("ch").enqueue() is ScheduleResult.SUCCESS
    reads = _lane_status(sched)["reads"]
    done = sched.wait("echo", timeout_s=60)
    assert done.state is TaskState.SUCCEEDED and done.result.data == {"input": '{"x": [1, 2]}', "attempt": 0}
    assert sched.wait("ch", timeout_s=60).state is TaskState.SUCCEEDED  # a chain: wait_chain
    assert asyncio.run(sched.wait_async("c2", timeout_s=60)).result.data == {"n": {"n": {}}}
    before = _lane_status(sched)["reads"]
    assert sched.enqueue("nap", TaskTrigger.OneTime(), "Sleeps", input="0.3") is ok
    assert sched.wait("nap", timeout_s=60).state is TaskState.SUCCEEDED
    assert _lane_status(sched)["reads"] - before == 2  # the wait was one read (+ that status)
    over_lane = [sched.get_task_info(i) for i in ("later", "echo", "c2", "absent")]
    chain_info, why = sched.get_chain_info("ch"), sched.explain("later")
    assert chain_info.state is TaskState.SUCCEEDED and "later" in why
    assert sched.get_output("echo") == {"input": '{"x": [1, 2]}', "attempt": 0}
    lane = _lane_status(sched)  # a read itself (describe)
    # wait(): a wait_many (or a chain's look and wait_chain); wait_async: get_info and wait;
    # then four get_info, get_chain_info, explain, get_output and describe: nothing fell back
    assert lane["reads"] - reads >= 1 + 2 + 2 + 4 + 4
    assert sched._lanes[0].calls == lane["calls"] + lane["reads"]  # every one answered there
    assert over_lane[3] is None and over_lane[0].state is TaskState.ENQUEUED
    assert over_lane[0].constraints == gated and over_lane[0].trigger == TaskTrigger.Periodic(3_600_000)
    sched._lanes[0].enabled = False  # the same reads through Ray
    through_ray = [sched.get_task_info(i) for i in ("later", "echo", "c2", "absent")]
    assert sched.get_chain_info("ch") == chain_info
    assert sched.get_output("echo") == {"input": '{"x": [1, 2]}', "attempt": 0}
    assert _lane_status(sched)["reads"] == lane["reads"]  # that status went through Ray too
    strip = {"waiting_for"}  # its details count time down between the two reads
    assert [i and i.model_dump(exclude=strip) for i in over_lane] == [i and i.model_dump(exclude=strip)
                                                                        for i in through_ray]


@ONE_SHARD
def test_an_answer_lost_on_the_lane_is_answered_again_through_ray_not_applied_twice(engines: Any) -> None:
    sched = engines()
    register_all(sched)
    lane = sched._lanes[0]
    real = lane.call

    def delivered_then_lost(method: str, args: list[Any], timeout_s: float) -> Any:
        real(method, args, timeout_s)  # the scheduler applied it and answered ...
        raise LaneDown("connection lost after the request went", sent=True)  # ... the answer never came

    lane.call = delivered_then_lost  # type: ignore[method-assign]
    assert sched.enqueue("once", LATER, "Noop", input="first") is ScheduleResult.SUCCESS
    messages = _messages(sched)
    assert messages["retries_answered"] == 1  # Ray's try was a retry, answered from the stored answer
    assert messages["enqueue_calls"] == 2 and _lane_status(sched)["calls"] == 1
    info = sched.get_task_info("once")
    assert info.state is TaskState.ENQUEUED and info.run_count == 0


def test_with_the_lane_off_every_kind_of_run_and_result_goes_through_ray(engines: Any, tmp_path: Path) -> None:
    """As to and from executors on other nodes: runs and results travel through Ray's calls
    as lists of their fields (kmpray/protocol.py), a run handed on with its successor, an
    array's object-store references both ways, progress, a result in a submit's answer and
    one reported on its own. (A heavy worker's: test_multinode.py, where the heavy node is
    the other one.)"""
    sched = engines(config=kmpray.EngineConfig(local_lane=False))
    register_all(sched)
    assert sched.enqueue("t", TaskTrigger.OneTime(), "Noop") is ScheduleResult.SUCCESS
    assert sched.wait("t", timeout_s=60).state is TaskState.SUCCEEDED
    assert _lane_status(sched) is None and sched._lanes[0].calls == 0
    with pytest.raises(LaneDown):
        sched._lanes[0].call("enqueue_many", [[], "tok"], 5)
    log = tmp_path / "steps.log"
    steps = [TaskRequest("Step", json.dumps({"log": str(log)}) if i == 0 else None, id=f"s{i}") for i in range(3)]
    sched.begin_with(steps[0]).then(steps[1]).then(steps[2]).with_id("seq").enqueue()
    big = json.dumps({"n": 200_000, "seed": 3})  # 1.6 MB: through the object store
    sched.begin_with(TaskRequest("ArrayMaker", big, id="make")).then(TaskRequest("ArraySum", id="sum")) \
        .with_id("arrays").enqueue()
    sched.enqueue("progress", TaskTrigger.OneTime(), "Progress")
    sched.enqueue("slow", TaskTrigger.OneTime(), "Sleeps", input="0.3")  # past a submit's answer
    infos = sched.wait(["seq", "arrays", "progress", "slow"], timeout_s=120)
    assert [i.state for i in infos] == [TaskState.SUCCEEDED] * 4
    assert log.read_text().split() == ["s0", "s1", "s2"]  # each once
    assert sched.get_task_info("s2").result.data["hops"] == 3
    assert sched.get_task_info("sum").result.data["sum"] == float((np.arange(200_000) + 3).sum())
    assert sched.get_task_info("progress").progress == 100
    assert sched._lanes[0].calls == 0 and sched.status()["messages"]["reports_received"] >= 1


@ONE_SHARD
def test_after_a_scheduler_restart_the_lane_is_found_again(
    engines: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sched = engines()
    register_all(sched)
    assert sched.enqueue("before", LATER, "Noop") is ScheduleResult.SUCCESS
    old = _lane_status(sched)
    assert old is not None and old["calls"] == 1
    ray.kill(ray.get_actor("kmpray.scheduler", namespace=sched.namespace), no_restart=False)
    # over the old lane while that process still serves (ray.kill returns before it ends),
    # through Ray (waiting for the restart) once it is gone
    assert sched.enqueue("during", LATER, "Noop") is ScheduleResult.SUCCESS
    monkeypatch.setattr(client_lane, "LOST_RECHECK_S", 0.0)
    names: list[str] = []

    def over_a_new_lane() -> bool:
        names.append(f"after{len(names)}")
        assert sched.enqueue(names[-1], LATER, "Noop") is ScheduleResult.SUCCESS
        return (_lane_status(sched) or {}).get("calls", 0) >= 1  # the restarted scheduler's lane

    until(over_a_new_lane, timeout_s=60, what="a call over the restarted scheduler's lane")
    # whichever process answered, every acknowledged enqueue is in the restarted one
    assert {sched.get_task_info(n).state for n in ("before", "during", *names)} == {TaskState.ENQUEUED}


@ONE_SHARD
def test_a_result_reported_over_the_lane_survives_its_executor_killed_right_after(
    engines: Any, tmp_path: Path
) -> None:
    """Through Ray's report call, a result waiting behind an earlier report's call (one in
    flight) was lost with its process and the finished run ran again; over the lane both
    are in the kernel before the process goes on."""
    sched = engines()
    register_all(sched)
    ledger, marker = tmp_path / "ledger", tmp_path / "marker"
    cfg = json.dumps({"ledger": str(ledger), "marker": str(marker)})
    dies = sched.enqueue("dies", TaskTrigger.OneTime(), "DiesAfterFinishing", input=cfg)
    assert dies is ScheduleResult.SUCCESS
    info = sched.wait("dies", timeout_s=60)
    assert marker.exists()  # its process was killed after this run
    assert info.state is TaskState.SUCCEEDED and info.run_attempt_count == 1
    assert ledger.read_text().splitlines() == ["start dies"]  # ran once: the result was not lost
    assert _lane_status(sched)["reports"] >= 1


@ONE_SHARD
def test_runs_go_down_the_lane_to_this_nodes_executors(engines: Any, tmp_path: Path) -> None:
    sched = engines()
    register_all(sched)
    names: list[str] = []

    def one_over_the_lane() -> bool:  # the executors say who they are once their lane is open
        names.append(f"t{len(names)}")
        assert sched.enqueue(names[-1], TaskTrigger.OneTime(), "Noop") is ScheduleResult.SUCCESS
        assert sched.wait(names[-1], timeout_s=30).state is TaskState.SUCCEEDED
        return bool(_lane_status(sched)["submits"])

    until(one_over_the_lane, timeout_s=30, what="a batch of runs down an executor's lane")
    heavy: list[str] = []

    def one_heavy_over_the_lane() -> bool:  # a heavy worker's lane opens once it has started
        heavy.append(f"h{len(heavy)}")
        sched.enqueue(heavy[-1], TaskTrigger.OneTime(), "Noop", constraints=Constraints(is_heavy_task=True))
        assert sched.wait(heavy[-1], timeout_s=60).state is TaskState.SUCCEEDED
        return bool(_lane_status(sched)["heavy_submits"])

    until(one_heavy_over_the_lane, timeout_s=60, what="a heavy run down a heavy worker's lane")
    # its process killed with the batch unanswered: the run goes again (a system re-run)
    ledger, marker = tmp_path / "ledger", tmp_path / "marker"
    cfg = json.dumps({"ledger": str(ledger), "marker": str(marker)})
    dies = sched.enqueue("dies", TaskTrigger.OneTime(), "DiesAtOnceFirstTime", input=cfg)
    assert dies is ScheduleResult.SUCCESS
    info = sched.wait("dies", timeout_s=90)
    starts = ledger.read_text().splitlines()
    assert info.state is TaskState.SUCCEEDED and info.run_attempt_count == 1
    assert len(starts) == 2 and starts[0].split()[2] != starts[1].split()[2]  # again, in another process

