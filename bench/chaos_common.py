"""What the chaos scenarios share (bench/chaos.py and bench/chaos_*.py): the ledger the
workers write (a line when a run starts and one when it finishes: ``start|finish``, task
id, attempts before it, pid, time; a run is a task's attempt, so a system re-run of the
same attempt is the same run started again), reading it back, an actor's pid and when
it answers again, the scheduler's status, and the terminal events a replay from the
start of the log sees."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmpray


def _append(ledger: str, what: str, ctx: kmpray.WorkerContext) -> None:
    """One ledger line (O_APPEND: lines never interleave)."""
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        line = f"{what} {ctx.task_id} {ctx.run_attempt_count} {os.getpid()} {time.time():.3f}\n"
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def record_start(input: str | None, ctx: kmpray.WorkerContext) -> dict[str, Any]:  # noqa: A002
    """Append this run's start line to the ledger named in its JSON input; returns the
    input's settings."""
    cfg: dict[str, Any] = json.loads(input or "{}")
    _append(cfg["ledger"], "start", ctx)
    return cfg


def record_finish(cfg: dict[str, Any], ctx: kmpray.WorkerContext) -> None:
    """Append this run's finish line: its worker returned (the result is made; a kill from
    here on still loses it if the scheduler has not stored it yet)."""
    _append(cfg["ledger"], "finish", ctx)


class ChaosLedger(kmpray.CommonWorker):
    """Writes its ledger line, then sleeps a little so runs are in flight when the nemesis
    strikes. With ``cooperative`` in its input it sleeps in short steps and gives up when
    ``ctx.is_cancelled()`` (a heavy run's cancel only asks), writing no finish line: it
    looks last just before that line, so a finish after an acknowledged cancel is a fault."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        import asyncio

        cfg = record_start(input, ctx)
        if not cfg.get("cooperative"):
            await asyncio.sleep(cfg.get("sleep_ms", 20) / 1000)
        else:
            deadline = time.monotonic() + cfg.get("sleep_ms", 20) / 1000
            while not ctx.is_cancelled() and time.monotonic() < deadline:
                await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            if ctx.is_cancelled():
                return kmpray.WorkerResult.Failure("cancelled")
        record_finish(cfg, ctx)
        return kmpray.WorkerResult.Success(data={"ok": True})


class SteadyLoad(threading.Thread):
    """One-time ``ChaosLedger`` tasks (ids ``t0``, ``t1``, ...) at ``rate`` per second, in
    batches of a tenth of it by ``enqueue_many``, on a thread of its own until ``stop`` is
    set. ``acknowledged`` collects the ids answered SUCCESS; a call that raises (the
    scheduler is being killed) acknowledges none of its batch."""

    def __init__(self, sched: Any, rate: float, payload: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.sched, self.rate, self.payload, self.stop = sched, rate, payload, stop
        self.acknowledged: set[str] = set()
        self.submitted = 0
        self.started = time.monotonic()

    def run(self) -> None:
        once = kmpray.TaskTrigger.OneTime()
        batch, k = max(1, int(self.rate / 10)), 0
        while not self.stop.is_set():
            time.sleep(max(0.0, self.started + k / self.rate - time.monotonic()))
            items = [{"id": f"t{i}", "trigger": once, "worker_class_name": "ChaosLedger",
                      "input": self.payload} for i in range(k, k + batch)]
            k += batch
            self.submitted += len(items)
            try:
                results = self.sched.enqueue_many(items)
            except Exception:
                continue
            self.acknowledged.update(it["id"] for it, r in zip(items, results, strict=True)
                                     if r is kmpray.ScheduleResult.SUCCESS)


def enqueue_chain(sched: Any, j: int, payload: str) -> list[str]:
    """Chain ``c{j}``: two parallel ChaosLedger steps, then a step that joins them; the ids
    of its three tasks if the call was acknowledged, else none."""
    a, b, c = (kmpray.TaskRequest("ChaosLedger", id=f"c{j}-{s}", input=payload) for s in "abc")
    try:
        result = sched.begin_with([a, b]).then(c).with_id(f"c{j}").enqueue()
    except Exception:
        return []  # not acknowledged: the client gave up on this call
    return [a.id, b.id, c.id] if result is kmpray.ScheduleResult.SUCCESS else []


def barrier_violations(path: Path, chains: list[str]) -> int:
    """Chains (``enqueue_chain``'s) whose join step began before both parallel steps had
    finished their last run, or while one of them was to start again: a join that ran on
    a prerequisite not yet stored as SUCCEEDED (a SUCCEEDED task never runs again)."""
    starts, finishes = ledger_times(path, "start"), ledger_times(path, "finish")
    bad = 0
    for chain in chains:
        join = starts.get(f"{chain}-c")
        if not join:
            continue  # never started: counted as lost, or never started
        first = min(join)
        steps = (f"{chain}-a", f"{chain}-b")
        if any(not finishes.get(k) or max(finishes[k]) > first or max(starts.get(k, [first])) > first
               for k in steps):
            bad += 1
    return bad


def engine_pending(ray: Any, namespace: str, shards: int) -> int | None:
    """Tasks not finished on every shard of the engine, or None while a shard does not serve."""
    from kmpray.actors.names import shard_namespace

    total = 0
    for k in range(shards):
        pending = scheduler_status(ray, shard_namespace(namespace, k)).get("pending")
        if pending is None:
            return None
        total += int(pending)
    return total


def actor_pid(ray: Any, name: str, namespace: str) -> int | None:
    try:
        actor = ray.get_actor(name, namespace=namespace)
        return int(ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30))
    except Exception:
        return None


def answers_after(ray: Any, name: str, namespace: str, timeout_s: float = 120,
                  ready: bool | None = None) -> float:
    """Seconds until the named actor answers a call again; for the scheduler (or with
    ``ready``), until it serves (``ready()``: its store restored and its executors' runs
    adopted; a broker's event log open), not merely until its process runs. Nemeses wait for
    this before their next interval, so a kill cadence shorter than a restart still leaves
    the engine time to work between kills."""
    start = time.monotonic()
    serving = name == "kmpray.scheduler" if ready is None else ready
    while time.monotonic() - start < timeout_s:
        try:
            actor = ray.get_actor(name, namespace=namespace)
            call = actor.ready.remote() if serving else actor.__ray_call__.remote(lambda self: 1)
            ray.get(call, timeout=5)
            return time.monotonic() - start
        except Exception:
            time.sleep(0.05)
    return float("inf")


def scheduler_status(ray: Any, namespace: str) -> dict[str, Any]:
    try:
        actor = ray.get_actor("kmpray.scheduler", namespace=namespace)
        return dict(ray.get(actor.ready.remote(), timeout=60))
    except Exception:
        return {}


class EngineStops(threading.Thread):
    """The worker processes the engine ended on purpose (``status()["stopped_processes"]``,
    actors/stops.py: a stalled process put down at a restart, a heavy worker whose run
    ignored its cancel, one unreachable too long, the memory cap), read from every shard
    every ``every_s`` into ``pids``: a re-run whose earlier start was in one of them is
    explained like one after the nemesis's own kill. Each shard's list lives in its
    scheduler's memory, so a stop made less than ``every_s`` before that scheduler is killed
    can be missed (its re-runs would then show as unexplained: look at the log)."""

    def __init__(self, ray: Any, namespace: str, shards: int, every_s: float = 0.5) -> None:
        super().__init__(daemon=True, name="chaos-engine-stops")
        from kmpray.actors.names import shard_namespace

        self.ray, self.every_s = ray, every_s
        self.namespaces = [shard_namespace(namespace, k) for k in range(shards)]
        self.stop = threading.Event()
        self.seen: dict[tuple[int | None, int, str], dict[str, Any]] = {}

    def look(self) -> None:
        for namespace in self.namespaces:
            try:
                actor = self.ray.get_actor("kmpray.scheduler", namespace=namespace)
                entries = self.ray.get(actor.describe.remote(), timeout=5).get("stopped_processes", [])
            except Exception:
                continue  # down or restoring: asked again next time
            for e in entries:
                self.seen[(e["pid"], e["at_ms"], e["what"])] = e

    @property
    def pids(self) -> set[int]:
        return {e["pid"] for e in self.seen.values() if e["pid"]}

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.look()


def ledger_lines(path: Path, what: str = "start") -> list[list[str]]:
    """The ledger's start (or finish) lines, split: ``["start", task id, attempts, pid, time]``."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [parts for parts in map(str.split, lines) if len(parts) >= 2 and parts[0] == what]


def ledger_times(path: Path, what: str = "start") -> dict[str, list[float]]:
    """The times of each task's start (or finish) lines, in ledger order."""
    return times_in(ledger_lines(path, what))


def times_in(lines: list[list[str]], skip_pids: set[int] | frozenset[int] = frozenset()
             ) -> dict[str, list[float]]:
    """``ledger_times`` of ledger lines already read (but those written by a process in
    ``skip_pids``)."""
    times: dict[str, list[float]] = {}
    for parts in lines:
        if len(parts) >= 5 and int(parts[3]) not in skip_pids:
            times.setdefault(parts[1], []).append(float(parts[4]))
    return times


def ledger_starts(path: Path) -> Counter[str]:
    """Starts per task."""
    return Counter(parts[1] for parts in ledger_lines(path))


def _runs_by_task(path: Path, ids: set[str], what: str = "start") -> dict[str, list[tuple[str, int]]]:
    """The (attempt, pid) of each start (or finish) line of the tasks in ``ids``, in order."""
    runs: dict[str, list[tuple[str, int]]] = {}
    for parts in ledger_lines(path, what):
        if len(parts) >= 4 and parts[1] in ids:
            runs.setdefault(parts[1], []).append((parts[2], int(parts[3])))
    return runs


def rerun_after_kills(path: Path, ids: set[str], killed_pids: set[int]) -> int:
    """Tasks started more than once whose every start but the last was in a killed process."""
    return sum(1 for starts in _runs_by_task(path, ids).values()
               if len(starts) > 1 and all(pid in killed_pids for _attempt, pid in starts[:-1]))


def rerun_unexplained(path: Path, ids: set[str], killed_pids: set[int]) -> list[str]:
    """Tasks started more than once although an earlier start was in a process no kill
    took (``rerun_after_kills``'s complement): each one is worth a look."""
    return sorted(task for task, starts in _runs_by_task(path, ids).items()
                  if len(starts) > 1 and not all(pid in killed_pids for _attempt, pid in starts[:-1]))


def kill_accounting(path: Path, ids: set[str], killed_pids: set[int]) -> dict[str, int]:
    """What the kills could cost, from the ledger: ``runs_in_flight_at_kills`` (runs of
    acknowledged tasks that started in a killed process and never finished there: the
    kill took them mid-run, so they must run again) and ``rerun_after_finish`` (tasks
    started again although a killed process had finished their run: the result was made
    but died with the process before the scheduler stored it)."""
    finished = {(task, attempt, pid) for task, ends in _runs_by_task(path, ids, "finish").items()
                for attempt, pid in ends}
    runs = _runs_by_task(path, ids)
    in_flight = sum(1 for task, starts in runs.items() for attempt, pid in starts
                    if pid in killed_pids and (task, attempt, pid) not in finished)
    after_finish = sum(
        1 for task, starts in runs.items()
        if any(pid in killed_pids and (task, attempt, pid) in finished for attempt, pid in starts[:-1])
    )
    return {"runs_in_flight_at_kills": in_flight, "rerun_after_finish": after_finish}


def replay(sched: Any, since: int = 0, succeeded: set[str] | frozenset[str] = frozenset(),
           quiet_s: float = 3.0, timeout_s: float = 120.0) -> Iterator[tuple[int, Any]]:
    """Stored events after cursor ``since`` as (cursor, event), in cursor order, up to the
    end of the log: as it is now or, with ``succeeded``, once each of those tasks' successful
    completion has come (a scheduler hands completions to the broker a little after it
    stores them). Stops early at ``quiet_s`` without an event or at ``timeout_s``: a
    replay read until ``quiet_s`` of silence spent that long at every end of a check."""
    missing = set(succeeded)
    end = None if missing else sched.events.last_cursor()
    sub = sched.events.subscribe(since)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and (end is None or sub.cursor < end):
            event = sub.get(timeout_s=quiet_s)
            if event is None:
                return
            yield sub.cursor, event
            if missing and event.kind == "completion" and event.success:
                missing.discard(event.task_id)
                if not missing:  # what was stored with them has reached the log by now, or soon
                    end = sched.events.last_cursor()
    finally:
        sub.close()


def terminal_events(sched: Any, ids: set[str], timeout_s: float) -> Counter[str]:
    """Terminal completion events per task, replayed from the start of the log."""
    counts: Counter[str] = Counter()
    for _, event in replay(sched, 0, succeeded=ids, timeout_s=timeout_s):
        if event.kind == "completion" and event.task_id in ids and event.success:
            counts[event.task_id] += 1
    return counts
