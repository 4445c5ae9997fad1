"""timers: lateness of Exact triggers (10,000 due over 10 s), against a plain asyncio timer wheel."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .common import cdf, engine, percentiles, ray_up, table, write
from .stamp import collect_starts, register


async def _asyncio_lateness(dues: list[float]) -> list[float]:
    loop = asyncio.get_running_loop()
    late: list[float] = []
    done = asyncio.Event()
    offset = time.time() - loop.time()

    def fire(due_ms: float) -> None:
        late.append(time.time() * 1000 - due_ms)
        if len(late) == len(dues):
            done.set()

    for due in dues:
        loop.call_at(due / 1000 - offset, fire, due)
    await asyncio.wait_for(done.wait(), 120)
    return late


def run(quick: bool = False, json_path: str | None = None, address: str | None = None) -> dict[str, Any]:
    from kmpray import EngineConfig, TaskTrigger

    ray_up(address)
    n, span_s = (2_000, 3.0) if quick else (10_000, 10.0)
    sched = engine("bench-timers", config=EngineConfig(max_pending_tasks=10 * n))
    try:
        register(sched)
        start = time.time() * 1000 + 3_000
        dues = [start + span_s * 1000 * i / n for i in range(n)]
        items = [{"id": f"x{i}", "trigger": TaskTrigger.Exact(int(d)), "worker_class_name": "BenchStamp"}
                 for i, d in enumerate(dues)]
        sub = sched.events.subscribe()
        for k in range(0, n, 2000):
            sched.enqueue_many(items[k : k + 2000])
        starts = collect_starts(sub, {f"x{i}" for i in range(n)})
        lateness = [starts[f"x{i}"] - int(d) for i, d in enumerate(dues)]
    finally:
        sched.shutdown()
    baseline = asyncio.run(_asyncio_lateness([time.time() * 1000 + 500 + span_s * 1000 * i / n for i in range(n)]))
    engine_p, base_p = percentiles(lateness), percentiles(baseline)
    result = {
        "timers": n,
        "span_s": span_s,
        "lateness_ms": engine_p,
        "asyncio_baseline_lateness_ms": base_p,
        "cdf_ms": {"kmpray": cdf(lateness), "asyncio call_at": cdf(baseline)},
        "p99_ratio": round(engine_p["p99"] / max(base_p["p99"], 0.001), 2),
        "target_p99_ms": 10,
        "note": "lateness = worker start (wall clock) - at_epoch_millis",
    }
    out = write("timers", result, json_path)
    print(table([("timers", f"{n} over {span_s:.0f} s"),
                 ("engine lateness p50/p95/p99 ms", "/".join(str(v) for v in engine_p.values())),
                 ("asyncio call_at p50/p95/p99 ms", "/".join(str(v) for v in base_p.values())),
                 ("json", str(out))]))
    return result
