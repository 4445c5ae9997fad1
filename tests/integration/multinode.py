"""Run by test_multinode.py in its own process: a 2-node ray.cluster_utils.Cluster.

Prints one JSON line with where things ran. The head has 1 CPU; the second node has
1 CPU and the custom resource ``heavy`` (as cluster.yaml's heavy node type). The heavy
pool's checks run last on the same cluster (``"unplaceable"``, ``"heavy_pool"``), then the
chaos scenario node-loss, quick (``"node_loss"``).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray
from kmpray.bench.common import scratch_dir
from ray.cluster_utils import Cluster

import kmpray
from kmpray import Constraints, EngineConfig, TaskRequest, TaskTrigger, WorkerResult


class Logged(kmpray.CommonWorker):
    """Appends its task id to a shared log, then takes a little while."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> bool:  # noqa: A002
        import asyncio

        with open(input or "", "a") as f:
            f.write(ctx.task_id + "\n")
        await asyncio.sleep(0.05)
        return True


class Slow(kmpray.CommonWorker):
    """Logs each start, then takes 2 s; returns the node it ran on."""

    async def do_work(self, input: str | None) -> WorkerResult:  # noqa: A002
        import asyncio

        import ray

        with open(input or "", "a") as f:
            f.write("start\n")
        await asyncio.sleep(2)
        return WorkerResult.Success(data={"node": ray.get_runtime_context().get_node_id()})


class WhereAmI(kmpray.CommonWorker):
    async def do_work(self, input: str | None) -> WorkerResult:  # noqa: A002
        import ray

        return WorkerResult.Success(data={"node": ray.get_runtime_context().get_node_id()})


class HalfSecond(kmpray.CommonWorker):
    """A heavy task of ~0.5 s: returns its node and when it ran."""

    async def do_work(self, input: str | None) -> WorkerResult:  # noqa: A002
        import asyncio
        import time

        import ray

        began = time.time()
        await asyncio.sleep(float(input or "0.5"))
        return WorkerResult.Success(data={"node": ray.get_runtime_context().get_node_id(), "began": began,
                                          "ended": time.time()})


# Everything this run writes (state dir, logs): removed when the process ends. Before
# session 52 each run left its folders in the temp folder, a 200 MB step-data artifact
# among them.
SCRATCH = Path(scratch_dir("kmpray-multinode-"))


def _scratch(name: str) -> Path:
    folder = SCRATCH / name
    folder.mkdir()
    return folder


def _finish(out: dict[str, object], scheds: list[Any], cluster: Cluster) -> None:
    """Print the one RESULT line, then stop the engines, Ray and (always: a cluster left
    running is what the next ray.init() finds) the cluster."""
    print("RESULT " + json.dumps(out))
    sys.stdout.flush()
    try:
        for sched in scheds:
            sched.shutdown()
        ray.shutdown()
    finally:
        cluster.shutdown()


def unplaceable(cluster: Cluster, sched: Any, out: dict[str, object]) -> Any:
    """Once step_data has removed the last node with ``heavy``: a heavy task waits, saying
    why, while the pool neither fails it nor replaces its unplaceable actors in a loop; it
    runs when such a node joins. Returns that node (it stays)."""
    import time

    sched.register_worker("HalfSecond", HalfSecond)
    sched.enqueue("g", TaskTrigger.OneTime(), "HalfSecond", constraints=Constraints(is_heavy_task=True))
    deadline = time.monotonic() + 30  # the demand has both actors waiting for placement
    while time.monotonic() < deadline and sched.status()["heavy"]["pending"] < 2:
        time.sleep(0.1)
    before = sched.status()["heavy"]
    time.sleep(3)  # several reconcile rounds (heavy_unreachable_s=3): still waiting, not replaced
    waiting = sched.get_task_info("g")
    out["unplaceable"] = {"state": waiting.state.value,
                          "waiting_for": waiting.waiting_for.message if waiting.waiting_for else None,
                          "before": before, "status": sched.status()["heavy"]}
    late = cluster.add_node(num_cpus=1, resources={"heavy": 1})
    done = sched.wait("g", timeout_s=60)
    out["unplaceable_after_join"] = {"state": done.state.value, "on_new_node": done.result.data["node"] == late.node_id}
    return late


def heavy_pool(heavy_node: Any, cluster: Cluster, sched: Any) -> tuple[dict[str, object], Any]:
    """One heavy node, heavy_pool_size=2 (#18): no worker waits on an unplaceable actor; the
    pool grows when a second heavy node joins. Run on main()'s cluster and engine, with the
    one heavy node unplaceable() left and its pool's other actor waiting for placement (an
    engine of its own was ~5 s of start and stop here). Returns its results and the node
    that joined (it stays)."""
    import time

    out: dict[str, object] = {"heavy_node": heavy_node.node_id}
    replaced_before = sched.status()["heavy"]["replaced"]  # the earlier parts' node losses
    heavy = Constraints(is_heavy_task=True)
    start = time.monotonic()
    for i in range(4):
        sched.enqueue(f"h{i}", TaskTrigger.OneTime(), "HalfSecond", constraints=heavy)
    infos = [sched.wait(f"h{i}", timeout_s=60) for i in range(4)]
    out["four_s"] = time.monotonic() - start
    out["four_nodes"] = sorted({i.result.data["node"] for i in infos})
    out["four_states"] = [i.state.value for i in infos]
    out["status_one_node"] = dict(sched.status()["heavy"])
    out["status_one_node"]["replaced"] -= replaced_before  # type: ignore[index,operator]

    joined = cluster.add_node(num_cpus=1, resources={"heavy": 1})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sched.status()["heavy"]["placed"] < 2:
        time.sleep(0.1)
    out["status_two_nodes"] = dict(sched.status()["heavy"])
    out["status_two_nodes"]["replaced"] -= replaced_before  # type: ignore[index,operator]
    for i in range(2):
        sched.enqueue(f"p{i}", TaskTrigger.OneTime(), "HalfSecond", input="1.5", constraints=heavy)
    pair = [sched.wait(f"p{i}", timeout_s=60).result.data for i in range(2)]
    out["pair_overlap"] = min(p["ended"] for p in pair) > max(p["began"] for p in pair)
    out["pair_nodes"] = sorted({p["node"] for p in pair})
    out["joined"] = joined.node_id
    return out, joined


def node_loss(cluster: Cluster, nodes: list[Any], sched: Any) -> dict[str, object]:
    """The chaos scenario ``node-loss`` (bench/chaos_nodes.py), quick, on this cluster and
    engine with ``nodes`` as its two worker nodes: removed and replaced in turn under 100
    tasks/s. Run last, here, to spare the suite a 3-node cluster's start of its own (and an
    engine's: the ledger tasks are told apart from the earlier parts' by their ids)."""
    from kmpray.bench.chaos_nodes import under_load

    ledger = _scratch("node-loss") / "ledger"
    return under_load(cluster, nodes, sched, ledger=ledger, rounds=2, rate=100, every_s=1.5)


class BigArray(kmpray.CommonWorker):
    """Makes an array of ``input`` MB of float64 (a ramp); logs each run; says where."""

    def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> WorkerResult:  # noqa: A002
        import numpy as np

        mb, log = (input or "1:").split(":", 1)
        if log:
            with open(log, "a") as f:
                f.write(ctx.task_id + "\n")
        arr = np.arange(int(mb) * 1024 * 1024 // 8, dtype=np.float64)
        return WorkerResult.Success(data={"arr": arr, "node": ray.get_runtime_context().get_node_id()})


class SumArray(kmpray.CommonWorker):
    def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> WorkerResult:  # noqa: A002
        arr = ctx.upstream_data["arr"]
        return WorkerResult.Success(data={"sum": float(arr.sum()), "n": int(arr.size), "read_only": not arr.flags.writeable,
                                          "from": ctx.upstream_data["node"],
                                          "node": ray.get_runtime_context().get_node_id()})


def step_data(cluster: Cluster, sched: Any, state: str, other: Any, out: dict[str, object]) -> None:
    """#15: a 200 MB array between steps on two nodes (written to the artifact folder on
    the head by the scheduler, since the producer's node cannot reach it), and an object
    lost with its node read back from that artifact. Removes ``other``."""
    import time

    head = cluster.head_node.node_id
    sched.register_worker("BigArray", BigArray)
    sched.register_worker("SumArray", SumArray)
    # Producers need charging (only the other node), consumers storage not low (only the head).
    sched.set_device_state(node_id=head, charging=False)
    sched.set_device_state(node_id=other.node_id, charging=True, storage_low=True)
    make = Constraints(requires_charging=True)
    use = Constraints(requires_storage_not_low=True)
    start = time.monotonic()
    sched.begin_with(TaskRequest("BigArray", input="200:", id="arr-p", constraints=make)).then(
        TaskRequest("SumArray", id="arr-s", constraints=use)).with_id("arr-c").enqueue()
    out["state"] = sched.wait("arr-c", timeout_s=120).state.value
    out["seconds"] = round(time.monotonic() - start, 2)
    out["consumer"] = sched.get_task_info("arr-s").result.data
    out["artifacts"] = os.listdir(os.path.join(state, "artifacts"))

    # The producer's node goes away before its successor may run: the object is lost.
    log = str(_scratch("lost-object") / "runs.log")
    sched.set_device_state(node_id=head, storage_low=True)  # no node may run s2 yet
    sched.begin_with(TaskRequest("BigArray", input=f"50:{log}", id="lost-p", constraints=make)).then(
        TaskRequest("SumArray", id="lost-s", constraints=use)).with_id("lost-c").enqueue()
    out["p2"] = sched.wait("lost-p", timeout_s=120).state.value
    out["s2_before_loss"] = sched.get_task_info("lost-s").state.value
    cluster.remove_node(other)
    sched.set_device_state(node_id=head, storage_low=False)
    out["after_loss"] = sched.wait("lost-c", timeout_s=120).state.value
    out["consumer2"] = sched.get_task_info("lost-s").result.data
    out["producer2_runs"] = len(open(log).read().split())


def main() -> None:
    import time

    began = time.monotonic()
    phases: dict[str, float] = {}  # seconds from the start to the end of each part: where the time goes

    def mark(name: str) -> None:
        phases[name] = round(time.monotonic() - began, 1)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    other = cluster.add_node(num_cpus=1, resources={"heavy": 1})
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    head = cluster.head_node.node_id
    sched = None
    out: dict[str, object] = {"head": head, "other": other.node_id, "phases_s": phases}
    mark("cluster")
    state = str(_scratch("state"))
    try:
        sched = kmpray.connect(
            namespace="multinode",
            state_dir=state,
            config=EngineConfig(heavy_resources={"heavy": 1}, heavy_num_cpus=0, heavy_unreachable_s=3),
        )
        mark("engine")
        sched.register_worker("WhereAmI", WhereAmI)
        charging = Constraints(requires_charging=True)
        sched.set_device_state(node_id=head, charging=False, battery_level=50)
        sched.set_device_state(node_id=other.node_id, charging=True)
        sched.enqueue("on-other", TaskTrigger.OneTime(), "WhereAmI", constraints=charging)
        out["on_other"] = sched.wait("on-other", timeout_s=120).result.data["node"]
        sched.set_device_state(node_id=other.node_id, charging=False, battery_level=50)
        sched.set_device_state(node_id=head, charging=True)
        sched.enqueue("on-head", TaskTrigger.OneTime(), "WhereAmI", constraints=charging)
        out["on_head"] = sched.wait("on-head", timeout_s=120).result.data["node"]
        sched.clear_device_overrides()
        sched.enqueue("heavy", TaskTrigger.OneTime(), "WhereAmI", constraints=Constraints(is_heavy_task=True))
        out["heavy"] = sched.wait("heavy", timeout_s=120).result.data["node"]
        sched.enqueue_many([TaskRequest("WhereAmI", id=f"s{i}") for i in range(40)])
        out["spread"] = sorted({sched.wait(f"s{i}", timeout_s=120).result.data["node"] for i in range(40)})
        out["executor_nodes"] = sched.status()["executor_nodes"]
        out["scheduler_node"] = sched.status()["node"]
        mark("placement")
        # Fault: the worker node goes away while work is in flight on it.
        import time

        sched.register_worker("Logged", Logged)
        sched.register_worker("Slow", Slow)
        log = str(_scratch("fault") / "runs.log")
        ids = [f"f{i}" for i in range(300)]
        sched.enqueue_many([TaskRequest("Logged", log, id=i) for i in ids])
        # ...and a heavy task, running on the only node with the `heavy` resource.
        heavy_log = str(_scratch("heavy") / "heavy.log")
        sched.enqueue("big", TaskTrigger.OneTime(), "Slow", input=heavy_log, constraints=Constraints(is_heavy_task=True))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the fault must hit a running load, not an idle one
            if os.path.exists(log) and len(open(log).read().split()) >= 20:
                break
            time.sleep(0.01)
        while time.monotonic() < deadline and not os.path.exists(heavy_log):
            time.sleep(0.01)
        in_flight = sched.status()["inflight_by_node"].get(other.node_id, 0)
        cluster.remove_node(other)
        # A node joins: it gets executors, and (having `heavy`) the heavy task's new worker.
        joined = cluster.add_node(num_cpus=1, resources={"heavy": 1})
        finished = []
        deadline = time.monotonic() + 60  # one bound for the whole fault, not one per task
        for i in ids:
            try:
                finished.append(sched.wait(i, timeout_s=max(0.1, deadline - time.monotonic())).state.value)
            except TimeoutError:
                finished.append("UNFINISHED")
        runs = open(log).read().split()
        big = sched.wait("big", timeout_s=max(0.1, deadline - time.monotonic()))
        out["heavy_after_fault"] = {
            "state": big.state.value,
            "node": (big.result.data or {}).get("node") == joined.node_id if big.result else None,
            "runs": len(open(heavy_log).read().split()),
        }
        while time.monotonic() < deadline and joined.node_id not in sched.status()["executor_nodes"]:
            time.sleep(0.05)
        status = sched.status()
        out["after_fault"] = {"scheduler_node": status["node"], "executor_nodes": status["executor_nodes"]}
        out["joined"] = joined.node_id
        failed = [sched.get_task_info(i) for i, state in zip(ids, finished, strict=True) if state != "SUCCEEDED"]
        out["not_succeeded"] = [f"{info.id}: {info.state.value} {info.result}" for info in failed[:5]]
        out["fault"] = {
            "submitted": len(ids),
            "succeeded": finished.count("SUCCEEDED"),
            "lost": len(ids) - finished.count("SUCCEEDED"),
            "duplicated": len(runs) - len(set(runs)),
            "in_flight_at_fault": in_flight,
        }
        mark("fault")
        step_data(cluster, sched, state, joined, out)  # it removes the joined node
        mark("step_data")
        try:  # the heavy pool's own test reads these: a failure must not hide the results above
            late = unplaceable(cluster, sched, out)
            mark("unplaceable")
            out["heavy_pool"], joined2 = heavy_pool(late, cluster, sched)
            mark("heavy_pool")
        except Exception:
            out["heavy_pool"] = {"error": traceback.format_exc()}
            out["node_loss"] = {"error": "not run: the heavy pool's part before it failed"}
        else:
            try:  # likewise: read by test_multinode.py's node-loss test alone
                out["node_loss"] = node_loss(cluster, [late, joined2], sched)
                mark("node_loss")
            except Exception:
                out["node_loss"] = {"error": traceback.format_exc()}
    finally:
        _finish(out, [sched] if sched is not None else [], cluster)


if __name__ == "__main__":
    main()
