"""chains: per-step overhead of a sequential chain and fan-out rate of a parallel step.

Baselines, same run: a sequential chain of raw Ray tasks (each step waits for the one
before, passing its output) and a fan-out of raw Ray tasks awaited together.
"""

from __future__ import annotations

import time
from typing import Any

from .common import engine, ray_up, table, write


def _register(sched: Any) -> None:
    import kmpray

    class BenchStep(kmpray.CommonWorker):
        async def do_work(self, input: str | None) -> bool:  # noqa: A002
            return True

    sched.register_worker("BenchStep", BenchStep)


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

    def sequential(sched: Any) -> float:
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
        local_step_ms = sequential(local)
    finally:
        local.shutdown()

    sched = engine("bench-chains")  # the default: a pool of ChainCoordinator actors
    try:
        _register(sched)
        step_ms = sequential(sched)

        wide = sched.begin_with([TaskRequest("BenchStep") for _ in range(width)]).with_id("wide")
        start = time.perf_counter()
        wide.enqueue()
        assert sched.wait("wide", timeout_s=600).state is TaskState.SUCCEEDED
        fanout = width / (time.perf_counter() - start)
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
        ("json", str(out)),
    ]))
    return result
