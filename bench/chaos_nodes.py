"""chaos scenario ``node-loss``: worker nodes removed and re-added under a steady load.

Runs in a process of its own (``python -m kmpray.bench.chaos_nodes ROUNDS RATE [SHARDS]``):
a 3-node ``ray.cluster_utils.Cluster`` on this machine (a head and two worker nodes, 1 CPU
each), an engine on it (``scheduler_shards=SHARDS``, 1 by default; each shard's pool has
executors on every node, and all of them lose theirs with it), one-time ledger tasks
enqueued at ``rate`` per second. Every few seconds a worker node is removed with the
runs in flight on it, then a new one joins; ``rounds`` times. Reported (one ``RESULT
{json}`` line): ``lost`` (acknowledged, not SUCCEEDED after the drain: pass 0),
``counted_twice`` (two successful completion events for one task: pass 0),
``executed_twice`` (ledger starts) against ``in_flight_on_removed`` (the runs on each
removed node when it went, summed): the runs a node takes with it are run again
elsewhere, so executed twice may reach that, no more.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main(rounds: int, rate: float, shards: int = 1, every_s: float = 6.0,
         sleep_ms: int = 200) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    from .common import scratch_dir

    import kmpray

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    cluster.wait_for_nodes()
    state = scratch_dir("kmpray-chaos-nodes-")
    sched = None
    out: dict[str, Any] = {"scenario": "node-loss", "rounds": rounds, "rate_per_s": rate, "shards": shards}
    try:
        sched = kmpray.connect(namespace="chaos-nodes", state_dir=state,
                               config=kmpray.EngineConfig(scheduler_shards=shards))
        ledger = Path(state) / "ledger"
        out.update(under_load(cluster, workers, sched, ledger, rounds, rate, every_s, sleep_ms))
    finally:
        print("RESULT " + json.dumps(out), flush=True)
        try:
            if sched is not None:
                sched.shutdown()
            ray.shutdown()
        finally:
            cluster.shutdown()
    return out


def under_load(cluster: Any, workers: list[Any], sched: Any, ledger: Path, rounds: int, rate: float,
               every_s: float = 6.0, sleep_ms: int = 200) -> dict[str, Any]:
    """The scenario on a running ``cluster`` and engine: ``rounds`` times, the oldest of
    ``workers`` (worker nodes; the list is updated) is removed and a new 1-CPU node added
    while one-time ledger tasks go in at ``rate`` per second. Also run by the multinode
    test (tests/integration/multinode.py) on its cluster, which saves a cluster start."""
    import kmpray

    from .chaos_common import ChaosLedger, SteadyLoad, ledger_starts, terminal_events
    from .common import drain

    sched.register_worker("ChaosLedger", ChaosLedger)
    payload = json.dumps({"ledger": str(ledger), "sleep_ms": sleep_ms})
    stop = threading.Event()
    load = SteadyLoad(sched, rate, payload, stop)
    load.start()
    removals = []
    for r in range(rounds):
        time.sleep(every_s)
        victim = workers.pop(0)
        in_flight = sched.status()["inflight_by_node"].get(victim.node_id, 0)
        t0 = time.monotonic()
        cluster.remove_node(victim)
        workers.append(cluster.add_node(num_cpus=1))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and workers[-1].node_id not in sched.status()["executor_nodes"]:
            time.sleep(0.05)
        removals.append({"round": r, "in_flight": in_flight, "replaced_s": round(time.monotonic() - t0, 2)})
    time.sleep(every_s / 2)
    stop.set()
    load.join(timeout=60)
    drain(sched)
    elapsed = time.monotonic() - load.started
    acknowledged = load.acknowledged
    states = {t.id: t.state for t in sched.list_tasks()}
    starts = ledger_starts(ledger)
    terminal = terminal_events(sched, acknowledged, timeout_s=120)
    lost = sorted(t for t in acknowledged if states.get(t) is not kmpray.TaskState.SUCCEEDED)
    return {
        "submitted": load.submitted,
        "acknowledged": len(acknowledged),
        "lost": len(lost),
        "lost_examples": lost[:10],
        "counted_twice": sum(1 for t in acknowledged if terminal[t] > 1),
        "events_missing": sum(1 for t in acknowledged if terminal[t] == 0),
        "executed_twice": sum(1 for t in acknowledged if starts[t] > 1),
        "in_flight_on_removed": sum(x["in_flight"] for x in removals),
        "removals": removals,
        "elapsed_s": round(elapsed, 1),
    }


def scenario(quick: bool = False, rounds: int | None = None, rate: float | None = None,
             shards: int = 1) -> dict[str, Any]:
    """Runs ``main`` in a process of its own (a cluster of its own, whatever Ray this one has)."""
    import subprocess

    rounds = rounds or (2 if quick else 5)
    rate = rate or (100.0 if quick else 300.0)
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    proc = subprocess.run([sys.executable, "-m", "kmpray.bench.chaos_nodes", str(rounds), str(rate),
                           str(shards)],
                          capture_output=True, text=True, timeout=900, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"node-loss run failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(lines[-1][len("RESULT "):]))


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1)
