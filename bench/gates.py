"""gates: a gate opens (set_device_state) -> waiting task starts; baseline: enqueue -> start, ungated."""

from __future__ import annotations

import time
from typing import Any

from .common import engine, percentiles, ray_up, table, write
from .stamp import collect_starts, register


def run(quick: bool = False, json_path: str | None = None, address: str | None = None) -> dict[str, Any]:
    from kmpray import Constraints, TaskTrigger

    ray_up(address)
    rounds = 10 if quick else 30
    sched = engine("bench-gates")
    gate, plain = [], []
    try:
        register(sched)
        charging = Constraints(requires_charging=True)
        for r in range(rounds):
            sched.set_device_state(charging=False, battery_level=50)
            sched.enqueue(f"g{r}", TaskTrigger.OneTime(), "BenchStamp", constraints=charging)
            deadline = time.monotonic() + 30
            while sched.status()["gated"] < 1 and time.monotonic() < deadline:
                time.sleep(0.005)  # until the scheduler holds it at the gate
            sub = sched.events.subscribe()
            opened = time.time() * 1000
            sched.set_device_state(charging=True)
            gate.append(collect_starts(sub, {f"g{r}"}, 30)[f"g{r}"] - opened)
            sub = sched.events.subscribe()
            sent = time.time() * 1000
            sched.enqueue(f"p{r}", TaskTrigger.OneTime(), "BenchStamp")
            plain.append(collect_starts(sub, {f"p{r}"}, 30)[f"p{r}"] - sent)
    finally:
        sched.shutdown()
    g, p = percentiles(gate), percentiles(plain)
    result = {"rounds": rounds, "gate_open_to_start_ms": g, "enqueue_to_start_ms": p,
              "p99_ratio": round(g["p99"] / max(p["p99"], 0.001), 2), "target_ms": 100,
              "note": "includes the set_device_state round trip through the oracle to the scheduler"}
    out = write("gates", result, json_path)
    print(table([("gate open -> start p50/p95/p99 ms", "/".join(str(v) for v in g.values())),
                 ("enqueue -> start p50/p95/p99 ms", "/".join(str(v) for v in p.values())),
                 ("json", str(out))]))
    return result
