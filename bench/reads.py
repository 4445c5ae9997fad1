"""reads: what a user's reads cost on a large engine, and what they hold up.

``list_tasks()`` and then ``cancel_all()`` with N delayed tasks held, while another
thread enqueues a task every 10 ms (the longest of those enqueues is how long each held
the scheduler), and
``wait(ids)`` on N no-op tasks (from the enqueue, then again once all are finished).
Baseline, same run: ``wait(id)`` one id at a time, timed on 1,000 of the finished ids
and scaled to N (one call per finished id; ``wait([...])`` made two per id before).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .common import engine, percentiles, ray_up, table, write

BASELINE_IDS = 1_000


def run(quick: bool = False, json_path: str | None = None, address: str | None = None) -> dict[str, Any]:
    from kmpray import TaskRequest, TaskTrigger

    ray_up(address)
    n = 20_000 if quick else 200_000
    n_wait = 5_000 if quick else 20_000
    sched = engine("bench-reads")
    try:
        sched.register_worker("BenchNoop", _noop())
        later = TaskTrigger.OneTime(initial_delay_ms=3_600_000)
        for i in range(0, n, 10_000):
            sched.enqueue_many([{"id": f"d{j}", "trigger": later, "worker_class_name": "BenchNoop"}
                                for j in range(i, min(n, i + 10_000))])
        stalls: dict[str, list[float]] = {"list": [], "cancel": []}
        phase = ["list"]
        stop = threading.Event()

        def probe() -> None:
            k = 0
            while not stop.is_set():
                sent = time.perf_counter()
                sched.enqueue(f"probe{k}", later, "BenchNoop")
                stalls[phase[0]].append((time.perf_counter() - sent) * 1000)
                k += 1
                stop.wait(0.01)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        began = time.perf_counter()
        listed = len(sched.list_tasks())
        list_s = time.perf_counter() - began
        phase[0] = "cancel"
        began = time.perf_counter()
        cancelled = sched.cancel_all()
        cancel_s = time.perf_counter() - began
        stop.set()
        prober.join(timeout=30)

        ids = [f"w{i}" for i in range(n_wait)]
        sched.enqueue_many([TaskRequest("BenchNoop", id=i) for i in ids])
        began = time.perf_counter()
        sched.wait(ids, timeout_s=600)
        wait_s = time.perf_counter() - began
        began = time.perf_counter()
        sched.wait(ids, timeout_s=600)
        wait_done_s = time.perf_counter() - began
        began = time.perf_counter()
        for i in ids[:BASELINE_IDS]:
            sched.wait(i, timeout_s=600)  # one id per call (wait([...]) made two per id before)
        per_id_s = (time.perf_counter() - began) * n_wait / BASELINE_IDS
    finally:
        sched.shutdown()
    probes = percentiles(stalls["list"])
    cancels = percentiles(stalls["cancel"] or [0.0])
    result = {
        "tasks_held": n, "listed": listed, "list_tasks_s": round(list_s, 2),
        "enqueue_during_list_ms": {**probes, "max": round(max(stalls["list"]), 1), "n": len(stalls["list"])},
        "cancelled": cancelled, "cancel_all_s": round(cancel_s, 2),
        "enqueue_during_cancel_all_ms": {**cancels, "max": round(max(stalls["cancel"] or [0.0]), 1),
                                         "n": len(stalls["cancel"])},
        "wait_ids": n_wait, "wait_s": round(wait_s, 2), "wait_finished_s": round(wait_done_s, 2),
        "per_id_wait_finished_s": round(per_id_s, 2),
        "wait_finished_ratio": round(per_id_s / max(wait_done_s, 1e-6), 1),
        "note": f"per-id baseline timed on {BASELINE_IDS} finished ids, scaled to {n_wait}",
    }
    out = write("reads", result, json_path)
    print(table([
        (f"list_tasks() of {n:,} tasks", f"{list_s:.2f} s"),
        ("an enqueue meanwhile: p50 / max ms", f"{probes['p50']} / {_max(result, 'list')}"),
        (f"cancel_all() of {cancelled:,}", f"{cancel_s:.2f} s"),
        ("an enqueue meanwhile: p50 / max ms", f"{cancels['p50']} / {_max(result, 'cancel_all')}"),
        (f"wait() on {n_wait:,} ids, from enqueue", f"{wait_s:.2f} s"),
        ("the same, all finished / per id (baseline)", f"{wait_done_s:.2f} s / {per_id_s:.1f} s"),
        ("json", str(out)),
    ]))
    return result


def _max(result: dict[str, Any], during: str) -> float:
    return float(result[f"enqueue_during_{during}_ms"]["max"])


def _noop() -> type:
    import kmpray

    class BenchNoop(kmpray.CommonWorker):
        async def do_work(self, input: str | None) -> bool:  # noqa: A002
            return True

    return BenchNoop
