"""chains: per-step overhead of a sequential chain, fan-out rate of a parallel step, and
a large numpy array handed from one step to the next (#15).

Baselines, same run: a sequential chain of raw Ray tasks (each step waits for the one
before, passing its output), a fan-out of raw Ray tasks awaited together, and
``ray.put`` + ``ray.get`` (+ the sum) of an array of the same size.
"""

from __future__ import annotations

import time
from typing import Any

from .common import engine, ray_up, settle, table, write


def _register(sched: Any) -> None:
    import kmpray

    class BenchStep(kmpray.CommonWorker):
        async def do_work(self, input: str | None) -> bool:  # noqa: A002
            return True

    class BenchArray(kmpray.CommonWorker):
        """Returns an array of ``input`` MB, made once per process; each run changes one
        element, so every run's output is new content (no artifact is reused)."""

        made: Any = None

        def do_work(self, input: str | None) -> Any:  # noqa: A002
            import numpy as np

            n = int(input or "1") * 1024 * 1024 // 8
            if BenchArray.made is None or BenchArray.made.size != n:
                BenchArray.made = np.ones(n)
            BenchArray.made[0] += 1
            return kmpray.WorkerResult.Success(data={"arr": BenchArray.made})

    class BenchSum(kmpray.CommonWorker):
        def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
            return kmpray.WorkerResult.Success(data={"sum": float(ctx.upstream_data["arr"].sum())})

    sched.register_worker("BenchStep", BenchStep)
    sched.register_worker("BenchArray", BenchArray)
    sched.register_worker("BenchSum", BenchSum)


def _shm_mib() -> float:
    """Pages the object store has touched on this node (it lives in /dev/shm; freed pages
    are reused, not returned, so only the first growth counts copies)."""
    import shutil

    return shutil.disk_usage("/dev/shm").used / 2**20


def array_hop(ray: Any, sched: Any, mb: int, rounds: int) -> dict[str, Any]:
    """One step making an ``mb`` MB float64 array, its successor summing it, against
    ``ray.put`` + ``ray.get`` + sum of an array of that size, interleaved, best of ``rounds``.
    Round 0 (warm-up, not timed) runs the engine first on a fresh object store and counts
    how many copies of the array it made there."""
    import numpy as np

    from kmpray import TaskRequest, TaskState

    arr = np.ones(mb * 1024 * 1024 // 8)
    engine_ms, raw_ms = [], []
    copies: float | None = float("nan")
    for i in range(rounds + 1):
        before = _shm_mib()
        chain = sched.begin_with(TaskRequest("BenchArray", input=str(mb), id=f"a{i}")).then(
            TaskRequest("BenchSum", id=f"s{i}")).with_id(f"arr{i}")
        start = time.perf_counter()
        chain.enqueue()
        assert sched.wait(f"arr{i}", timeout_s=600).state is TaskState.SUCCEEDED
        took = (time.perf_counter() - start) * 1000
        if i == 0:
            copies = (_shm_mib() - before) / mb
            if copies < 0.5:  # an array is made once at least: the store reused pages touched
                copies = None  # earlier in the run (--quick's 20 MB), so none were counted
        arr[0] += 1
        start = time.perf_counter()
        ref = ray.put(arr)
        float(ray.get(ref).sum())
        raw = (time.perf_counter() - start) * 1000
        del ref
        if i:
            engine_ms.append(took)
            raw_ms.append(raw)
    return {
        "array_mb": mb,
        "array_ms": round(min(engine_ms), 1),
        "ray_put_get_ms": round(min(raw_ms), 1),
        "array_ratio": round(min(engine_ms) / min(raw_ms), 2),
        "array_object_store_copies": None if copies is None else round(copies, 2),
        "array_ms_all": [round(x, 1) for x in engine_ms],
        "ray_put_get_ms_all": [round(x, 1) for x in raw_ms],
    }


def run(quick: bool = False, json_path: str | None = None, address: str | None = None) -> dict[str, Any]:
    from kmpray import TaskRequest, TaskState

    ray = ray_up(address)
    steps = 200 if quick else 1000
    width = 1000 if quick else 5000

    @ray.remote
    def raw_step(x: int) -> int:
        return x + 1

    start = time.perf_counter()
    ref: Any = 0
    for _ in range(steps):
        ref = ray.get(raw_step.remote(ref))
    raw_step_ms = (time.perf_counter() - start) * 1000 / steps
    start = time.perf_counter()
    ray.get([raw_step.remote(i) for i in range(width)])
    raw_fanout = width / (time.perf_counter() - start)

    from kmpray import EngineConfig

    def sequential(sched: Any, coordinators: int) -> float:
        # A first chain starts the engine's chain coordinators (a process each): not measured.
        sched.begin_with(TaskRequest("BenchStep")).then(TaskRequest("BenchStep")).with_id("warm").enqueue()
        assert sched.wait("warm", timeout_s=120).state is TaskState.SUCCEEDED
        settle(sched, coordinators)
        chain = sched.begin_with(TaskRequest("BenchStep"))
        for _ in range(steps - 1):
            chain = chain.then(TaskRequest("BenchStep"))
        start = time.perf_counter()
        chain.with_id("seq").enqueue()
        assert sched.wait("seq", timeout_s=600).state is TaskState.SUCCEEDED
        return (time.perf_counter() - start) * 1000 / steps

    # Coordination inside the scheduler process (chain_coordinators=0): no hop between steps.
    local = engine("bench-chains-local", config=EngineConfig(chain_coordinators=0))
    try:
        _register(local)
        local_step_ms = sequential(local, 0)
    finally:
        local.shutdown()

    sched = engine("bench-chains")  # the default: a pool of ChainCoordinator actors
    try:
        _register(sched)
        step_ms = sequential(sched, EngineConfig().chain_coordinators)

        wide = sched.begin_with([TaskRequest("BenchStep") for _ in range(width)]).with_id("wide")
        start = time.perf_counter()
        wide.enqueue()
        assert sched.wait("wide", timeout_s=600).state is TaskState.SUCCEEDED
        fanout = width / (time.perf_counter() - start)
        hop = array_hop(ray, sched, 20 if quick else 100, 2 if quick else 5)
    finally:
        sched.shutdown()
    result = {
        "sequential_steps": steps,
        "engine_ms_per_step": round(step_ms, 3),
        "raw_ray_ms_per_step": round(raw_step_ms, 3),
        "step_overhead_ratio": round(step_ms / raw_step_ms, 2),
        "in_process_ms_per_step": round(local_step_ms, 3),
        "in_process_overhead_ratio": round(local_step_ms / raw_step_ms, 2),
        "parallel_width": width,
        "engine_fanout_tasks_per_s": round(fanout, 1),
        "raw_ray_fanout_tasks_per_s": round(raw_fanout, 1),
        "fanout_ratio": round(fanout / raw_fanout, 2),
        "target_ms_per_step": 3.0,
        **hop,
        "target_array_ratio": 2.0,
    }
    out = write("chains", result, json_path)
    print(table([
        ("sequential chain", f"{steps} steps"),
        ("engine ms/step", f"{step_ms:.2f} (coordinator actors; target <= 3)"),
        ("in-process ms/step", f"{local_step_ms:.2f} (chain_coordinators=0)"),
        ("raw Ray ms/step", f"{raw_step_ms:.2f}"),
        ("parallel step", f"{width} tasks"),
        ("engine fan-out tasks/s", f"{fanout:,.0f}"),
        ("raw Ray fan-out tasks/s", f"{raw_fanout:,.0f}"),
        ("fan-out ratio", f"{fanout / raw_fanout:.2f}x"),
        (f"{hop['array_mb']} MB array, step to step", f"{hop['array_ms']:.1f} ms (best of {len(hop['array_ms_all'])})"),
        ("ray.put + ray.get + sum", f"{hop['ray_put_get_ms']:.1f} ms"),
        ("array ratio", f"{hop['array_ratio']:.2f}x (target <= 2)"),
        ("object store copies", "not counted (the store reused pages freed earlier in the run)"
         if hop["array_object_store_copies"] is None else f"{hop['array_object_store_copies']:.2f}"),
        ("json", str(out)),
    ]))
    return result
