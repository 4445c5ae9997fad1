"""memory: scheduler RSS per pending delayed task, against the size of its stored row."""

from __future__ import annotations

import time
from typing import Any

from .common import engine, ray_up, table, write
from .stamp import register, rss_bytes, scheduler_pid


def run(quick: bool = False, json_path: str | None = None, address: str | None = None) -> dict[str, Any]:
    from kmpray import EngineConfig, TaskState, TaskTrigger
    from kmpray.constraints import DEFAULT_CONSTRAINTS
    from kmpray.records import TaskRecord, encode

    ray = ray_up(address)
    n = 100_000 if quick else 1_000_000
    sched = engine("bench-memory", config=EngineConfig(max_pending_tasks=2 * n))
    try:
        register(sched)
        pid = scheduler_pid(ray, sched.namespace)
        before = rss_bytes(pid)
        later = TaskTrigger.OneTime(3_600_000)
        start = time.perf_counter()
        for k in range(0, n, 10_000):
            sched.enqueue_many([{"id": f"task-{i:08d}", "trigger": later, "worker_class_name": "BenchStamp"}
                                for i in range(k, min(n, k + 10_000))])
        rate = n / (time.perf_counter() - start)
        after = rss_bytes(pid)
        pending = sched.status()["pending"]
    finally:
        sched.shutdown()
    sample = TaskRecord(key="task-00000001", name="task-00000001", worker="BenchStamp", trigger=later,
                        constraints=DEFAULT_CONSTRAINTS, state=TaskState.ENQUEUED, created_at_ms=0,
                        updated_at_ms=0, next_run_at_ms=int(time.time() * 1000))
    row = len(encode(sample))
    per_task = (after - before) / n
    result = {
        "pending_tasks": n,
        "pending_confirmed": pending,
        "rss_delta_bytes": after - before,
        "bytes_per_task": round(per_task, 1),
        "stored_row_bytes": row,
        "ratio_to_row": round(per_task / row, 2),
        "enqueue_per_s": round(rate, 1),
        "target_bytes_per_task": 2048,
    }
    out = write("memory", result, json_path)
    print(table([("pending delayed tasks", f"{n:,}"), ("scheduler RSS per task", f"{per_task:,.0f} B (target <= 2048)"),
                 ("stored row", f"{row} B"), ("enqueue rate", f"{rate:,.0f}/s"), ("json", str(out))]))
    return result
