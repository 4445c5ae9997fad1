"""core: the scheduler's CPU per task without Ray (#14: ≤ 25 µs per task).

The path every run-now task takes through the SchedulerActor's one thread, driven here
the way the actor drives it (kmpray/driver.py, ``SchedulerActor._flush``) but with no
actor around it: ``intake.submit`` of wire dicts in batches of 500 (one ``enqueue_many``
message's worth), the batch's commit, ``tick`` and ``take_ready`` with the executor
``Run`` each dispatch becomes, each run's wire result read and applied (``complete``),
and the commit of the finished rows with their completion events (encoded as the broker
gets them, the previous batch's acknowledged events forgotten in the same write).
Measured as process CPU time, the collector off (as in the actor), on a store in a
fresh temporary directory; the best and the median of several repeats, and per phase.

Baseline, same run, alternating with it: the SQLite statements alone that this path
issues per task (the row's insert, its update with its share of the write's one outbox
row in one transaction, that row's delete once the broker acknowledged it), with blobs of the same
sizes, prepared in advance: what any design with one durable row per task and a
transactional outbox pays on this machine before a line of scheduling runs.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from typing import Any

from .common import discard, scratch_dir, spread, table, write

BATCH = 500
TARGET_US = 25.0  # issue #14


def _core_run(n: int) -> tuple[float, dict[str, float], tuple[int, int]]:
    """CPU µs per task for ``n`` tasks, per phase, and the mean row and event sizes."""
    from kmpray import intake
    from kmpray.clock import SystemClock
    from kmpray.engine import SchedulerCore
    from kmpray.event_codec import encode_event
    from kmpray.platforms import profile
    from kmpray.protocol import Run
    from kmpray.records import encode
    from kmpray.results import Success, from_wire, to_wire
    from kmpray.store import SqliteTaskStore

    folder = scratch_dir("kmpray-bench-core-")
    store = SqliteTaskStore(os.path.join(folder, "tasks.db"))
    core = SchedulerCore(SystemClock(), profile("cluster"))
    phases = dict.fromkeys(("submit", "take", "complete", "write"), 0.0)
    acked: list[int | None] = [None]
    sizes = [0, 0]

    def flush() -> None:
        t = time.process_time()
        fx = core.drain()
        events = [encode_event(e) for e in fx.events if e.kind == "completion"]
        numbers = store.write(fx.persist.values(), fx.delete, fx.chains.values(), fx.delete_chains,
                              events=events, acked=acked[0])
        acked[0] = numbers[-1] if numbers else None  # the broker has them by the next write
        phases["write"] += time.process_time() - t

    raw = to_wire(Success())
    gc.collect()
    gc.disable()
    try:
        began = time.process_time()
        for b in range(0, n, BATCH):
            t = time.process_time()
            for i in range(b, min(n, b + BATCH)):
                intake.submit(core, {"id": f"t{i}", "trigger": {"kind": "one_time", "initial_delay_ms": 0},
                                     "worker": "noop", "input": None, "constraints": None})
            phases["submit"] += time.process_time() - t
            flush()
            t = time.process_time()
            core.tick(0)
            runs = [Run(d.key, d.run_id, d.worker, 1, d.input, d.upstream, d.previous_attempts, d.timeout_ms,
                        d.start_at_ms, None, None, "", d.enqueued_ms) for d in core.take_ready(BATCH)]
            phases["take"] += time.process_time() - t
            flush()
            t = time.process_time()
            for r in runs:
                core.complete(r.key, r.run_id, from_wire(raw))
            phases["complete"] += time.process_time() - t
            if b == 0:  # what the floor writes: rows and events of these sizes
                fx = core.fx
                sizes = [sum(len(encode(r)) for r in fx.persist.values()) // len(fx.persist),
                         sum(len(encode_event(e)) for e in fx.events) // len(fx.events)]
            flush()
        total = time.process_time() - began
    finally:
        gc.enable()
        store.close()
        discard(folder)
    finished = core.counts()["SUCCEEDED"]
    if finished != n:
        raise RuntimeError(f"core bench: {finished} of {n} tasks SUCCEEDED")
    return total / n * 1e6, {k: v / n * 1e6 for k, v in phases.items()}, (sizes[0], sizes[1])


def _gated_run(n: int) -> float:
    """CPU µs per task for ``n`` delayed tasks that no node satisfies falling due at once,
    until each waits at its gate: the turns (``tick``, ``take_ready``, 2,000 at most each,
    as in real time) that every timer due after them waits for."""
    from kmpray import Constraints, TaskTrigger
    from kmpray.clock import ManualClock
    from kmpray.device import DeviceState
    from kmpray.engine import SchedulerCore
    from kmpray.platforms import profile
    from kmpray.timing import TURN_BUDGET

    clock = ManualClock(1_700_000_000_000)
    core = SchedulerCore(clock, profile("cluster"))
    core.turn_budget = TURN_BUDGET  # (a virtual clock's core has none)
    core.set_devices({"node": DeviceState(charging=False)})
    charging = Constraints(requires_charging=True)
    for i in range(n):
        core.submit(f"g{i}", TaskTrigger.OneTime(initial_delay_ms=1_000), "noop", constraints=charging)
    core.drain()
    clock.advance(1_000)
    gc.collect()
    gc.disable()
    try:
        began = time.process_time()
        while core.gated_count() < n:
            core.tick(0)
            if core.take_ready(BATCH):
                raise RuntimeError("core bench: a gated task was handed out")
        spent = time.process_time() - began
    finally:
        gc.enable()
    return spent / n * 1e6


def _floor_run(n: int, row_bytes: int, event_bytes: int) -> float:
    """CPU µs per task of the same SQLite statements alone, blobs prepared in advance."""
    import msgpack

    from kmpray.store import _UPSERT_TASK, SqliteTaskStore

    folder = scratch_dir("kmpray-bench-core-")
    store = SqliteTaskStore(os.path.join(folder, "tasks.db"))
    conn = store._conn  # the store's own connection and settings (WAL, synchronous, limits)
    batches = [([(f"t{i}", b"r" * row_bytes) for i in range(b, min(n, b + BATCH))],
                [b"e" * event_bytes for _ in range(b, min(n, b + BATCH))]) for b in range(0, n, BATCH)]
    gc.collect()
    gc.disable()
    try:
        began = time.process_time()
        acked = 0
        for rows, events in batches:
            conn.execute("BEGIN")
            conn.executemany(_UPSERT_TASK, rows)
            conn.execute("COMMIT")
            conn.execute("BEGIN")
            conn.execute("DELETE FROM outbox WHERE seq <= ?", (acked,))
            conn.executemany(_UPSERT_TASK, rows)
            conn.execute("INSERT INTO outbox (seq, body, first) VALUES (?, ?, ?)",
                         (acked + len(events), msgpack.packb(events), acked + 1))
            conn.execute("COMMIT")
            acked += len(events)
        total = time.process_time() - began
    finally:
        gc.enable()
        store.close()
        discard(folder)
    return total / n * 1e6


def run(quick: bool = False, json_path: str | None = None, address: str | None = None) -> dict[str, Any]:
    n, repeats = (5_000, 3) if quick else (20_000, 7)
    core_us: list[float] = []
    floor_us: list[float] = []
    phases: list[dict[str, float]] = []
    sizes = (0, 0)
    for _ in range(repeats):  # alternating, so a slow spell of the machine meets both
        us, ph, sizes = _core_run(n)
        core_us.append(us)
        phases.append(ph)
        floor_us.append(_floor_run(n, *sizes))
    gated_us = [_gated_run(n * 5) for _ in range(repeats)]
    median = statistics.median(core_us)
    floor = statistics.median(floor_us)
    best_phases = min(phases, key=lambda p: sum(p.values()))
    result = {
        "tasks": n,
        "repeats": repeats,
        "core_us_per_task": spread(core_us, 2, runs=True),
        "phases_us_per_task": {k: round(v, 2) for k, v in best_phases.items()},  # of the best run
        "sqlite_floor_us_per_task": spread(floor_us, 2, runs=True),
        "row_bytes": sizes[0],
        "event_bytes": sizes[1],
        "ratio_to_floor": round(median / floor, 2),
        "target_us": TARGET_US,
        "target_met": min(core_us) <= TARGET_US,
        # delayed tasks no node satisfies falling due at once, to their gates (5x the tasks)
        "gated_due_us_per_task": spread(gated_us, 2, runs=True),
    }
    print(table([
        ("tasks x repeats", f"{n:,} x {repeats}"),
        ("core CPU / task", f"best {min(core_us):.1f} µs, median {median:.1f} µs (target ≤ {TARGET_US:.0f})"),
        ("phases (best run)", ", ".join(f"{k} {v:.1f}" for k, v in best_phases.items())),
        ("SQLite floor / task", f"best {min(floor_us):.1f} µs, median {floor:.1f} µs "
                                f"(rows {sizes[0]} B, events {sizes[1]} B)"),
        ("ratio to the floor", f"{median / floor:.2f}x"),
        ("gated, falling due", f"best {min(gated_us):.2f} µs, median {statistics.median(gated_us):.2f} µs a task "
                               f"({n * 5:,} delayed tasks no node satisfies, to their gates)"),
    ]))
    print(f"  wrote {write('core', result, json_path)}")
    return result
