"""memory: scheduler RSS per pending delayed task, against the size of its stored row;
and the scheduler's memory after 1,000 enqueues with 1 MiB inputs (the cap), all in
flight at once (#13): inputs past ``store.INLINE_INPUT_CHARS`` live in the store, not in
the records, and the scheduler gives the freed pages back (``malloc_trim``)."""

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
    big = large_inputs(ray, 200 if quick else 1_000)
    result["large_inputs"] = big
    result["finished"] = finished = finished_rows(ray, 20_000 if quick else 100_000)
    out = write("memory", result, json_path)
    print(table([("pending delayed tasks", f"{n:,}"), ("scheduler RSS per task", f"{per_task:,.0f} B (target <= 2048)"),
                 ("stored row", f"{row} B"), ("enqueue rate", f"{rate:,.0f}/s"),
                 (f"{big['inputs']:,} x 1 MiB inputs at once: private RSS",
                  f"{big['private_mb']['before']} -> {big['private_mb']['after']} MB "
                  f"({big['private_ratio']}x, target < 2)"),
                 ("... all RSS (with object-store pages read)",
                  f"{big['rss_mb']['before']} -> {big['rss_mb']['after']} MB ({big['rss_ratio']}x)"),
                 (f"{finished['tasks']:,} finished tasks: RSS per task",
                  f"{finished['in_memory']['bytes_per_task']:,.0f} B kept in memory, "
                  f"{finished['store_only']['bytes_per_task']:,.0f} B in the store only "
                  f"({finished['ratio']}x less)"),
                 ("... their dispatch rate", f"{finished['in_memory']['tasks_per_s']:,.0f} / "
                  f"{finished['store_only']['tasks_per_s']:,.0f} tasks/s"),
                 ("json", str(out))]))
    return result


def large_inputs(ray: Any, n: int) -> dict[str, Any]:
    """``n`` enqueues of 1 MiB inputs (``max_input_bytes``) sent together through the async
    client, delayed an hour (so every input stays accepted and pending), then the
    scheduler's private memory (heap + code) and its whole RSS, which also counts the Ray
    object-store pages it read the arguments from (shared, owned by the object store)."""
    import asyncio
    import json

    from kmpray import EngineConfig, ScheduleResult, TaskTrigger
    from kmpray.timing import RECONCILE_S

    sched = engine("bench-inputs", config=EngineConfig(max_pending_tasks=max(10_000, 2 * n)))
    try:
        register(sched)
        pid = scheduler_pid(ray, sched.namespace)
        time.sleep(2 * RECONCILE_S)

        def private() -> int:
            return rss_bytes(pid, "RssAnon") + rss_bytes(pid, "RssFile")

        before, before_all = private(), rss_bytes(pid)
        payload = json.dumps({"blob": "x" * (1024 * 1024 - 20)})
        later = TaskTrigger.OneTime(3_600_000)

        async def burst() -> list[Any]:
            return await asyncio.gather(*(sched.enqueue_async(f"in-{i}", later, "BenchStamp", input=payload)
                                          for i in range(n)))

        start = time.perf_counter()
        results = asyncio.run(burst())
        took = time.perf_counter() - start
        time.sleep(3 * RECONCILE_S)  # housekeeping gives the freed pages back
        after, after_all = private(), rss_bytes(pid)
        pending = sched.status()["pending"]
    finally:
        sched.shutdown()
    mb = 2**20
    return {
        "inputs": n,
        "input_bytes": len(payload),
        "accepted": sum(r is ScheduleResult.SUCCESS for r in results),
        "pending_confirmed": pending,
        "seconds": round(took, 2),
        "private_mb": {"before": round(before / mb), "after": round(after / mb)},
        "private_ratio": round(after / before, 2),
        "rss_mb": {"before": round(before_all / mb), "after": round(after_all / mb)},
        "rss_ratio": round(after_all / before_all, 2),
        "target_private_ratio": 2.0,
    }


def finished_rows(ray: Any, n: int) -> dict[str, Any]:
    """``n`` run-now tasks run to SUCCEEDED (``enqueue_many`` batches, then ``wait``), and
    the scheduler's RSS growth per finished task: with every finished row kept in memory
    (``finished_in_memory_ms`` = 24 h, as every row was before session 31) and kept in the
    store only (``finished_in_memory_ms`` = 0, so the sweep comes at once; the default,
    30 s, ends the same way half a minute later), one engine after the other, same run.
    Each first runs ``n`` tasks unmeasured: the first 100,000 grew the process ~75 MB
    either way (executors' lanes, buffers, the allocator's high-water mark), the next
    ones by what each finished row costs (session 31: ~205 B a row, steady over 300,000)."""
    from kmpray import EngineConfig, TaskTrigger

    now = TaskTrigger.OneTime()

    def through(sched: Any, tag: str, count: int) -> float:
        start = time.perf_counter()
        for k in range(0, count, 5_000):
            ids = [f"{tag}-{i:07d}" for i in range(k, min(count, k + 5_000))]
            sched.enqueue_many([{"id": i, "trigger": now, "worker_class_name": "BenchStamp"} for i in ids])
        sched.wait([f"{tag}-{i:07d}" for i in range(count - 1_000, count)], timeout_s=600)
        deadline = time.monotonic() + 60
        while sched.status()["pending"] and time.monotonic() < deadline:  # the last runs' reports
            time.sleep(0.05)
        return count / (time.perf_counter() - start)

    out: dict[str, Any] = {"tasks": n}
    for label, hot_ms in (("in_memory", 24 * 3_600_000), ("store_only", 0)):
        sched = engine(f"bench-finished-{label}", config=EngineConfig(finished_in_memory_ms=hot_ms))
        try:
            register(sched)
            pid = scheduler_pid(ray, sched.namespace)
            through(sched, "warm", n)  # to the process's working size; these rows count too
            _settled(sched, n if hot_ms == 0 else 0)
            before = rss_bytes(pid)
            rate = through(sched, "run", n)
            _settled(sched, 2 * n if hot_ms == 0 else 0)
            after = rss_bytes(pid)
        finally:
            sched.shutdown()
        out[label] = {"bytes_per_task": round((after - before) / n, 1), "tasks_per_s": round(rate, 1)}
    kept, cold = out["in_memory"]["bytes_per_task"], out["store_only"]["bytes_per_task"]
    out["ratio"] = round(kept / max(1.0, cold), 1)
    return out


def _settled(sched: Any, cold: int, timeout_s: float = 60) -> None:
    """Until ``cold`` rows are in the store only (the sweep, once a second), then one more
    housekeeping round (its garbage collection)."""
    from kmpray.timing import RECONCILE_S

    deadline = time.monotonic() + timeout_s
    while sched.status()["finished_in_store_only"] < cold and time.monotonic() < deadline:
        time.sleep(0.2)  # polling the engine's status, bounded
    time.sleep(2 * RECONCILE_S)
