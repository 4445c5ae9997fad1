"""chaos scenario ``long-runs``: runs longer than every interval the engine watches with.

Celery's and WorkManager's users know the failure: a task that runs longer than a
visibility timeout, heartbeat or lease is taken for lost and dispatched a second time.
Here every task runs ``run_s``, more than twice the longest interval that could mistake
it for lost: the reconcile loop (1 s), an executor's ping timeout (``ping_timeout_s``, 10 s
by default; 0.5 s for a blocked loop), ``heavy_unreachable_s`` (30 s by default) and the
chain coordinators' resync (30 s). The kinds, all running at once: an async sleep, a sync
``do_work`` (a thread), an async worker that blocks its executor's event loop for the
whole run (enqueued once the others run), a heavy task, and a chain whose first step is
long. Each run appends a ledger line when it starts. Reported: ``executed_twice`` (pass:
0), the final states, and ``run_attempt_count`` of each (pass: all SUCCEEDED on attempt 1).

``--quick`` (CI): 10 tasks of 11 s with ``ping_timeout_s`` and ``heavy_unreachable_s`` at
5 s, so every interval but the coordinators' 30 s resync is passed twice; the chain is
left out.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import kmpray
from kmpray.timing import BLOCKED_PING_TIMEOUT_S, PING_TIMEOUT_S, RECONCILE_S, RESYNC_S

from .chaos_common import ledger_starts, record_finish, record_start
from .common import ray_up, scratch_dir

FULL = {"tasks": 50, "heavy_unreachable_s": 30.0, "ping_timeout_s": PING_TIMEOUT_S}  # the defaults
QUICK = {"tasks": 10, "heavy_unreachable_s": 5.0, "ping_timeout_s": 5.0}


class LongAsync(kmpray.CommonWorker):
    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        cfg = record_start(input, ctx)
        await asyncio.sleep(cfg["run_s"])
        record_finish(cfg, ctx)
        return True


class LongSync(kmpray.CommonWorker):
    def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        cfg = record_start(input, ctx)
        time.sleep(cfg["run_s"])
        record_finish(cfg, ctx)
        return True


class LongLoopBlocker(kmpray.CommonWorker):
    """Blocks its executor's event loop for the whole run (what the loop watch is for)."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        cfg = record_start(input, ctx)
        time.sleep(cfg["run_s"])
        record_finish(cfg, ctx)
        return True


WORKERS = {"LongAsync": LongAsync, "LongSync": LongSync, "LongLoopBlocker": LongLoopBlocker}


def longest_interval_s(heavy_unreachable_s: float, ping_timeout_s: float, chains: bool) -> float:
    """The longest interval after which the engine could take a run for lost."""
    watched = [RECONCILE_S, ping_timeout_s, BLOCKED_PING_TIMEOUT_S, heavy_unreachable_s]
    return max(watched + ([RESYNC_S] if chains else []))


def _until_started(ledger: Path, ids: list[str], timeout_s: float) -> None:
    """Until the ledger shows a start of each of ``ids`` (bounded: a run that never starts
    is reported as ``never_started`` at the end)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        starts = ledger_starts(ledger)
        if all(starts[t] for t in ids):
            return
        time.sleep(0.05)


def scenario(quick: bool = False, tasks: int | None = None, seed: int = 7) -> dict[str, Any]:
    size = QUICK if quick else FULL
    n = tasks or int(size["tasks"])
    chains = not quick
    longest = longest_interval_s(size["heavy_unreachable_s"], size["ping_timeout_s"], chains)
    run_s = 2 * longest + 1
    ray_up()
    state = scratch_dir("kmpray-chaos-longruns-")
    ledger = Path(state) / "ledger"
    namespace = f"chaos-longruns-{seed}-{os.getpid()}"
    config = kmpray.EngineConfig(heavy_unreachable_s=size["heavy_unreachable_s"],
                                 ping_timeout_s=size["ping_timeout_s"], heavy_pool_size=2, heavy_num_cpus=0)
    sched = kmpray.connect(namespace=namespace, state_dir=state, config=config)
    try:
        for name, cls in WORKERS.items():
            sched.register_worker(name, cls)
        payload = json.dumps({"ledger": str(ledger), "run_s": run_s})
        once = kmpray.TaskTrigger.OneTime()
        heavy = kmpray.Constraints(is_heavy_task=True)
        kinds = ["heavy", "heavy", "blocker"] if not quick else ["heavy", "blocker"]
        kinds += ["async" if k % 2 == 0 else "thread" for k in range(n - len(kinds) - (1 if chains else 0))]
        items = []
        for k, kind in enumerate(kinds):
            worker = {"heavy": "LongAsync", "blocker": "LongLoopBlocker", "async": "LongAsync",
                      "thread": "LongSync"}[kind]
            items.append({"id": f"{kind}-{k}", "trigger": once, "worker_class_name": worker, "input": payload,
                          **({"constraints": heavy} if kind == "heavy" else {})})
        # The loop blockers go in last, once every other run has started: a run handed to an
        # executor whose loop a blocker then holds waits for the loop (it is not moved, which
        # could run it twice), so enqueued together half the runs began one run_s late (23 s
        # of the quick run's elapsed instead of 12). Started first, the other runs are on the
        # blocked loop's executor too, and are watched through the whole block.
        blockers = [it for it in items if it["worker_class_name"] == "LongLoopBlocker"]
        others = [it for it in items if it["worker_class_name"] != "LongLoopBlocker"]
        started = time.monotonic()
        sched.enqueue_many(others)
        ids = [it["id"] for it in others]
        if chains:
            short = json.dumps({"ledger": str(ledger), "run_s": 0.1})
            chain = (sched.begin_with(kmpray.TaskRequest("LongAsync", input=payload, id="chain-long"))
                     .then(kmpray.TaskRequest("LongAsync", input=short, id="chain-next"))
                     .with_id("chain"))
            chain.enqueue()
            ids.append("chain-long")
        _until_started(ledger, ids, timeout_s=60)
        sched.enqueue_many(blockers)
        ids += [it["id"] for it in blockers] + (["chain-next"] if chains else [])
        infos = {t: sched.wait(t, timeout_s=run_s * 4 + 120) for t in ids}
        elapsed = time.monotonic() - started
    finally:
        sched.shutdown()
    starts: Counter[str] = ledger_starts(ledger)
    return {
        "scenario": "long-runs",
        "tasks": len(ids),
        "kinds": dict(Counter(t.rsplit("-", 1)[0] for t in ids)),
        "run_s": run_s,
        "longest_interval_s": longest,
        "executed_twice": sum(1 for t in ids if starts[t] > 1),
        "never_started": sum(1 for t in ids if starts[t] == 0),
        "states": dict(Counter(i.state.value for i in infos.values())),
        "attempts": dict(Counter(i.run_attempt_count for i in infos.values())),
        "elapsed_s": round(elapsed, 1),
        "seed": seed,
    }
