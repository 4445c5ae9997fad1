"""chaos scenario ``soak``: a steady load for ``duration_s`` with the scheduler SIGKILLed
every ``scheduler_every_s`` and the event broker every ``broker_every_s``. ``shards`` > 1:
the engine runs ``scheduler_shards=shards``, the scheduler kills strike the shards in turn
(so each is killed often enough after the warm-up for its memory growth to be measured:
drawn at random, one shard of two was killed once after it in a 10-minute run), memory is
followed per shard and the store is every shard's files.

Finished tasks are pruned after ``retain_finished_ms`` (30 s here; the prune runs every
60 s), so a healthy engine holds a bounded number of rows however long it runs. Sampled
every 5 s: the scheduler's and the broker's resident memory (/proc) and the store files'
size. Reported (pass figures):

- ``scheduler_rss_mb`` {after_warmup, end, growth}: the scheduler's RSS just before each
  kill (each incarnation restores the store: a growing store shows here), the first one
  after the warm-up third against the last: growth <= 1.10. With shards, the shard whose
  growth is largest (each shard's own under ``scheduler_rss_mb_by_shard``).
- ``db_mb`` {after_warmup, end, growth}: tasks.db itself, from the first sample after
  ``store_warmup_s`` (the warm-up third, or once the longest retention window,
  ANSWER_RETENTION_S + PRUNE_S, has passed if later) to the last: flat (<= 1.10). The file
  never shrinks (freed pages are reused), so first to last is its trend.
- ``wal_mb`` {peak_first_half, peak_second_half}: its WAL over the same window, which the
  quiet sync empties every second and SQLite truncates back to WAL_SIZE_LIMIT at each
  reset: the second half's peak at most that (4 MB). ``store_mb``: both files together,
  first sample to last, as earlier soaks reported it (since the WAL is emptied each quiet
  second, a sample catches it anywhere between empty and a second's writes: a phase, not
  a trend).
  ``store_used_mb``: its pages in use (peaks of each half of that window: they rise between
  prunes), and per sample the rows of ``tasks``, ``answers`` (enqueue answers, kept
  ANSWER_RETENTION_S) and ``outbox``: what grows, if anything does.
- ``replay``: a subscriber reading the event log from cursor 0 after the drain: every
  acknowledged task's successful completion exactly once (``missing``, ``twice``: 0),
  cursors strictly increasing (``out_of_order``: 0). Tasks whose events were dropped by
  ``event_retention`` would show as missing (the load stays well under it).
- ``actor_subscriber``: an actor subscribed (``subscribe(actor=...)``) before the load,
  pushed to by the broker across every broker kill (the oracle's copy of the
  subscription, since session 49): ``missing`` acknowledged tasks whose successful
  completion it never got (pass 0), and ``pushed_again``, completions it got more than
  once (at least once: what was pushed after the last cursor the oracle was sent comes
  again after a broker restart; reported, no pass figure).
- ``lost``: acknowledged, not SUCCEEDED and not pruned as SUCCEEDED (pass 0).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from kmpray.actors.names import shard_namespace

import kmpray
from kmpray.timing import ANSWER_RETENTION_S, PRUNE_S

from .chaos_common import ChaosLedger, SteadyLoad, actor_pid, answers_after, replay
from .common import drain, ray_up, scratch_dir
from .stamp import rss_bytes

FULL = {"duration_s": 600.0, "scheduler_every_s": 60.0, "broker_every_s": 90.0}
QUICK = {"duration_s": 60.0, "scheduler_every_s": 20.0, "broker_every_s": 30.0}


def _rss_mb(pid: int | None) -> float | None:
    try:
        return rss_bytes(pid) / 2**20 if pid is not None else None
    except (OSError, ValueError):
        return None


def _homes(state: Path, shards: int) -> list[Path]:
    """Each shard's store folder: shard 0's is the state dir, shard k's ``shard-k`` in it."""
    return [state if k == 0 else state / f"shard-{k}" for k in range(shards)]


def _store_mb(homes: list[Path]) -> float:
    return sum(p.stat().st_size for home in homes for p in home.glob("tasks.db*")) / 2**20


def _file_mb(paths: list[Path]) -> float:
    total = 0.0
    for path in paths:
        try:
            total += path.stat().st_size / 2**20
        except FileNotFoundError:  # the WAL, between a close and the next open
            pass
    return total


def _stores_rows(homes: list[Path]) -> dict[str, float]:
    """``_store_rows`` of every shard's store, added up (empty while one does not answer)."""
    parts = [_store_rows(home) for home in homes]
    if not all(parts):
        return {}
    return {k: round(sum(part[k] for part in parts), 2) for k in parts[0]}


def _store_rows(state: Path) -> dict[str, float]:
    """What the store holds, read beside the scheduler (WAL: readers never block it): rows
    per table and the pages in use (the file itself never shrinks; freed pages are reused)."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{state / 'tasks.db'}?mode=ro", uri=True, timeout=5)
        try:
            rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("tasks", "answers", "outbox")}
            page, pages, free = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                                 for p in ("page_size", "page_count", "freelist_count"))
            used = pages - free
            return {**rows, "used_mb": round(used * page / 2**20, 2)}
        finally:
            conn.close()
    except sqlite3.Error:
        return {}


def _collector(ray: Any) -> Any:
    """An actor subscriber that counts the successful completions pushed to it, per task."""

    @ray.remote(num_cpus=0)
    class Collector:
        def __init__(self) -> None:
            self.seen: Counter[str] = Counter()

        def on_event(self, event: Any) -> None:
            if event.kind == "completion" and event.success and event.task_id:
                self.seen[event.task_id] += 1

        def counts(self) -> dict[str, int]:
            return dict(self.seen)

    return Collector.remote()


def _pushed(ray: Any, collector: Any, ids: set[str], timeout_s: float = 60.0) -> dict[str, int]:
    """What the actor subscriber got, once it has every task in ``ids`` (or ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts: dict[str, int] = ray.get(collector.counts.remote(), timeout=30)
        if ids <= counts.keys() or time.monotonic() > deadline:
            return {"missing": sum(1 for t in ids if t not in counts),
                    "pushed_again": sum(1 for t in ids if counts.get(t, 0) > 1)}
        time.sleep(0.2)


def scenario(quick: bool = False, rate: float = 100.0, seed: int = 7, shards: int = 1,
             **sizes: float) -> dict[str, Any]:
    size = {**(QUICK if quick else FULL), **sizes}
    ray = ray_up()
    state = Path(scratch_dir("kmpray-chaos-soak-"))
    homes = _homes(state, shards)
    namespace = f"chaos-soak-{seed}-{os.getpid()}"
    shard_ns = [shard_namespace(namespace, k) for k in range(shards)]
    config = kmpray.EngineConfig(retain_finished_ms=30_000, scheduler_shards=shards)
    sched = kmpray.connect(namespace=namespace, state_dir=str(state), config=config)
    try:
        sched.register_worker("ChaosLedger", ChaosLedger)
        collector = _collector(ray)
        subscription = sched.events.subscribe(since=0, actor=collector)  # (the log is empty yet)
        payload = json.dumps({"ledger": str(state / "ledger"), "sleep_ms": 20})
        stop = threading.Event()
        load = SteadyLoad(sched, rate, payload, stop)
        acknowledged = load.acknowledged
        kills: Counter[str] = Counter()
        kills_by_shard = [0] * shards  # scheduler kills
        recovery: list[float] = []
        samples: list[dict[str, Any]] = []
        before_kill: list[tuple[float, int, float]] = []  # (t, shard, its scheduler's RSS just before a kill)
        started = load.started

        def nemesis() -> None:
            due = {"kmpray.scheduler": size["scheduler_every_s"], "kmpray.broker": size["broker_every_s"]}
            every = dict(due)
            while not stop.wait(0.2):
                now = time.monotonic() - started
                for name, at in due.items():
                    if now < at:
                        continue
                    due[name] = at + every[name]
                    shard = kills[name] % shards if name == "kmpray.scheduler" else 0  # one broker
                    pid = actor_pid(ray, name, shard_ns[shard])
                    if pid is None:
                        continue
                    if name == "kmpray.scheduler":
                        before_kill.append((round(now, 1), shard, _rss_mb(pid) or float("nan")))
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    kills[name] += 1
                    if name == "kmpray.scheduler":
                        kills_by_shard[shard] += 1
                    recovery.append(answers_after(ray, name, shard_ns[shard]))

        def sampler() -> None:
            while not stop.wait(5.0):
                rss = [_rss_mb(actor_pid(ray, "kmpray.scheduler", ns)) for ns in shard_ns]
                samples.append({
                    "t": round(time.monotonic() - started, 1),
                    "scheduler_rss_mb": rss[0] if shards == 1 else rss,
                    "broker_rss_mb": _rss_mb(actor_pid(ray, "kmpray.broker", namespace)),
                    "store_mb": round(_store_mb(homes), 2),
                    "db_mb": round(_file_mb([home / "tasks.db" for home in homes]), 2),
                    "wal_mb": round(_file_mb([home / "tasks.db-wal" for home in homes]), 2),
                    "store": _stores_rows(homes),
                })

        threads = [threading.Thread(target=f, daemon=True) for f in (nemesis, sampler)] + [load]
        for t in threads:
            t.start()
        time.sleep(size["duration_s"])
        stop.set()
        for t in threads:
            t.join(timeout=180)
        drain(sched)
        elapsed = time.monotonic() - started
        # Lost: acknowledged and not SUCCEEDED now; a task already pruned was SUCCEEDED
        # (only finished rows are pruned) and its completion event says so below.
        states = {t.id: t.state for t in sched.list_tasks()}
        unfinished = [t for t in acknowledged if t in states and states[t] is not kmpray.TaskState.SUCCEEDED]
        replay = _replay(sched, acknowledged)
        pushed = _pushed(ray, collector, set(acknowledged))
        subscription.close()
        lost = sorted(set(unfinished) | {t for t in acknowledged if t not in states and replay["per_task"][t] == 0})
        warm = size["duration_s"] / 3
        by_shard = [_growth([rss for t, k, rss in before_kill if t >= warm and k == shard])
                    for shard in range(shards)]
        measured = [g for g in by_shard if g["growth"] is not None]
        # The store can be flat only once its longest window has passed: enqueue answers are
        # kept ANSWER_RETENTION_S, and pruned every PRUNE_S.
        store_warm = min(max(warm, ANSWER_RETENTION_S + PRUNE_S), 2 * size["duration_s"] / 3)
        window = [s for s in samples if s["t"] >= store_warm]
        used_points = [s["store"]["used_mb"] for s in window if s["store"]]
        result = {
            "scenario": "soak",
            "duration_s": size["duration_s"],
            "rate_per_s": rate,
            "acknowledged": len(acknowledged),
            "lost": len(lost),
            "lost_examples": lost[:10],
            "shards": shards,
            "kills": dict(kills),
            "scheduler_kills_by_shard": kills_by_shard,
            "recovery_s_max": round(max(recovery), 2) if recovery else None,
            # the shard whose scheduler grew most (no shard killed twice after the warm-up: None)
            "scheduler_rss_mb": max(measured, key=lambda g: g["growth"]) if measured else by_shard[0],
            "scheduler_rss_mb_by_shard": by_shard,
            "scheduler_rss_before_each_kill": before_kill,
            "store_warmup_s": round(store_warm),
            "db_mb": _growth([s["db_mb"] for s in window]),
            "wal_mb": _peaks([s["wal_mb"] for s in window]),
            "store_mb": _growth([s["store_mb"] for s in window]),
            "store_used_mb": _peaks(used_points),  # pages in use, without the free ones
            "replay": {k: v for k, v in replay.items() if k != "per_task"},
            "actor_subscriber": pushed,
            "samples": samples,
            "elapsed_s": round(elapsed, 1),
            "seed": seed,
        }
    finally:
        sched.shutdown()
    return result


def _peaks(points: list[float]) -> dict[str, Any]:
    """Pages in use rise between prunes and fall at each (a sawtooth of PRUNE_S): flat means
    the peaks of the second half of the window are no higher than those of the first."""
    half = len(points) // 2
    if half == 0:
        return {"peak_first_half": None, "peak_second_half": None, "growth": None}
    first, second = max(points[:half]), max(points[half:])
    return {"peak_first_half": first, "peak_second_half": second,
            "growth": round(second / first, 3) if first else None}


def _growth(points: list[float]) -> dict[str, Any]:
    if len(points) < 2:
        return {"after_warmup": points[0] if points else None, "end": None, "growth": None}
    return {"after_warmup": round(points[0], 1), "end": round(points[-1], 1),
            "growth": round(points[-1] / points[0], 3)}


def _replay(sched: Any, ids: set[str]) -> dict[str, Any]:
    """Every stored event from cursor 0: successful completions per task, cursor order."""
    per_task: Counter[str] = Counter()
    out_of_order = events = 0
    last = 0
    for cursor, event in replay(sched, 0, succeeded=ids, quiet_s=5):
        events += 1
        if cursor <= last:
            out_of_order += 1
        last = cursor
        if event.kind == "completion" and event.success and event.task_id in ids:
            per_task[event.task_id] += 1
    return {
        "events": events,
        "missing": sum(1 for t in ids if per_task[t] == 0),
        "twice": sum(1 for t in ids if per_task[t] > 1),
        "out_of_order": out_of_order,
        "per_task": per_task,
    }
