"""chaos scenario ``poison``: workers that kill the process running them, among normal work.

Two phases on one engine, each ``tasks`` normal ledger tasks at ``rate`` per second:
the baseline alone, then the same load with two poison tasks enqueued a quarter and
half of the way through: ``ChaosExit`` calls ``os._exit(1)`` on every run, ``ChaosHog``
holds memory past ``EngineConfig.executor_memory_mb`` (the executor stops itself, as
Ray's memory monitor would kill it). Both run on light executors, next to up to 64 normal
runs each. Reported: each poison task's final state, reason and runs (its worker's
ledger starts: 1 + system re-runs), the scheduler's pid before and after (no restart),
normal tasks lost and executed twice (the innocent runs in flight at a death run again),
and each phase's normal throughput (tasks / seconds from the first enqueue to the last
finish) with their ratio, and enqueue -> finish times (where the stalls show). Pass: poison FAILED with a ``system:`` reason after at most
``max_system_reruns`` re-runs, 0 lost, the same scheduler process, ratio >= 0.9.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import kmpray

from .chaos_common import ChaosLedger, actor_pid, ledger_lines, ledger_starts, record_start
from .common import ray_up, scratch_dir

SIZES = {"full": (10_000, 500.0), "quick": (2_000, 250.0)}  # normal tasks per phase, rate
MEMORY_CAP_MB = 1024
HOG_MB = 1536


class ChaosExit(kmpray.CommonWorker):
    """Writes its ledger line, then ends its process: every run, whatever the input."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        record_start(input, ctx)
        os._exit(1)


class ChaosHog(kmpray.CommonWorker):
    """Writes its ledger line, then holds more memory than its executor may have."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        import asyncio

        cfg = record_start(input, ctx)
        held = []
        for _ in range(cfg["hog_mb"] // 32):  # grows as a leak or a dataset does, 32 MiB at a time
            held.append(b"\x01" * (32 * 1024 * 1024))  # written, so resident
            await asyncio.sleep(0.005)
        await asyncio.sleep(5)  # the cap notices within 50 ms
        return kmpray.WorkerResult.Success(data={"held": len(held)})


def _starts_of(ledger: Path, task_id: str) -> list[str]:
    """The ledger's start lines of one task: ``pid time`` each."""
    return [" ".join(p[3:5]) for p in ledger_lines(ledger) if p[1] == task_id]


def _phase(sched: Any, prefix: str, n: int, rate: float, payload: str,
           poison: dict[int, tuple[str, str]]) -> tuple[list[str], float]:
    """Enqueue ``n`` normal tasks at ``rate`` (poison ids at the given positions); returns
    the normal ids and the first enqueue's wall time."""
    once = kmpray.TaskTrigger.OneTime()
    ids: list[str] = []
    batch = max(1, int(rate / 10))
    t0 = time.time()
    start = time.monotonic()
    for k in range(0, n, batch):
        time.sleep(max(0.0, start + k / rate - time.monotonic()))
        items: list[dict[str, Any]] = []
        for i in range(k, min(n, k + batch)):
            items.append({"id": f"{prefix}{i}", "trigger": once, "worker_class_name": "ChaosLedger", "input": payload})
            if i in poison:
                tid, worker = poison[i]
                items.append({"id": tid, "trigger": once, "worker_class_name": worker, "input": payload})
        results = sched.enqueue_many(items)
        assert all(r is kmpray.ScheduleResult.SUCCESS for r in results), results
        ids += [it["id"] for it in items if it["worker_class_name"] == "ChaosLedger"]
    return ids, t0


def _drained(sched: Any, ids: set[str], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        infos = {t.id: t for t in sched.list_tasks() if t.id in ids}
        if all(t.state.is_finished for t in infos.values()) and len(infos) == len(ids):
            return infos
        if time.monotonic() > deadline:
            return infos
        time.sleep(0.25)


def scenario(quick: bool = False, tasks: int | None = None, rate: float | None = None,
             max_system_reruns: int = 3, seed: int = 7, baseline: bool = True) -> dict[str, Any]:
    """``baseline=False`` (the CI test): the poison phase alone, no throughput comparison."""
    n_default, rate_default = SIZES["quick" if quick else "full"]
    n, rate = tasks or n_default, rate or rate_default
    ray = ray_up()
    state = scratch_dir("kmpray-chaos-poison-")
    ledger = Path(state) / "ledger"
    namespace = f"chaos-poison-{seed}-{os.getpid()}"
    config = kmpray.EngineConfig(max_system_reruns=max_system_reruns, executor_memory_mb=MEMORY_CAP_MB,
                                 max_pending_tasks=max(4 * n, 10_000))
    sched = kmpray.connect(namespace=namespace, state_dir=state, config=config)
    try:
        for name, cls in (("ChaosLedger", ChaosLedger), ("ChaosExit", ChaosExit), ("ChaosHog", ChaosHog)):
            sched.register_worker(name, cls)
        payload = json.dumps({"ledger": str(ledger), "sleep_ms": 20, "hog_mb": HOG_MB})
        pid_before = actor_pid(ray, "kmpray.scheduler", namespace)
        phases: dict[str, Any] = {}
        poison_ids = {"exit": "poison-exit", "hog": "poison-hog"}
        plan: list[tuple[str, dict[int, tuple[str, str]]]] = [("baseline", {})] if baseline else []
        plan.append(("poison", {n // 4: (poison_ids["exit"], "ChaosExit"),
                                n // 2: (poison_ids["hog"], "ChaosHog")}))
        for phase, poison in plan:
            ids, t0 = _phase(sched, f"{phase}-", n, rate, payload, poison)
            infos = _drained(sched, set(ids) | {poison_ids[k] for k in poison_ids if poison},
                             timeout_s=max(180.0, n / 20))
            normal = [infos[t] for t in ids if t in infos]
            ended = max((t.updated_at_ms for t in normal), default=t0 * 1000) / 1000
            slowest = max(normal, key=lambda t: t.updated_at_ms, default=None)
            waits = [(t.updated_at_ms - t.created_at_ms) / 1000 for t in normal]
            phases[phase] = {
                "enqueue_to_finish_s": {"p50": round(float(np.percentile(waits, 50)), 3),
                                        "p99": round(float(np.percentile(waits, 99)), 3),
                                        "max": round(max(waits), 3)} if waits else None,
                "slowest": {"id": slowest.id, "explain": sched.explain(slowest.id).splitlines()[-12:]}
                if slowest is not None else None,
                "normal": len(ids),
                "succeeded": sum(1 for t in normal if t.state is kmpray.TaskState.SUCCEEDED),
                "seconds": round(ended - t0, 2),
                "throughput_per_s": round(len(ids) / max(1e-9, ended - t0), 1),
                "infos": infos,
            }
        starts = ledger_starts(ledger)
        pid_after = actor_pid(ray, "kmpray.scheduler", namespace)
        base, hit = phases.get("baseline"), phases["poison"]
        poison_report = {}
        for kind, tid in poison_ids.items():
            info = hit["infos"].get(tid)
            poison_report[kind] = {
                "state": info.state.value if info else None,
                "reason": info.result.message if info and info.result is not None else None,
                "runs": starts[tid],
                "system_reruns": max(0, starts[tid] - 1),
                "run_attempt_count": info.run_attempt_count if info else None,
                # where each run began (pid, time) and the scheduler's decisions: what a failure shows
                "starts": _starts_of(ledger, tid),
                "explain": sched.explain(tid).splitlines()[-16:],
            }
        normal_ids = [t for p in phases.values() for t in p["infos"] if not t.startswith("poison-")]
        status = sched.status()  # after the drain: the isolation it set up, and nothing left alone
        result = {
            "scenario": "poison",
            "tasks_per_phase": n,
            "rate_per_s": rate,
            "max_system_reruns": max_system_reruns,
            "executor_memory_mb": MEMORY_CAP_MB,
            "poison": poison_report,
            "scheduler_restarted": pid_before != pid_after,
            "executors": {k: status[k] for k in ("probation_executors", "running_alone")},
            # the processes the engine saw end on purpose: here, the hog's at the memory cap
            "stopped_processes": status.get("stopped_processes", []),
            "lost": sum(p["normal"] - p["succeeded"] for p in phases.values()),
            "executed_twice": sum(1 for t in normal_ids if starts[t] > 1),
            "throughput_baseline_per_s": base["throughput_per_s"] if base else None,
            "throughput_with_poison_per_s": hit["throughput_per_s"],
            "throughput_ratio": (round(hit["throughput_per_s"] / base["throughput_per_s"], 3)
                                 if base else None),
            "seconds": {k: p["seconds"] for k, p in phases.items()},
            "enqueue_to_finish_s": {k: p["enqueue_to_finish_s"] for k, p in phases.items()},
            "slowest_normal": {k: p["slowest"] for k, p in phases.items()},
            "seed": seed,
        }
    finally:
        sched.shutdown()
    return result
