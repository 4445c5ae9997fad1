"""chaos scenario ``misfire``: work falls due while the whole engine is down.

A periodic task every ``interval_s`` runs a few periods, then the engine shuts down for
``outage_s`` (every actor stopped, as after a crash or a deploy); ``exact`` tasks with
Exact triggers spread over the outage fall due while nothing runs. Then ``connect()``
again on the same state dir. Each run appends a ledger line with its start time.
Reported (pass figures):

- ``periodic_runs_on_restart``: runs of the periodic task before its next scheduled
  period after the restart: the missed periods coalesce into 1 run (WorkManager's and
  APScheduler's ``coalesce``), not one per missed period.
- ``periodic_drift_ms``: after that, how far each run starts from its place on the
  original grid (anchor + k * interval): no drift means it stays small (the timer
  lead hands runs over early; they begin at their due time) and never grows.
- ``exact_runs``: how many missed Exact tasks ran 0, 1, >1 times (pass: all exactly once);
  ``exact_late_s`` {p50, max}: from the engine serving again to each one's start (<= 1 s).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import kmpray

from .chaos_common import ChaosLedger, ledger_times
from .common import ray_up, scratch_dir

SIZES = {"full": (30.0, 100), "quick": (5.0, 20)}  # outage seconds, Exact tasks


def scenario(quick: bool = False, outage_s: float | None = None, exact: int | None = None,
             interval_s: float = 1.0, before_s: float = 3.0, after_s: float = 6.0,
             seed: int = 7) -> dict[str, Any]:
    outage_default, exact_default = SIZES["quick" if quick else "full"]
    outage_s, exact = outage_s or outage_default, exact or exact_default
    rng = random.Random(seed)
    ray_up()
    state = scratch_dir("kmpray-chaos-misfire-")
    ledger = Path(state) / "ledger"
    namespace = f"chaos-misfire-{seed}-{os.getpid()}"
    payload = json.dumps({"ledger": str(ledger), "sleep_ms": 5})
    sched = kmpray.connect(namespace=namespace, state_dir=state)
    sched.register_worker("ChaosLedger", ChaosLedger)
    interval_ms = int(interval_s * 1000)
    sched.enqueue("periodic", kmpray.TaskTrigger.Periodic(interval_ms), "ChaosLedger", input=payload)
    down_at = time.time() + before_s
    dues = sorted(down_at + 0.5 + rng.random() * (outage_s - 1.0) for _ in range(exact))
    sched.enqueue_many([{"id": f"exact{k}", "trigger": kmpray.TaskTrigger.Exact(int(due * 1000)),
                         "worker_class_name": "ChaosLedger", "input": payload} for k, due in enumerate(dues)])
    time.sleep(max(0.0, down_at - time.time()))
    sched.shutdown()  # the outage: nothing of the engine runs
    stopped_at = time.time()
    time.sleep(max(0.0, stopped_at + outage_s - time.time()))
    restart_at = time.time()
    sched = kmpray.connect(namespace=namespace, state_dir=state)
    try:
        sched.register_worker("ChaosLedger", ChaosLedger)
        serving_at = time.time()
        time.sleep(after_s)
        infos = {t.id: t for t in sched.list_tasks()}
    finally:
        sched.shutdown()
    starts = defaultdict(list, ledger_times(ledger))  # a task never started: no times
    periodic = sorted(starts["periodic"])
    # The grid: the second run's start less one interval (the first started at the enqueue,
    # a dispatch later than its period's start; the others begin at their due times).
    first = periodic[1] - interval_s if len(periodic) > 1 else periodic[0]
    after = [t for t in periodic if t >= restart_at]

    def off_grid_ms(t: float) -> float:
        return ((t - first + interval_s / 2) % interval_s - interval_s / 2) * 1000

    # The coalesced run is the first after the restart, whenever the restart lets it run
    # (it may start while connect() is still returning: its phase on the grid is the
    # restart's, not a period's). The runs after it must be on the grid; one off it
    # (more than a quarter period) would be another catch-up run, counted with the first.
    on_restart = after[:1] + [t for t in after[1:] if abs(off_grid_ms(t)) > interval_s * 250]
    scheduled = [t for t in after[1:] if abs(off_grid_ms(t)) <= interval_s * 250]
    drift = [off_grid_ms(t) for t in scheduled]
    missed = [f"exact{k}" for k in range(exact)]
    runs = [len(starts[t]) for t in missed]
    late = sorted(max(0.0, starts[t][0] - serving_at) for t in missed if starts[t])
    before = [t for t in periodic if t < stopped_at]
    return {
        "scenario": "misfire",
        "interval_s": interval_s,
        "outage_s": round(restart_at - stopped_at, 2),
        "restart_s": round(serving_at - restart_at, 2),
        "periodic_runs_before": len(before),
        "periodic_periods_missed": int((serving_at - stopped_at) / interval_s),
        "periodic_runs_on_restart": len(on_restart),
        "periodic_runs_after": len(scheduled),
        "periodic_drift_ms": {"max_abs": round(max((abs(d) for d in drift), default=float("nan")), 1),
                              "each": [round(d, 1) for d in drift]},
        "exact_tasks": exact,
        "exact_runs": {"0": runs.count(0), "1": runs.count(1), "more": sum(1 for r in runs if r > 1)},
        "exact_states": sorted({infos[t].state.value for t in missed if t in infos}),
        "exact_late_s": {"p50": round(late[len(late) // 2], 3) if late else None,
                         "max": round(late[-1], 3) if late else None},
        "seed": seed,
    }
