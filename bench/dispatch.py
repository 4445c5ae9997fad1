"""dispatch: end-to-end no-op one-time tasks vs raw Ray tasks, in the same run.

Engine path: enqueue_many -> RUNNING -> SUCCEEDED persisted -> completion event read by
a subscriber. Baseline: a batch of no-op ``f.remote()`` Ray tasks awaited with ray.get.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from .common import cdf, engine, percentiles, ray_up, table, write
from .stamp import busiest_thread_seconds, cpu_seconds, scheduler_pid, thread_cpu_seconds


def raw_ray_rate(ray: Any, n: int, rounds: int = 2) -> float:
    @ray.remote
    def noop() -> None:
        return None

    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        ray.get([noop.remote() for _ in range(n)])
        best = max(best, n / (time.perf_counter() - start))
    return best


def engine_rate(
    sched: Any, n: int, tag: str, chunk: int = 1000, worker: str = "BenchNoop"
) -> tuple[float, list[float]]:
    from kmpray import TaskRequest

    sub = sched.events.subscribe()
    reqs = [TaskRequest(worker, id=f"{tag}-{i}") for i in range(n)]
    sent_at: dict[str, float] = {}
    start = time.perf_counter()
    for k in range(0, n, chunk):
        t = time.time() * 1000
        for r in reqs[k : k + chunk]:
            sent_at[r.id] = t
        sched.enqueue_many(reqs[k : k + chunk])
    latencies: list[float] = []
    done = 0
    while done < n:
        event = sub.get(timeout_s=120)
        if event is None:
            raise RuntimeError(f"only {done}/{n} completions within the bound")
        if event.kind == "completion" and event.task_id in sent_at:
            latencies.append(event.timestamp - sent_at[event.task_id])
            done += 1
    elapsed = time.perf_counter() - start
    sub.close()
    return n / elapsed, latencies


def scheduler_pids(ray: Any, sched: Any) -> list[int]:
    """The engine's scheduler processes (one per shard), or none when they run on another
    node than this driver (a remote cluster: their ``/proc`` is not here)."""
    from kmpray.actors.names import shard_namespace

    if sched.status()["node"] != ray.get_runtime_context().get_node_id():
        return []
    return [scheduler_pid(ray, shard_namespace(sched.namespace, k)) for k in range(sched.shards)]


def engine_pids(ray: Any, sched: Any) -> dict[str, list[int]]:
    """The engine's processes on this node by role (scheduler per shard, light executors,
    event broker) and this driver: whose CPU a task costs. Empty roles when they run on
    another node (their ``/proc`` is not here)."""
    import os

    from kmpray.actors.names import BROKER, EXECUTOR, shard_namespace

    from .chaos_common import actor_pid

    pids: dict[str, list[int]] = {"scheduler": scheduler_pids(ray, sched), "executors": [], "broker": [],
                                  "driver": [os.getpid()]}
    if not pids["scheduler"]:
        return pids
    for k in range(sched.shards):
        ns = shard_namespace(sched.namespace, k)
        i = 0
        while (pid := actor_pid(ray, EXECUTOR.format(i), ns)) is not None:
            pids["executors"].append(pid)
            i += 1
    broker = actor_pid(ray, BROKER, sched.namespace)
    pids["broker"] = [broker] if broker is not None else []
    return pids


def cpu_by_role(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each role's processes together (``engine_pids``)."""
    return {role: sum(cpu_seconds(p) for p in ps) for role, ps in pids.items()}


def capacity_batches(sched: Any, runs: int, between: Callable[[], None], n: int = 5_000) -> list[float]:
    """The bulk rate of an engine in use (``bench load --find-max`` sets its knee against
    it): a 1,000-task warm-up batch, as ``run`` has, then ``runs`` batches of ``n``, with
    ``between()`` (let the engine drain) after each. Without the warm-up the first batch on
    a fresh engine ran 7.3-12.1k/s where the next two ran up to 19.2k/s (session 19)."""
    engine_rate(sched, 1_000, f"cap-warm-{uuid.uuid4().hex[:6]}", worker="BenchStamp")
    between()
    rates = []
    for _ in range(runs):
        rates.append(capacity_batch(sched, n))
        between()
    return rates


def capacity_batch(sched: Any, n: int = 5_000) -> float:
    """One bulk batch of ``n`` of the load generator's stamping tasks (ids ``cap-…``):
    its tasks/s, as ``capacity_batches`` measures each (``bench load --find-max`` runs
    one more after every trial)."""
    return engine_rate(sched, n, f"cap-{uuid.uuid4().hex[:6]}", worker="BenchStamp")[0]


def run(quick: bool = False, json_path: str | None = None, address: str | None = None, shards: int = 1,
        compare_shards: list[int] | None = None, local_lane: bool = True) -> dict[str, Any]:
    """``shards``: the engine's scheduler_shards; ``compare_shards`` (e.g. [1, 2]): instead,
    the same load on engines of each count, alternately, twice (``shard_speedup``).
    ``local_lane=False``: runs and results go through Ray's actor calls, as they do to and
    from executors on other nodes than the scheduler's (on one machine, the way to measure
    that path: the JSON says ``"local_lane": false``)."""
    import kmpray

    ray = ray_up(address)

    @kmpray.worker("BenchNoop")
    class BenchNoop(kmpray.CommonWorker):
        async def do_work(self, input: str | None) -> bool:  # noqa: A002
            return True

    n = 2_000 if quick else 10_000
    raw = raw_ray_rate(ray, min(n, 5_000))
    if compare_shards:
        return _compare(kmpray, n, compare_shards, raw, json_path)
    sched = engine("bench-dispatch", config=kmpray.EngineConfig(scheduler_shards=shards, local_lane=local_lane))
    try:
        engine_rate(sched, min(n, 1_000), "warm")
        roles = engine_pids(ray, sched)
        pids = roles["scheduler"]
        by_role_before = cpu_by_role(roles)
        threads_before = [thread_cpu_seconds(p) for p in pids]
        rate, lat = engine_rate(sched, n, "run")
        by_role = {r: (s - by_role_before[r]) / n * 1e6 for r, s in cpu_by_role(roles).items()}
        threads = zip(threads_before, pids, strict=True)
        loop_s = max((busiest_thread_seconds(b, thread_cpu_seconds(p)) for b, p in threads), default=0.0)
    finally:
        sched.shutdown()
    # #14's "scheduler CPU per task": every thread of the scheduler process(es), this run.
    sched_us = by_role["scheduler"] if pids else None
    # Where the rest of a task's CPU goes (session 34): each role's processes together, this run.
    roles_us = {r: round(us, 1) for r, us in by_role.items()} if pids else {}
    if roles_us:
        roles_us["all"] = round(sum(by_role.values()), 1)
    loop_us = loop_s / n * 1e6 if pids else None  # its busiest thread: the event loop's
    # The same with durability="full" (an fsync per commit of both store files), same run.
    full_config = kmpray.EngineConfig(durability="full", scheduler_shards=shards, local_lane=local_lane)
    full = engine("bench-dispatch-full", config=full_config)
    try:
        engine_rate(full, min(n, 1_000), "warm")
        full_rate, _ = engine_rate(full, n, "run")
    finally:
        full.shutdown()
    result = {
        "tasks": n,
        "shards": shards,
        "local_lane": local_lane,
        "engine_tasks_per_s": round(rate, 1),
        "engine_durability_full_tasks_per_s": round(full_rate, 1),
        "durability_full_cost": round(1 - full_rate / rate, 3),
        "raw_ray_tasks_per_s": round(raw, 1),
        "ratio": round(rate / raw, 2),
        "scheduler_cpu_us_per_task": None if sched_us is None else round(sched_us, 1),
        "scheduler_loop_thread_cpu_us_per_task": None if loop_us is None else round(loop_us, 1),
        "cpu_us_per_task": roles_us,
        "latency_ms": percentiles(lat),
        "cdf_ms": {"kmpray": cdf(lat)},
        "note": "latency = enqueue call to completion event timestamp, closed batch",
    }
    out = write("dispatch", result, json_path)
    print(
        table(
            [
                ("tasks", str(n)),
                ("engine tasks/s", f"{rate:,.0f}"),
                ("raw Ray tasks/s", f"{raw:,.0f}"),
                ("ratio", f"{rate / raw:.2f}x"),
                ("scheduler CPU / task", "n/a (no local scheduler process)" if sched_us is None
                 else f"{sched_us:.1f} µs (every thread; bench core: its Ray-free part)"),
                ("its event loop's thread / task", "n/a" if loop_us is None else f"{loop_us:.1f} µs"),
                ("CPU / task by process", ", ".join(f"{r} {us:.1f}" for r, us in roles_us.items()) or "n/a"),
        ('durability="full" tasks/s', f"{full_rate:,.0f} ({full_rate / rate:.0%} of the default)"),
                ("latency p50/p95/p99 ms", "/".join(str(v) for v in result["latency_ms"].values())),
                ("json", str(out)),
            ]
        )
    )
    return result


def _compare(kmpray: Any, n: int, counts: list[int], raw: float, json_path: str | None) -> dict[str, Any]:
    """Engines with each shard count, the same load, alternately over two rounds (best of
    each count): the shard speedup is the most shards' rate over the fewest's."""
    rates: dict[int, list[float]] = {c: [] for c in counts}
    for rnd in range(2):
        for c in counts:
            sched = engine(f"bench-shards-{c}-{rnd}", config=kmpray.EngineConfig(scheduler_shards=c))
            try:
                engine_rate(sched, min(n, 1_000), "warm")
                rates[c].append(engine_rate(sched, n, "run")[0])
            finally:
                sched.shutdown()
    best = {c: max(r) for c, r in rates.items()}
    lo, hi = min(counts), max(counts)
    result = {
        "tasks": n,
        "shards_compared": counts,
        "engine_tasks_per_s_by_shards": {str(c): round(best[c], 1) for c in counts},
        "runs_by_shards": {str(c): [round(x, 1) for x in r] for c, r in rates.items()},
        "raw_ray_tasks_per_s": round(raw, 1),
        "shard_speedup": round(best[hi] / best[lo], 3),
        "note": f"best of 2 alternating runs per count; speedup = {hi} shards / {lo}",
    }
    out = write("dispatch-shards", result, json_path)
    rows = [(f"{c} shard(s) tasks/s", f"{best[c]:,.0f} (runs: {', '.join(f'{x:,.0f}' for x in rates[c])})")
            for c in counts]
    print(table([*rows, ("raw Ray tasks/s", f"{raw:,.0f}"), ("shard speedup", f"{result['shard_speedup']}x"),
                 ("json", str(out))]))
    return result
