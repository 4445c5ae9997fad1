"""bulk: what one large ``enqueue_many`` does to everything else. Exact timers due while a
client's call of 300,000 gated tasks is taken in (the tasks wait at their gate, so only
the intake is measured) against the same timers on the same engine with no call going:
their lateness (worker start - due time), and the call's own time.

Until session 44 the whole batch was one turn of the scheduler's loop and the timers due
meanwhile ran seconds late; now it is taken in slices (``INTAKE_SLICE``) and a client
sends calls of at most ``ENQUEUE_CALL_ITEMS``. No target in an issue: a regression check
with a figure.

The same timers again while one chain of ``CHAIN_TASKS`` gated tasks (two parallel steps)
is taken in: a chain is accepted or refused whole, so it cannot be cut into calls as a
batch is (README, *Chains*: size)."""

from __future__ import annotations

import threading
import time
from typing import Any

from .common import engine, percentiles, ray_up, table, write
from .stamp import collect_starts, register

TIMERS = 20
SPACING_MS = 250
CHAIN_TASKS = 99_000
# The chain's call takes 3-6 s here (the client builds and sends 99,000 requests, the
# scheduler checks and admits them): the 20 timers fall due over 5 s of it, so a hold
# anywhere in it is met by several (at 100 ms, over 2 s, a late hold met only the last).
CHAIN_SPACING_MS = 250


def _timers(sched: Any, prefix: str, first_due_ms: float, spacing_ms: int = SPACING_MS
            ) -> tuple[dict[str, float], Any]:
    """TIMERS Exact tasks, ``spacing_ms`` apart from ``first_due_ms``; their subscription."""
    from kmpray import TaskTrigger

    sub = sched.events.subscribe()
    dues = {f"{prefix}{k}": first_due_ms + spacing_ms * k for k in range(TIMERS)}
    sched.enqueue_many([{"id": tid, "trigger": TaskTrigger.Exact(int(due)), "worker_class_name": "BenchStamp"}
                        for tid, due in dues.items()])
    return dues, sub


def _lateness(sub: Any, dues: dict[str, float]) -> list[float]:
    starts = collect_starts(sub, set(dues), 120)
    return [starts[tid] - int(due) for tid, due in dues.items()]


def _chain(sched: Any, n: int) -> tuple[list[float], float, str]:
    """The timers' lateness while one chain of ``n`` gated tasks in two parallel steps is
    taken in; the call's time and answer."""
    from kmpray import Constraints, TaskRequest

    gated = Constraints(requires_charging=True)
    half = [TaskRequest("BenchStamp", id=f"c{i}", constraints=gated) for i in range(n)]
    chain = sched.begin_with(half[: n // 2]).then(half[n // 2:]).with_id("bulk-chain")
    took: list[float] = []
    answer: list[str] = []

    def call() -> None:
        began = time.monotonic()
        answer.append(chain.enqueue().value)
        took.append(time.monotonic() - began)

    dues, sub = _timers(sched, "chain", time.time() * 1000 + 200, CHAIN_SPACING_MS)
    sender = threading.Thread(target=call)
    sender.start()
    late = _lateness(sub, dues)
    sender.join(timeout=600)
    return late, took[0] if took else float("nan"), answer[0] if answer else "none"


def run(quick: bool = False, json_path: str | None = None, address: str | None = None) -> dict[str, Any]:
    from kmpray import EngineConfig

    ray_up(address)
    n = 30_000 if quick else 300_000
    sched = engine("bench-bulk", config=EngineConfig(max_pending_tasks=2 * n))
    try:
        register(sched)
        sched.set_device_state(charging=False)  # the batch waits at its gate: only its intake counts
        dues, sub = _timers(sched, "quiet", time.time() * 1000 + 1_000)
        quiet = _lateness(sub, dues)

        items = [{"id": f"b{i}", "trigger": {"kind": "one_time"}, "worker_class_name": "BenchStamp",
                  "constraints": {"requires_charging": True}} for i in range(n)]
        took: list[float] = []

        def call() -> None:
            began = time.monotonic()
            sched.enqueue_many(items)
            took.append(time.monotonic() - began)

        dues, sub = _timers(sched, "busy", time.time() * 1000 + 1_000)
        sender = threading.Thread(target=call)
        sender.start()  # the timers fall due while the call is taken in
        busy = _lateness(sub, dues)
        sender.join(timeout=600)
        accepted = sched.status()["counts"]["ENQUEUED"]
        chained, chain_s, chain_result = _chain(sched, CHAIN_TASKS // 10 if quick else CHAIN_TASKS)
    finally:
        sched.shutdown()
    q, b = percentiles(quiet), percentiles(busy)
    result = {
        "bulk_tasks": n,
        "bulk_call_s": round(took[0], 2) if took else None,
        "bulk_tasks_per_s": round(n / took[0]) if took else None,
        "bulk_tasks_enqueued": accepted,
        "timers": TIMERS,
        "lateness_ms": {**b, "max": round(max(busy), 1)},
        "quiet_lateness_ms": {**q, "max": round(max(quiet), 1)},
        "max_ratio": round(max(busy) / max(max(quiet), 1.0), 1),
        "chain_tasks": CHAIN_TASKS // 10 if quick else CHAIN_TASKS,
        "chain_call_s": round(chain_s, 2),
        "chain_result": chain_result,
        "chain_lateness_ms": {**percentiles(chained), "max": round(max(chained), 1)},
        "chain_max_late_ms": round(max(chained), 1),  # top level: what `bench ab` compares
        "bulk_max_late_ms": round(max(busy), 1),
        "note": "lateness = worker start - due time of Exact tasks due during one enqueue_many of "
                "bulk_tasks gated tasks (the call timed from the client), against the same timers "
                "on the same engine with no call going",
    }
    out = write("bulk", result, json_path)
    print(table([("bulk call", f"{n:,} gated tasks in {result['bulk_call_s']} s"),
                 ("timers during it: p50/max ms", f"{b['p50']}/{result['lateness_ms']['max']}"),
                 ("quiet timers: p50/max ms", f"{q['p50']}/{result['quiet_lateness_ms']['max']}"),
                 ("chain", f"{result['chain_tasks']:,} gated tasks in {result['chain_call_s']} s"),
                 ("timers during it: p50/max ms",
                  f"{result['chain_lateness_ms']['p50']}/{result['chain_lateness_ms']['max']}"),
                 ("json", str(out))]))
    return result
