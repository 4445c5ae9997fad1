"""latency: open loop at 50 % of the measured max rate, enqueue -> worker start, vs raw Ray."""

from __future__ import annotations

import time
from typing import Any

from .common import cdf, engine, percentiles, ray_up, table, write
from .stamp import collect_starts, register


def _open_loop(rate: float, duration_s: float, send: Any) -> list[float]:
    """Send at a fixed rate; returns the send times (ms)."""
    n = int(rate * duration_s)
    start = time.perf_counter()
    sent: list[float] = []
    for i in range(n):
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # pacing the load itself, not synchronisation
        sent.append(time.time() * 1000)
        send(i)
    return sent


def run(quick: bool = False, json_path: str | None = None, address: str | None = None) -> dict[str, Any]:
    from kmpray import TaskRequest, TaskTrigger

    ray = ray_up(address)
    duration = 3.0 if quick else 10.0

    @ray.remote
    def stamp() -> float:
        return time.time() * 1000

    sched = engine("bench-latency")
    try:
        register(sched)
        n = 3000
        start = time.perf_counter()
        sched.enqueue_many([TaskRequest("BenchStamp", id=f"m{i}") for i in range(n)])
        sched.wait(f"m{n - 1}", timeout_s=120)
        max_rate = n / (time.perf_counter() - start)
        rate = max_rate / 2
        sub = sched.events.subscribe()
        sent = _open_loop(rate, duration, lambda i: sched.enqueue(f"o{i}", TaskTrigger.OneTime(), "BenchStamp"))
        starts = collect_starts(sub, {f"o{i}" for i in range(len(sent))})
        lat = [starts[f"o{i}"] - s for i, s in enumerate(sent)]
    finally:
        sched.shutdown()
    refs: list[Any] = []
    raw_sent = _open_loop(rate, duration, lambda i: refs.append(stamp.remote()))
    raw_lat = [t - s for t, s in zip(ray.get(refs), raw_sent, strict=True)]
    p, rp = percentiles(lat), percentiles(raw_lat)
    result = {
        "max_rate_per_s": round(max_rate, 1),
        "rate_per_s": round(rate, 1),
        "duration_s": duration,
        "latency_ms": p,
        "raw_ray_latency_ms": rp,
        "cdf_ms": {"kmpray": cdf(lat), "raw Ray": cdf(raw_lat)},
        "p50_ratio": round(p["p50"] / max(rp["p50"], 0.001), 2),
        "targets_ms": {"p50": 5, "p99": 25},
        "note": "engine: enqueue() call -> worker start; raw: f.remote() -> task start; same rate",
    }
    out = write("latency", result, json_path)
    print(table([("rate", f"{rate:,.0f}/s (50 % of {max_rate:,.0f}/s) for {duration:.0f} s"),
                 ("engine p50/p95/p99 ms", "/".join(str(v) for v in p.values())),
                 ("raw Ray p50/p95/p99 ms", "/".join(str(v) for v in rp.values())),
                 ("json", str(out))]))
    return result
