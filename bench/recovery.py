"""recovery: SchedulerActor killed with N pending tasks -> serving again; baseline: with none."""

from __future__ import annotations

import os
import time
from typing import Any

from .common import engine, ray_up, table, write


def _kill_and_time(ray: Any, sched: Any) -> tuple[float, float, float]:
    """Seconds until the restarted scheduler serves again; of those, its new process's
    start (restore included), and the store restore alone. The rest is Ray's restart."""
    actor = ray.get_actor("kmpray.scheduler", namespace=sched.namespace)
    pid = lambda: ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=5)  # noqa: E731
    killed = pid()
    ray.kill(actor, no_restart=False)
    start = time.perf_counter()
    deadline = start + 120
    while time.perf_counter() < deadline:
        try:
            # ray.kill ends the process a moment later: until then the old one still answers
            # (once, session 39: an empty scheduler "back" in 3 ms).
            if pid() == killed:
                time.sleep(0.01)
                continue
            restored_in_s = ray.get(actor.describe.remote(), timeout=5)["restored_in_s"]
            if restored_in_s is not None:
                status = ray.get(actor.ready.remote(), timeout=60)
                if status["pending"] >= 0:
                    took = time.perf_counter() - start
                    serving_in_s = ray.get(actor.describe.remote(), timeout=5)["serving_in_s"]
                    return took, serving_in_s, restored_in_s
        except Exception:
            time.sleep(0.01)  # still restarting: ask again
    raise RuntimeError("scheduler did not come back within 120 s")


def run(quick: bool = False, json_path: str | None = None, address: str | None = None) -> dict[str, Any]:
    from kmpray import EngineConfig, TaskTrigger

    ray = ray_up(address)
    n = 20_000 if quick else 100_000
    empty = engine("bench-recovery-empty")
    try:
        baseline_s, *_ = _kill_and_time(ray, empty)
    finally:
        empty.shutdown()
    sched = engine("bench-recovery", config=EngineConfig(max_pending_tasks=10 * n))
    try:
        from .stamp import register

        register(sched)
        later = TaskTrigger.OneTime(3_600_000)
        for k in range(0, n, 5000):
            sched.enqueue_many([{"id": f"p{i}", "trigger": later, "worker_class_name": "BenchStamp"}
                                for i in range(k, min(n, k + 5000))])
        recovery_s, process_s, restore_s = _kill_and_time(ray, sched)
        pending = sched.status()["pending"]
    finally:
        sched.shutdown()
    result = {
        "pending_tasks": n,
        "pending_after_restart": pending,
        "lost": n - pending,
        "recovery_s": round(recovery_s, 3),
        "of_which_scheduler_process_s": round(process_s, 3),
        "of_which_store_restore_s": round(restore_s, 3),
        "empty_scheduler_recovery_s": round(baseline_s, 3),
        "ratio": round(recovery_s / baseline_s, 2),
        "target_s": 2.0,
    }
    out = write("recovery", result, json_path)
    print(table([("pending tasks", f"{n:,}"), ("serving again after", f"{recovery_s:.2f} s"),
                 ("of which its process", f"{process_s:.2f} s"),
                 ("of which store restore", f"{restore_s:.2f} s"),
                 ("empty scheduler", f"{baseline_s:.2f} s"), ("lost", str(n - pending)), ("json", str(out))]))
    return result
