"""single: what one ``enqueue()`` costs against one bare actor round trip, and how many
calls per second concurrent callers get through (they share the scheduler's commits).

Sequential, one caller: a no-op call to an async actor (the floor), ``enqueue()`` of a
delayed task (no dispatch follows), of a run-now task, and ``enqueue()`` + ``wait()``
of a run-now task (enqueue -> finished, pushed to the waiting caller). Concurrent:
``--threads`` callers each calling ``enqueue()`` in a loop.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .common import engine, percentiles, ray_up, table, write
from .stamp import register


def _timed(n: int, call: Any) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


def _threads(threads: int, per: int, call: Any) -> float:
    """Calls per second from ``threads`` threads, each making ``per`` calls in a row."""
    start = time.perf_counter()
    pool = [threading.Thread(target=lambda t=t: [call(t, i) for i in range(per)]) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=300)
    return threads * per / (time.perf_counter() - start)


def run(quick: bool = False, json_path: str | None = None, address: str | None = None) -> dict[str, Any]:
    from kmpray import TaskTrigger

    ray = ray_up(address)
    n = 100 if quick else 400

    @ray.remote(num_cpus=0)
    class Floor:
        async def ping(self, x: Any) -> Any:
            return x

    floor = Floor.remote()
    ray.get(floor.ping.remote(0))
    sched = engine("bench-single")
    try:
        register(sched)
        sched.enqueue("warm", TaskTrigger.OneTime(), "BenchStamp")
        sched.wait("warm", timeout_s=60)
        item = {"id": "x", "trigger": {"kind": "one_time"}, "worker": "BenchStamp", "input": None}
        bare = _timed(n, lambda i: ray.get(floor.ping.remote([item])))
        delayed = _timed(n, lambda i: sched.enqueue(f"d{i}", TaskTrigger.OneTime(3_600_000), "BenchStamp"))
        now = _timed(n, lambda i: sched.enqueue(f"n{i}", TaskTrigger.OneTime(), "BenchStamp"))
        sched.wait(f"n{n - 1}", timeout_s=60)

        def enqueue_wait(i: int) -> None:
            sched.enqueue(f"w{i}", TaskTrigger.OneTime(), "BenchStamp")
            sched.wait(f"w{i}", timeout_s=60)

        roundtrip = _timed(n, enqueue_wait)
        sched.cancel_all()
        threads = 8
        per = (n * 2) // threads
        bare_rate = _threads(threads, per, lambda t, i: ray.get(floor.ping.remote([item])))
        later = TaskTrigger.OneTime(3_600_000)
        delayed_rate = _threads(threads, per, lambda t, i: sched.enqueue(f"cd{t}-{i}", later, "BenchStamp"))
        before = sched.status()["messages"]
        concurrent_rate = _threads(
            threads, per, lambda t, i: sched.enqueue(f"c{t}-{i}", TaskTrigger.OneTime(), "BenchStamp"))
        for t in range(threads):
            sched.wait(f"c{t}-{per - 1}", timeout_s=120)
        after = sched.status()["messages"]
        per_task = {k: round((after.get(k, 0) - before.get(k, 0)) / (threads * per), 3) for k in after}
    finally:
        sched.shutdown()
    p = {k: percentiles(v) for k, v in
         (("bare_actor_call", bare), ("enqueue_delayed", delayed), ("enqueue_run_now", now),
          ("enqueue_then_wait", roundtrip))}
    base = p["bare_actor_call"]["p50"]
    result = {
        "calls": n,
        "latency_ms": p,
        "ratio_to_bare_call_p50": {k: round(v["p50"] / max(base, 0.001), 2) for k, v in p.items()},
        "concurrent": {"threads": threads, "enqueue_calls_per_s": round(concurrent_rate, 1),
                       "enqueue_delayed_calls_per_s": round(delayed_rate, 1),
                       "bare_calls_per_s": round(bare_rate, 1),
                       "scheduler_messages_per_run_now_task": per_task,
                       "ratio_to_bare": round(concurrent_rate / max(bare_rate, 0.001), 2)},
        "note": "sequential calls from one driver thread; bare: a no-op async actor method with the same payload",
    }
    out = write("single", result, json_path)
    rows = [(k, f"p50 {v['p50']} ms, p99 {v['p99']} ms ({result['ratio_to_bare_call_p50'][k]}x bare)")
            for k, v in p.items()]
    rows += [(f"enqueue() from {threads} threads",
              f"run-now {concurrent_rate:,.0f} calls/s, delayed {delayed_rate:,.0f}/s (bare: {bare_rate:,.0f}/s)"),
             ("scheduler messages per run-now task", ", ".join(f"{k} {v}" for k, v in sorted(per_task.items()))),
             ("json", str(out))]
    print(table(rows))
    return result
