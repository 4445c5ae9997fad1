"""chaos: a workload against a real engine while a nemesis kills its processes.

``python -m bench chaos --scenario scheduler|executors|hard-restart|poison|misfire|long-runs|node-loss|soak
[--quick] [--json PATH]``
(hard-restart: bench/chaos_restart.py; poison: bench/chaos_poison.py; misfire: bench/chaos_misfire.py;
long-runs: bench/chaos_longruns.py; node-loss: bench/chaos_nodes.py;
soak: bench/chaos_soak.py)

Every run writes a ledger line when it starts (task id, attempts before it, pid, time),
so "executed twice" is counted from what workers did, not from what the engine says.
A task here always succeeds on its first attempt: a second start of a task is a run the
system lost and ran again. Reported, per scenario:

- ``submitted``/``acknowledged``: enqueues sent / answered SUCCESS (ack'd = stored).
- ``lost``: acknowledged, not SUCCEEDED once the load drained (the pass figure: 0).
- ``executed_twice``: tasks whose worker started more than once (the goal: 0; a kill can
  cost the runs in flight on the killed process).
- ``counted_twice``: tasks with more than one terminal completion event (must be 0);
  ``events_missing``: acknowledged tasks whose terminal event never reached the log.
- ``kills``, ``recovery_s`` {p50, max}: from each kill until the process answers again.
- ``leaked_cpus``: CPUs still taken after the drain beyond the heavy workers kept warm.
"""

from __future__ import annotations

import json
import os
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import kmpray

from .common import percentiles, ray_up, table, write

SCENARIOS = {
    # name: (tasks, quick tasks, enqueue rate per s, seconds between kills, what it kills)
    "scheduler": (100_000, 5_000, 1_000, 2.0, "the scheduler process (SIGKILL)"),
    "executors": (10_000, 2_000, 200, 1.0, "a random light executor or heavy worker (SIGKILL)"),
}
HEAVY_EVERY = 20  # one task in 20 is heavy in the executors scenario


class ChaosLedger(kmpray.CommonWorker):
    """Appends one line per start to the ledger (O_APPEND: lines never interleave), then
    sleeps a little so runs are in flight when the nemesis strikes."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        import asyncio

        cfg = json.loads(input or "{}")
        line = f"start {ctx.task_id} {ctx.run_attempt_count} {os.getpid()} {time.time():.3f}\n"
        fd = os.open(cfg["ledger"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        await asyncio.sleep(cfg.get("sleep_ms", 20) / 1000)
        return kmpray.WorkerResult.Success(data={"ok": True})


def _pid(ray: Any, name: str, namespace: str) -> int | None:
    try:
        actor = ray.get_actor(name, namespace=namespace)
        return int(ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30))
    except Exception:
        return None


def _answers(ray: Any, name: str, namespace: str, timeout_s: float = 120) -> float:
    """Seconds until the named actor answers a call again."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            actor = ray.get_actor(name, namespace=namespace)
            ray.get(actor.__ray_call__.remote(lambda self: 1), timeout=5)
            return time.monotonic() - start
        except Exception:
            time.sleep(0.05)
    return float("inf")


class Nemesis(threading.Thread):
    """Kills a process every ``every_s`` until stopped; records each recovery."""

    def __init__(self, ray: Any, scenario: str, namespace: str, every_s: float, seed: int) -> None:
        super().__init__(name=f"nemesis-{scenario}", daemon=True)
        self.ray, self.scenario, self.namespace, self.every_s = ray, scenario, namespace, every_s
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.kills = 0
        self.recovery_s: list[float] = []

    def _victim(self) -> str:
        if self.scenario == "scheduler":
            return "kmpray.scheduler"
        status = ray_status(self.ray, self.namespace)
        light = [f"kmpray.executor.{i}" for i in range(status.get("executors", 0))]
        light += [f"kmpray.executor.probation.{k}" for k in range(status.get("probation_executors", 0))]
        heavy = [f"kmpray.heavy.{i}" for i in status.get("heavy_workers", [])]
        return self.rng.choice(light + heavy)

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            name = self._victim()
            pid = _pid(self.ray, name, self.namespace)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills += 1
            self.recovery_s.append(_answers(self.ray, name, self.namespace))


def ray_status(ray: Any, namespace: str) -> dict[str, Any]:
    try:
        actor = ray.get_actor("kmpray.scheduler", namespace=namespace)
        return dict(ray.get(actor.ready.remote(), timeout=60))
    except Exception:
        return {}


def _ledger(path: Path) -> Counter[str]:
    starts: Counter[str] = Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "start":
                starts[parts[1]] += 1
    return starts


def _terminal_events(sched: Any, ids: set[str], timeout_s: float) -> Counter[str]:
    """Terminal completion events per task, replayed from the start of the log."""
    counts: Counter[str] = Counter()
    sub = sched.events.subscribe(0)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            event = sub.get(timeout_s=3)
            if event is None:  # the load drained before: nothing more is coming
                break
            if event.kind == "completion" and event.task_id in ids and event.success:
                counts[event.task_id] += 1
    finally:
        sub.close()
    return counts


def scenario(name: str, quick: bool = False, tasks: int | None = None, seed: int = 7,
             address: str | None = None, every_s: float | None = None, sleep_ms: int = 20,
             rate: float | None = None) -> dict[str, Any]:
    """One scenario: ``tasks`` enqueued at ``rate`` per second (so the load lasts through
    many kills) while the nemesis kills every ``every_s``; each overrides the scenario's
    size (the CI test runs a small load with frequent kills)."""
    full, small, default_rate, default_every_s, what = SCENARIOS[name]
    every_s = every_s or default_every_s
    rate = rate or (default_rate / 4 if quick else default_rate)
    n = tasks or (small if quick else full)
    ray = ray_up(address)
    state = tempfile.mkdtemp(prefix=f"kmpray-chaos-{name}-")
    ledger = Path(state) / "ledger"
    namespace = f"chaos-{name}-{seed}"
    config = kmpray.EngineConfig(max_pending_tasks=max(2 * n, 10_000))
    sched = kmpray.connect(namespace=namespace, state_dir=state, config=config)
    try:
        sched.register_worker("ChaosLedger", ChaosLedger)
        nemesis = Nemesis(ray, name, namespace, every_s, seed)
        payload = json.dumps({"ledger": str(ledger), "sleep_ms": sleep_ms})
        heavy = kmpray.Constraints(is_heavy_task=True)
        acknowledged: set[str] = set()
        submitted = 0
        started = time.monotonic()
        nemesis.start()
        batch = max(1, int(rate / 10))  # ten calls a second
        for k in range(0, n, batch):
            time.sleep(max(0.0, started + k / rate - time.monotonic()))
            once = kmpray.TaskTrigger.OneTime()
            items = [{"id": f"t{i}", "trigger": once, "worker_class_name": "ChaosLedger", "input": payload,
                      **({"constraints": heavy} if name == "executors" and i % HEAVY_EVERY == 0 else {})}
                     for i in range(k, min(n, k + batch))]
            submitted += len(items)
            try:
                results = sched.enqueue_many(items)
            except Exception:
                continue  # not acknowledged: the client gave up on this call
            acknowledged |= {it["id"] for it, r in zip(items, results, strict=True)
                             if r is kmpray.ScheduleResult.SUCCESS}
        # Keep the nemesis on while the load drains, then let the engine settle.
        drain_deadline = time.monotonic() + max(120.0, n / 50)
        while time.monotonic() < drain_deadline:
            status = ray_status(ray, namespace)
            if status and status.get("pending") == 0:
                break
            time.sleep(0.5)
        nemesis.stop.set()
        nemesis.join(timeout=180)
        settle = time.monotonic() + 120
        while time.monotonic() < settle and ray_status(ray, namespace).get("pending", 1) != 0:
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        infos = {t.id: t.state for t in sched.list_tasks()}
        lost = sorted(t for t in acknowledged if infos.get(t) is not kmpray.TaskState.SUCCEEDED)
        starts = _ledger(ledger)
        terminal = _terminal_events(sched, acknowledged, timeout_s=120)
        status = ray_status(ray, namespace)
        warm_heavy = len(status.get("heavy_workers", [])) * config.heavy_num_cpus
        cluster, available = ray.cluster_resources().get("CPU", 0), ray.available_resources().get("CPU", 0)
        result = {
            "scenario": name,
            "nemesis": f"kills {what} every {every_s:g} s",
            "tasks": n,
            "rate_per_s": rate,
            "submitted": submitted,
            "acknowledged": len(acknowledged),
            "lost": len(lost),
            "lost_examples": lost[:10],
            "executed_twice": sum(1 for t in acknowledged if starts[t] > 1),
            "never_started": sum(1 for t in acknowledged if starts[t] == 0),
            "counted_twice": sum(1 for t in acknowledged if terminal[t] > 1),
            "events_missing": sum(1 for t in acknowledged if terminal[t] == 0),
            "kills": nemesis.kills,
            "recovery_s": _seconds(percentiles([s * 1000 for s in nemesis.recovery_s])),
            "recovery_max_s": round(max(nemesis.recovery_s), 3) if nemesis.recovery_s else None,
            "leaked_cpus": round(cluster - available - warm_heavy, 2),
            "elapsed_s": round(elapsed, 1),
            "seed": seed,
        }
    finally:
        sched.shutdown()
    return result


def _hard_restart(quick: bool) -> dict[str, Any]:
    """Its own driver processes and Ray instances: bench/chaos_restart.py."""
    from .chaos_restart import scenario as hard_restart

    return hard_restart(rounds=3 if quick else 20)


def _poison(quick: bool) -> dict[str, Any]:
    from .chaos_poison import scenario as poison

    return poison(quick=quick)


def _misfire(quick: bool) -> dict[str, Any]:
    from .chaos_misfire import scenario as misfire

    return misfire(quick=quick)


def _long_runs(quick: bool) -> dict[str, Any]:
    from .chaos_longruns import scenario as long_runs

    return long_runs(quick=quick)


def _node_loss(quick: bool) -> dict[str, Any]:
    from .chaos_nodes import scenario as node_loss

    return node_loss(quick=quick)


def _soak(quick: bool) -> dict[str, Any]:
    from .chaos_soak import scenario as soak

    return soak(quick=quick)


# Scenarios with a shape of their own (their modules say how they run).
OTHERS = {"hard-restart": _hard_restart, "poison": _poison, "misfire": _misfire, "long-runs": _long_runs,
          "node-loss": _node_loss, "soak": _soak}


def _seconds(ms: dict[str, float]) -> dict[str, float]:
    return {k: round(v / 1000, 3) for k, v in ms.items()}


def run(quick: bool = False, json_path: str | None = None, address: str | None = None,
        scenario_name: str | None = None) -> dict[str, Any]:
    every = [*SCENARIOS, *OTHERS]
    names = [scenario_name] if scenario_name else every
    if scenario_name is not None and scenario_name not in every:
        raise SystemExit(f"chaos: unknown scenario {scenario_name!r} ({', '.join(every)})")
    results = {}
    for name in names:
        if name in OTHERS:
            result = OTHERS[name](quick)
        else:
            result = scenario(name, quick=quick, address=address)
        results[name] = result
        out = write(f"chaos-{name}", result, json_path if len(names) == 1 else None)
        shown = [(k, str(v)) for k, v in result.items() if k not in ("lost_examples", "per_round")]
        print(table([*shown, ("json", str(out))]))
    return results
