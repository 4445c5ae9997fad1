"""Step data beyond msgpack on a real Ray (#15): numpy arrays and bytes between chain
steps through the object store, their artifacts under state_dir, restarts and lost
objects, bad outputs and cleanup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kmpray.actors.names import base_namespace

import kmpray
from kmpray import (
    Constraints,
    EngineConfig,
    ExistingPolicy,
    ExistingWorkPolicy,
    InputMerger,
    ScheduleResult,
    TaskRequest,
    TaskState,
    TaskTrigger,
)

from .helpers import ONE_SHARD, count_runs
from .workers import register_all

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def shared(ray_session: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One virtual-time engine for the tests that neither restart nor reconfigure it (each
    uses its own ids): an engine's start is most of a short test's time."""
    sched = kmpray.connect(namespace="step-data-shared", state_dir=str(tmp_path_factory.mktemp("shared")),
                           virtual_time=True)
    register_all(sched)
    yield sched
    sched.shutdown()
BIG = 200_000  # float64 elements: 1.6 MB, over the 64 KiB inline limit


def make(tid: str, **cfg: Any) -> TaskRequest:
    return TaskRequest("ArrayMaker", input=json.dumps(cfg), id=tid)


def expected(n: int, seed: int = 0) -> float:
    return float((np.arange(n, dtype=np.float64) + seed).sum())


def artifacts(state_dir: Path) -> list[str]:
    folder = state_dir / "artifacts"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


CASES = [("float64", [BIG]), ("int16", [400, 500]), ("uint8", [10]), ("complex64", [3, 2])]


def test_arrays_pass_between_sequential_steps(shared: Any) -> None:
    for i, (dtype, shape) in enumerate(CASES):  # one engine for all: setup is most of a test's time
        n = int(np.prod(shape))
        chain = shared.begin_with(make(f"m{i}", n=n, dtype=dtype, shape=shape)).then(
            TaskRequest("ArraySum", id=f"s{i}")
        )
        assert chain.with_id(f"c{i}").enqueue() is ScheduleResult.SUCCESS
    for i, (dtype, shape) in enumerate(CASES):
        assert shared.wait(f"c{i}", timeout_s=60).state is TaskState.SUCCEEDED
        n = int(np.prod(shape))
        got = shared.get_task_info(f"s{i}").result.data
        want = float(np.arange(n, dtype=np.float64).astype(dtype).real.astype(np.float64).sum())
        assert got["sum"] == pytest.approx(want) and got["dtypes"] == [dtype] and got["shapes"] == [shape]
        assert got["read_only"] is True and got["raw"] == [300_000]
        assert got["input_chars"] < 1000  # the JSON input names the array; it does not spell it out
        # TaskInfo shows descriptors; get_output gives the real values.
        shown = shared.get_task_info(f"m{i}").result.data
        assert (
            shown["arr"]["$kmpray"] == "ndarray"
            and shown["arr"]["shape"] == shape
            and "b" not in shown["arr"]
        )
        assert ("blake3" in shown["arr"]) == (n * np.dtype(dtype).itemsize > 64 * 1024)
        out = shared.get_output(f"m{i}")
        assert isinstance(out["arr"], np.ndarray) and out["arr"].dtype == np.dtype(dtype)
        assert out["arr"].shape == tuple(shape) and not out["arr"].flags.writeable
        assert out["raw"] == b"\x00" * 300_000 and out["meta"] == {"n": n, "dtype": dtype}
    assert shared.get_output("nope") is None


def test_binary_bytes_in_a_result_stay_bytes_and_show_as_descriptors_in_json(shared: Any) -> None:
    """b"\\xff..." is not UTF-8: the scheduler sent TaskInfo in pydantic's JSON mode, which
    turned bytes into str and failed on these (get_task_info, wait and list_tasks raised)."""
    sub = shared.events.subscribe()
    try:
        assert shared.enqueue("bin", TaskTrigger.OneTime(), "ArrayMaker", input='{"seed": 255}') is (
            ScheduleResult.SUCCESS)
        info = shared.wait("bin", timeout_s=60)
        assert info.result.data["raw"] == b"\xff" * 300_000  # bytes, as the worker returned them
        assert shared.get_task_info("bin").result.data["raw"] == info.result.data["raw"]
        assert next(t for t in shared.list_tasks() if t.id == "bin").result.data["raw"][:2] == b"\xff\xff"
        # JSON (kmpray info, the dashboard, kmpray events): a descriptor, as the JSON input shows it
        shown = json.loads(info.model_dump_json())["result"]["data"]
        assert shown["raw"] == {"$kmpray": "bytes", "nbytes": 300_000} and shown["meta"]["n"] == 10
        event = next(e for e in iter(lambda: sub.get(timeout_s=10), None) if e.task_id == "bin")
        assert event.output_data["raw"] == b"\xff" * 300_000
        assert event.model_dump(mode="json")["output_data"]["raw"] == {"$kmpray": "bytes", "nbytes": 300_000}
    finally:
        sub.close()


def test_parallel_step_fans_in_arrays_with_the_array_merger(shared: Any) -> None:
    first = [make(f"p{i}", n=BIG + i, seed=i) for i in range(3)]
    fan = TaskRequest("ArraySum", id="sum", input_merger=InputMerger.ARRAY)
    assert shared.begin_with(first).then(fan).with_id("fan").enqueue() is ScheduleResult.SUCCESS
    assert shared.wait("fan", timeout_s=60).state is TaskState.SUCCEEDED
    got = shared.get_task_info("sum").result.data
    assert got["shapes"] == [[BIG], [BIG + 1], [BIG + 2]]  # in prerequisite order
    assert got["sum"] == pytest.approx(sum(expected(BIG + i, i) for i in range(3)))
    assert got["raw"] == [300_000] * 3


def test_appended_work_gets_arrays_and_get_output_async(shared: Any) -> None:
    import asyncio

    append = Constraints(existing_work_policy=ExistingWorkPolicy.APPEND)
    shared.enqueue(
        "job",
        kmpray.TaskTrigger.OneTime(),
        "ArrayMaker",
        input=json.dumps({"n": BIG, "seed": 3}),
        constraints=append,
    )
    shared.enqueue("job", kmpray.TaskTrigger.OneTime(), "ArraySum", constraints=append)
    assert shared.wait("job", timeout_s=60).state is TaskState.SUCCEEDED
    infos = {t.id: t for t in shared.list_tasks()}
    assert infos["job#2"].result.data["sum"] == pytest.approx(expected(BIG, 3))
    out = asyncio.run(shared.get_output_async("job"))  # a unique name: its latest work, job#2
    assert out["sum"] == pytest.approx(expected(BIG, 3)) and out["read_only"] is True


def test_heavy_step_reads_arrays_too(shared: Any) -> None:
    heavy = TaskRequest("ArraySum", id="heavy-sum", constraints=Constraints(is_heavy_task=True))
    assert shared.begin_with(make("heavy-make", n=BIG)).then(heavy).with_id("heavy-chain").enqueue() is ScheduleResult.SUCCESS
    assert shared.wait("heavy-chain", timeout_s=60).state is TaskState.SUCCEEDED
    assert shared.get_task_info("heavy-sum").result.data["sum"] == pytest.approx(expected(BIG))


def test_an_output_that_cannot_be_stored_fails_its_step_and_the_rest(shared: Any) -> None:
    cases = {
        "object": ["Success.data['bad']", "dtype object", "pickle"],
        "set": ["Success.data['bad']", "set", "not msgpack-serializable"],
    }
    for bad in cases:
        shared.begin_with(make(f"m-{bad}", bad=bad)).then(TaskRequest("ArraySum", id=f"s-{bad}")).with_id(
            f"c-{bad}"
        ).enqueue()
    for bad, words in cases.items():
        assert shared.wait(f"c-{bad}", timeout_s=60).state is TaskState.FAILED
        msg = shared.get_task_info(f"m-{bad}").result.message
        assert all(w in msg for w in words), msg
        after = shared.get_task_info(f"s-{bad}")
        assert after.state is TaskState.FAILED and after.run_attempt_count == 0


def test_caps_fail_the_step_naming_key_and_cap(engines: Any, tmp_path: Path) -> None:
    sched = engines(
        virtual_time=True,
        config=EngineConfig(max_artifact_bytes=1_000_000, max_artifacts_total_bytes=3_000_000),
    )
    register_all(sched)
    sched.enqueue("over", kmpray.TaskTrigger.OneTime(), "ArrayMaker", input=json.dumps({"n": BIG}))
    info = sched.wait("over", timeout_s=60)
    assert info.state is TaskState.FAILED
    assert (
        "Success.data['arr']" in info.result.message and "max_artifact_bytes (1000000" in info.result.message
    )
    small = 100_000  # 0.8 MB each: the folder's cap stops the fourth distinct one
    for i in range(4):
        sched.enqueue(
            f"t{i}", kmpray.TaskTrigger.OneTime(), "ArrayMaker", input=json.dumps({"n": small, "seed": i})
        )
        sched.wait(f"t{i}", timeout_s=60)
    states = [sched.get_task_info(f"t{i}").state for i in range(4)]
    assert states == [TaskState.SUCCEEDED] * 3 + [TaskState.FAILED]
    assert "max_artifacts_total_bytes (3000000 bytes)" in sched.get_task_info("t3").result.message


def test_consumer_after_a_whole_engine_restart_reads_the_artifact(ray_session: Any, tmp_path: Path) -> None:
    """The producer ran once; its object died with the engine; the successor, gated until
    after the restart, gets equal bytes from the artifact."""
    ns, state, log = "restart-data", tmp_path / "state", tmp_path / "log"
    first = kmpray.connect(namespace=ns, state_dir=str(state))
    try:
        register_all(first)
        first.set_device_state(charging=False)
        gated = TaskRequest("ArraySum", id="s", constraints=Constraints(requires_charging=True))
        first.begin_with(make("m", n=BIG, seed=7, log=str(log))).then(gated).with_id("c").enqueue()
        assert first.wait("m", timeout_s=60).state is TaskState.SUCCEEDED
        assert len(artifacts(state)) == 1 and artifacts(state)[0].endswith(
            ".npy"
        )  # the 300 KB bytes stay in the row
    finally:
        first.shutdown()
    second = kmpray.connect(namespace=ns, state_dir=str(state))
    try:
        register_all(second)
        second.set_device_state(charging=True)
        assert second.wait("c", timeout_s=60).state is TaskState.SUCCEEDED
        assert second.get_task_info("s").result.data["sum"] == pytest.approx(expected(BIG, 7))
        assert count_runs(str(log)) == 1  # never re-run for its data
        assert float(second.get_output("m")["arr"].sum()) == pytest.approx(expected(BIG, 7))
    finally:
        second.shutdown()


@ONE_SHARD  # it reads shard 0's artifact folder and scheduler
def test_object_lost_with_its_owner_is_read_from_the_artifact_and_replaced_ones_swept(
    engines: Any, tmp_path: Path
) -> None:
    import ray

    state = tmp_path / "state"
    sched = engines(state_dir=state)
    register_all(sched)
    log = tmp_path / "log"
    sched.set_device_state(charging=False)
    gated = TaskRequest("ArraySum", id="s", constraints=Constraints(requires_charging=True))
    sched.begin_with(make("m", n=BIG, seed=5, log=str(log))).then(gated).with_id("c").enqueue()
    assert sched.wait("m", timeout_s=60).state is TaskState.SUCCEEDED
    # The executor that made the array owns its object: killing every executor loses it
    # while the scheduler still holds the reference.
    for ns, name in [
        (a["namespace"], a["name"])
        for a in ray.util.list_named_actors(all_namespaces=True)
        if base_namespace(a["namespace"]) == sched.namespace and ".executor." in a["name"]  # every shard's
    ]:
        ray.kill(ray.get_actor(name, namespace=ns), no_restart=False)
    sched.set_device_state(charging=True)
    assert sched.wait("c", timeout_s=60).state is TaskState.SUCCEEDED
    assert sched.get_task_info("s").result.data["sum"] == pytest.approx(expected(BIG, 5))
    assert count_runs(str(log)) == 1
    assert float(sched.get_output("m")["arr"].sum()) == pytest.approx(expected(BIG, 5))

    # REPLACE the chain: the old output's file goes at the next sweep, the new one stays.
    old = artifacts(state)
    assert len(old) == 1
    chain = sched.begin_with(make("m", n=BIG, seed=2)).then(TaskRequest("ArraySum", id="s"))
    assert chain.with_id("c", ExistingPolicy.REPLACE).enqueue() is ScheduleResult.SUCCESS
    assert sched.wait("c", timeout_s=60).state is TaskState.SUCCEEDED
    assert len(artifacts(state)) == 2
    actor = ray.get_actor("kmpray.scheduler", namespace=sched.namespace)
    swept = ray.get(actor.sweep_artifacts.remote(0.0), timeout=30)
    assert swept["removed"] == 1 and swept["kept"] == 1
    assert len(artifacts(state)) == 1 and artifacts(state) != old
    assert float(sched.get_output("m")["arr"].sum()) == pytest.approx(expected(BIG, 2))
