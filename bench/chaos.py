"""chaos: a workload against a real engine while a nemesis kills (or pauses) its processes.

``python -m bench chaos --scenario scheduler|executors|coordinators|mixed|pauses|storm|hard-restart|
poison|misfire|long-runs|node-loss|soak|disk|io [--quick] [--json PATH]``; ``--shards N`` runs the
scheduler, executors, coordinators, mixed, pauses, storm, hard-restart, soak, node-loss, disk or
io scenario on a sharded engine (the nemesis strikes a shard drawn at random; results in
``chaos-NAME-N-shards.json``)
(the nemesis: bench/chaos_nemesis.py; hard-restart: bench/chaos_restart.py; poison:
bench/chaos_poison.py; misfire: bench/chaos_misfire.py; long-runs: bench/chaos_longruns.py;
node-loss: bench/chaos_nodes.py; soak: bench/chaos_soak.py; disk, a full disk: bench/chaos_disk.py;
io, I/O errors, a read-only and a slow disk: bench/chaos_io.py)

Every run writes a ledger line when it starts (task id, attempts before it, pid, time),
so "executed twice" is counted from what workers did, not from what the engine says.
A task here always succeeds on its first attempt: a second start of a task is a run the
system lost and ran again. Reported, per scenario:

- ``submitted``/``acknowledged``: enqueues sent / answered SUCCESS (ack'd = stored).
- ``lost``: acknowledged, not SUCCEEDED once the load drained (the pass figure: 0).
- ``executed_twice``: tasks whose worker started more than once (the goal: 0; a kill can
  cost the runs in flight on the killed process). ``runs_in_flight_at_kills``: runs that
  started in a killed process and never finished there; ``rerun_after_finish``: tasks run
  again although a killed process had finished their run (its result died with it
  before the scheduler stored it). Every second start should be one of these.
- ``executed_twice_unexplained``: second starts explained neither by the nemesis's kills
  nor by a process the engine ended itself (``engine_stopped``, from every shard's
  ``status()["stopped_processes"]``; ``executed_twice_after_engine_stops`` counts those).
- ``cancels_acknowledged`` (``chain_cancels_acknowledged`` of them of chains),
  ``replaces_acknowledged``, ``ran_after_cancel``, ``cancel_lost``, ``replacement_lost``
  (scheduler, mixed, pauses, storm): long work (a task, or a chain of two steps) cancelled
  or replaced (REPLACE) after each enqueue call; no run of the old work may begin or
  finish after the call returned, work said cancelled ends CANCELLED, a replacement runs
  and ends SUCCEEDED (all three must be 0; ``chaos_common.Cancels``). Where the load has
  heavy tasks, a third of the long work is heavy tasks (``heavy_cancels_acknowledged``,
  ``heavy_replaces_acknowledged``, ``heavy_ran_after_cancel`` of ``ran_after_cancel``).
- ``counted_twice``: tasks with more than one terminal completion event (must be 0);
  ``events_missing``: acknowledged tasks whose terminal event never reached the log.
- ``kills``, ``recovery_s`` {p50, max}: from each kill until the process answers again.
  (pauses and storm: ``kills`` counts every strike; ``strikes`` {killed, paused,
  killed_standing_still} splits them, ``pauses`` lists each pause, ``pauses_s`` their
  lengths, ``executed_twice_after_pauses`` the re-runs of runs begun in a paused process.)
- ``leaked_cpus``: CPUs still taken after the drain beyond the heavy workers kept warm
  (and beyond what was taken before the run: another engine's, on a shared cluster).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kmpray.actors.names import shard_namespace

import kmpray

from .chaos_cancels import Cancels
from .chaos_common import (
    ChaosLedger,
    EngineStops,
    barrier_violations,
    engine_pending,
    enqueue_chain,
    kill_accounting,
    ledger_lines,
    ledger_starts,
    rerun_after_kills,
    rerun_unexplained,
    scheduler_status,
    terminal_events,
)
from .chaos_nemesis import PAUSE_S, Nemesis
from .common import percentiles, ray_up, scratch_dir, table, write

SCENARIOS = {
    # name: (tasks, quick tasks, enqueue rate per s, seconds between kills, what it kills)
    "scheduler": (100_000, 5_000, 1_000, 2.0, "the scheduler process (SIGKILL)"),
    "executors": (10_000, 2_000, 200, 1.0, "a random light executor or heavy worker (SIGKILL)"),
    "coordinators": (10_000, 1_000, 200, 1.0, "a random ChainCoordinator actor (SIGKILL)"),
    "mixed": (20_000, 2_000, 400, 1.5, "a random one of: the scheduler, a light executor or heavy worker, "
                                       "a ChainCoordinator, the event broker, the oracle (SIGKILL)"),
    "pauses": (10_000, 1_000, 200, 1.5, "a random one of: the scheduler, a light executor or heavy worker, "
                                        "a ChainCoordinator, the event broker, the oracle (SIGSTOP, then "
                                        f"SIGCONT {PAUSE_S[0]:g}-{PAUSE_S[1]:g} s later)"),
    "storm": (10_000, 1_000, 200, 1.0, "a random one of: the scheduler, a light executor or heavy worker, "
                                       "a ChainCoordinator, the event broker, the oracle, killed (SIGKILL) "
                                       f"or paused for {PAUSE_S[0]:g}-{PAUSE_S[1]:g} s (SIGSTOP, SIGCONT), "
                                       "half each, a process standing still killed too"),
}
# The share of each scenario's strikes that pause rather than kill (the others: none).
PAUSE_SHARE = {"pauses": 1.0, "storm": 0.5}
# Chains after each enqueue call, by scenario (the others: none unless asked for).
CHAINS_PER_CALL = {"scheduler": 1, "coordinators": 5, "mixed": 2, "pauses": 2, "storm": 2}
# Scenarios that cancel or replace long work under the nemesis (Cancels).
CANCELS = {"scheduler", "mixed", "pauses", "storm"}
HEAVY_EVERY = 20  # one task in 20 is heavy in the executors, mixed, pauses and storm scenarios
HEAVY = {"executors", "mixed", "pauses", "storm"}
# heavy_cancel_grace_s where heavy runs are cancelled (Cancels' stubborn runs): short, so a
# stopped heavy worker is back soon (the default is 5 s).
HEAVY_CANCEL_GRACE_S = 1.0


def scenario(name: str, quick: bool = False, tasks: int | None = None, seed: int = 7,
             address: str | None = None, every_s: float | None = None, sleep_ms: int = 20,
             rate: float | None = None, drain_kills_s: float | None = None, shards: int = 1,
             chains: bool | None = None, wait_recovery: bool = True,
             cancels: bool | None = None) -> dict[str, Any]:
    """One scenario: ``tasks`` one-time tasks enqueued at ``rate`` per second (so the load
    lasts through many kills) while the nemesis kills every ``every_s``; each overrides
    the scenario's size (the CI test runs a small load with frequent kills). ``shards``:
    the engine's ``scheduler_shards``, the nemesis striking a shard drawn at random each
    time (``wait_recovery`` False: without waiting for the last victim to come back
    first). ``chains`` (default: in the scheduler, coordinators and mixed scenarios): after each
    enqueue call, ``CHAINS_PER_CALL`` chains of two parallel steps and a step joining them
    (``enqueue_chain``), their barriers checked from the ledger (``barrier_violations``).
    ``cancels`` (default: in the scheduler and mixed scenarios): after each call long work
    enqueued and earlier work cancelled or replaced, each acknowledged call checked
    (``Cancels``)."""
    full, small, default_rate, default_every_s, what = SCENARIOS[name]
    per_call = CHAINS_PER_CALL.get(name, 1) if chains or (chains is None and name in CHAINS_PER_CALL) else 0
    every_s = every_s or default_every_s
    rate = rate or (default_rate / 4 if quick else default_rate)
    n = tasks or (small if quick else full)
    ray = ray_up(address)
    # CPUs others hold before the run (a deployment's heavy workers on a cluster given with
    # --address): not this run's leak. Until session 57 a run beside a deployment with two
    # heavy workers placed reported leaked_cpus 2.0. (What others let go of during the run
    # can hide as much of a leak of this run's.)
    taken_before = ray.cluster_resources().get("CPU", 0) - ray.available_resources().get("CPU", 0)
    state = scratch_dir(f"kmpray-chaos-{name}-")
    ledger = Path(state) / "ledger"
    namespace = f"chaos-{name}-{seed}"
    # The event log keeps every completion of the run: the check replays it from cursor 0
    # (with the default retention of 100,000, a run of 103,000 tasks found its oldest
    # ~3,000 completions trimmed: reported "events missing" that the log had let go).
    cancels = cancels or (cancels is None and name in CANCELS)
    grace = {"heavy_cancel_grace_s": HEAVY_CANCEL_GRACE_S} if cancels and name in HEAVY else {}
    config = kmpray.EngineConfig(max_pending_tasks=max(4 * n, 10_000), event_retention=max(4 * n, 100_000),
                                 scheduler_shards=shards, **grace)
    sched = kmpray.connect(namespace=namespace, state_dir=state, config=config)
    nemesis: Nemesis | None = None
    try:
        sched.register_worker("ChaosLedger", ChaosLedger)
        nemesis = Nemesis(ray, name, namespace, every_s, seed, shards, config.chain_coordinators,
                          wait_recovery, pauses=PAUSE_SHARE.get(name, 0.0))
        payload = json.dumps({"ledger": str(ledger), "sleep_ms": sleep_ms})
        heavy = kmpray.Constraints(is_heavy_task=True)
        acknowledged: set[str] = set()
        chain_ids: list[str] = []  # acknowledged chains
        submitted = 0
        started = time.monotonic()
        started_wall = time.time()
        engine_stops = EngineStops(ray, namespace, shards)
        cancelling = Cancels(sched, ledger, heavy=name in HEAVY) if cancels else None
        nemesis.start()
        engine_stops.start()
        batch = max(1, int(rate / 10))  # ten calls a second
        for k in range(0, n, batch):
            time.sleep(max(0.0, started + k / rate - time.monotonic()))
            once = kmpray.TaskTrigger.OneTime()
            items = [{"id": f"t{i}", "trigger": once, "worker_class_name": "ChaosLedger", "input": payload,
                      **({"constraints": heavy} if name in HEAVY and i % HEAVY_EVERY == 0
                         else {})}
                     for i in range(k, min(n, k + batch))]
            submitted += len(items)
            try:
                results = sched.enqueue_many(items)
            except Exception:
                continue  # not acknowledged: the client gave up on this call
            acknowledged |= {it["id"] for it, r in zip(items, results, strict=True)
                             if r is kmpray.ScheduleResult.SUCCESS}
            for j in range(k // batch * per_call, (k // batch + 1) * per_call):
                submitted += 3
                if steps := enqueue_chain(sched, j, payload):
                    chain_ids.append(f"c{j}")
                    acknowledged.update(steps)
            if cancelling is not None:
                cancelling.step(k // batch)
        if cancelling is not None:
            cancelling.finish()  # the last ones too: none runs its whole length into the drain
        # Keep the nemesis on while the load drains (at most ``drain_kills_s`` into it, when
        # given), then let the engine settle.
        drain_deadline = time.monotonic() + max(120.0, n / 50)
        if drain_kills_s is not None:
            drain_deadline = min(drain_deadline, time.monotonic() + drain_kills_s)
        while time.monotonic() < drain_deadline:
            if engine_pending(ray, namespace, shards) == 0:
                break
            time.sleep(0.5)
        nemesis.stop.set()
        nemesis.join(timeout=180)
        if nemesis.failure is not None:
            raise RuntimeError(f"chaos {name}: the nemesis failed: {nemesis.failure}")
        nemesis.resume_all()
        engine_stops.stop.set()
        engine_stops.join(timeout=30)
        settle = time.monotonic() + 120
        while time.monotonic() < settle and engine_pending(ray, namespace, shards) != 0:
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        listed = sched.list_tasks()
        infos = {t.id: t.state for t in listed}
        # A task here succeeds on its first attempt: a count above 1 would be a system
        # re-run charged to the user's attempts (retries and backoff would then be spent).
        inflated = sum(1 for t in listed if t.id in acknowledged and t.run_attempt_count != 1)
        lost = sorted(t for t in acknowledged if infos.get(t) is not kmpray.TaskState.SUCCEEDED)
        starts = ledger_starts(ledger)
        terminal = terminal_events(sched, acknowledged, timeout_s=120)
        statuses = [scheduler_status(ray, shard_namespace(namespace, k)) for k in range(shards)]
        stubborn = cancelling.stubborn(engine_stops) if cancelling is not None and cancelling.heavy else {}
        engine_stops.look()
        explained = nemesis.killed_pids | engine_stops.pids
        after_kills = rerun_after_kills(ledger, acknowledged, nemesis.killed_pids)
        warm_heavy = sum(len(s.get("heavy_workers", [])) for s in statuses) * config.heavy_num_cpus
        cluster, available = ray.cluster_resources().get("CPU", 0), ray.available_resources().get("CPU", 0)
        result = {
            "scenario": name,
            "nemesis": f"{_strikes(nemesis.pause_share)} {what} every {every_s:g} s on average",
            "tasks": n,
            "shards": shards,
            "chains": len(chain_ids),  # acknowledged, each 3 tasks (in the counts below)
            "rate_per_s": rate,
            "submitted": submitted,
            "acknowledged": len(acknowledged),
            "lost": len(lost),
            "lost_examples": lost[:10],
            # What a loss needs to be read (session 58: one in a no-wait run, not made to
            # happen again): each one's state at the end and the engine's account of it.
            "lost_detail": [_lost_detail(sched, t, infos.get(t)) for t in lost[:5]],
            "executed_twice": sum(1 for t in acknowledged if starts[t] > 1),
            # Of those, the ones whose every earlier start was in a process the nemesis killed
            # (a SIGKILL cannot be survived by the runs inside it); the rest would be a bug.
            "executed_twice_after_kills": after_kills,
            # ... or in one the engine ended itself (actors/stops.py): a stalled process put
            # down at a restart, a heavy worker whose run ignored its cancel, the memory cap.
            "executed_twice_after_engine_stops":
                rerun_after_kills(ledger, acknowledged, explained) - after_kills,
            "executed_twice_unexplained": rerun_unexplained(ledger, acknowledged, explained)[:10],
            "killed_pids": sorted(nemesis.killed_pids),
            "engine_stopped": sorted(engine_stops.seen.values(), key=lambda e: e["at_ms"]),
            # What the kills could cost at most: runs they took mid-run, plus runs that had
            # finished in a killed process whose result died with it before it was stored.
            **kill_accounting(ledger, acknowledged, nemesis.killed_pids),
            "never_started": sum(1 for t in acknowledged if starts[t] == 0),
            "attempts_inflated": inflated,
            "counted_twice": sum(1 for t in acknowledged if terminal[t] > 1),
            "events_missing": sum(1 for t in acknowledged if terminal[t] == 0),
            "barrier_violations": barrier_violations(ledger, chain_ids),
            **(cancelling.check(nemesis.paused_pids) if cancelling is not None else {}),
            **stubborn,
            "kills": nemesis.kills,  # (pauses: each pause counts as one)
            "kills_by_shard": nemesis.kills_by_shard,
            "kills_by_kind": dict(nemesis.kills_by_kind),
            **(_pauses(nemesis, ledger, acknowledged) if nemesis.pause_share else {}),
            "waited_for_recovery": wait_recovery,
            "recovery_s": _seconds(percentiles([s * 1000 for s in nemesis.recovery_s])),
            "recovery_max_s": round(max(nemesis.recovery_s), 3) if nemesis.recovery_s else None,
            # (at least 0: others may have let go of theirs meanwhile, as an engine of the
            # suite's previous test shutting down does)
            "leaked_cpus": round(max(0.0, cluster - available - warm_heavy - taken_before), 2),
            "elapsed_s": round(elapsed, 1),
            "seed": seed,
            "timeline": timeline(ledger, started_wall, nemesis),
        }
    finally:
        if nemesis is not None:  # nothing left standing still, whatever happened
            nemesis.stop.set()
            nemesis.resume_all()
        sched.shutdown()
    return result


def _strikes(pause_share: float) -> str:
    return {0.0: "kills", 1.0: "pauses"}.get(pause_share, "kills or pauses")


def _pauses(nemesis: Nemesis, ledger: Path, acknowledged: set[str]) -> dict[str, Any]:
    """A pause's costs: ``executed_twice_after_pauses`` counts tasks whose every earlier
    start was in a process paused once (the engine may have put it down as unreachable:
    then ``engine_stopped`` names it and the re-run is explained; otherwise it is not)."""
    lengths, paused = sorted(nemesis.pauses_s), nemesis.paused_pids
    return {"strikes": {"killed": nemesis.kills - len(lengths), "paused": len(lengths),
                        "killed_standing_still": nemesis.killed_standing},
            "pauses_s": {"min": round(lengths[0], 2) if lengths else 0,
                         "median": round(lengths[len(lengths) // 2], 2) if lengths else 0,
                         "max": round(lengths[-1], 2) if lengths else 0},
            "paused_pids": sorted(paused),
            # each pause: [pid, actor, namespace, when (wall clock), how long]: what a late
            # start is read against (ran_after_cancel_detail names the process of each)
            "pauses": [list(p) for p in nemesis.pauses],
            "executed_twice_after_pauses": rerun_after_kills(ledger, acknowledged, paused)}


def _lost_detail(sched: Any, task_id: str, state: Any) -> dict[str, Any]:
    try:
        said = sched.explain(task_id).splitlines()[-16:]
    except Exception as exc:  # not found: the row itself is gone
        said = [f"{type(exc).__name__}: {exc}"]
    return {"id": task_id, "state": state.value if state is not None else None, "explain": said}


def _hard_restart(quick: bool, shards: int = 1) -> dict[str, Any]:
    """Its own driver processes and Ray instances: bench/chaos_restart.py."""
    from .chaos_restart import scenario as hard_restart

    return hard_restart(rounds=3 if quick else 20, shards=shards)


def _poison(quick: bool) -> dict[str, Any]:
    from .chaos_poison import scenario as poison

    return poison(quick=quick)


def _misfire(quick: bool) -> dict[str, Any]:
    from .chaos_misfire import scenario as misfire

    return misfire(quick=quick)


def _long_runs(quick: bool) -> dict[str, Any]:
    from .chaos_longruns import scenario as long_runs

    return long_runs(quick=quick)


def _node_loss(quick: bool, shards: int = 1) -> dict[str, Any]:
    from .chaos_nodes import scenario as node_loss

    return node_loss(quick=quick, shards=shards)


def _soak(quick: bool, shards: int = 1) -> dict[str, Any]:
    from .chaos_soak import scenario as soak

    return soak(quick=quick, shards=shards)


def _disk(quick: bool, shards: int = 1) -> dict[str, Any]:
    from .chaos_disk import scenario as disk

    return disk(quick=quick, shards=shards)


def _io(quick: bool, shards: int = 1) -> dict[str, Any]:
    from .chaos_io import scenario as io

    return io(quick=quick, shards=shards)


# Scenarios with a shape of their own (their modules say how they run).
OTHERS: dict[str, Callable[..., dict[str, Any]]] = {
    "hard-restart": _hard_restart, "poison": _poison, "misfire": _misfire, "long-runs": _long_runs,
    "node-loss": _node_loss, "soak": _soak, "disk": _disk, "io": _io}
# What --shards N runs on a sharded engine.
SHARDABLE = {*SCENARIOS, "hard-restart", "soak", "node-loss", "disk", "io"}


def timeline(ledger: Path, since: float, nemesis: Nemesis) -> dict[str, Any]:
    """What `bench plot` draws: runs begun per second (from the workers' own ledger) and
    each kill with how long its process took to answer again."""
    seconds = [float(parts[4]) - since for parts in ledger_lines(ledger) if len(parts) >= 5]
    per_s = [0] * (int(max(seconds, default=0)) + 1)
    for t in seconds:
        if t >= 0:
            per_s[int(t)] += 1
    pairs = zip(nemesis.killed_at, nemesis.recovery_s, strict=False)
    kills = [[round(at - since, 2), round(r, 3)] for at, r in pairs]
    return {"starts_per_s": per_s, "kills": kills}


def _seconds(ms: dict[str, float]) -> dict[str, float]:
    return {k: round(v / 1000, 3) for k, v in ms.items()}


def run(quick: bool = False, json_path: str | None = None, address: str | None = None,
        scenario_name: str | None = None, shards: int = 1) -> dict[str, Any]:
    every = [*SCENARIOS, *OTHERS]
    names = [scenario_name] if scenario_name else every
    if scenario_name is not None and scenario_name not in every:
        raise SystemExit(f"chaos: unknown scenario {scenario_name!r} ({', '.join(every)})")
    if shards != 1 and set(names) - SHARDABLE:
        raise SystemExit(f"chaos: --shards applies to the {', '.join(sorted(SHARDABLE))} scenarios only")
    results = {}
    for name in names:
        if name in OTHERS and name in SHARDABLE:
            result = OTHERS[name](quick, shards)
        elif name in OTHERS:
            result = OTHERS[name](quick)
        else:
            result = scenario(name, quick=quick, address=address, shards=shards)
        results[name] = result
        stem = f"chaos-{name}" if shards == 1 else f"chaos-{name}-{shards}-shards"
        out = write(stem, result, json_path if len(names) == 1 else None)
        hidden = ("lost_examples", "per_round", "killed_pids", "engine_stopped", "paused_pids", "pauses")
        shown = [(k, str(v)) for k, v in result.items() if k not in hidden]
        print(table([*shown, ("json", str(out))]))
    return results
