"""chaos scenario ``hard-restart``: the whole engine dies at once, mid-burst.

Each round a driver process starts its own Ray, connects to a fresh state dir and
enqueues a burst (``enqueue_many`` in chunks, delayed tasks), writing every id the
engine acknowledged to a ledger as soon as the call returns. At a random moment the
driver and every process of its Ray instance are SIGKILLed at once (what
``ray stop --force`` does to them: all processes of the driver's session, and only
those, so other Ray instances on the machine live on). Then the engine is started again
on the same state dir and every acknowledged id must be there. Reported: ``lost``
(acknowledged, missing after the restart: the pass figure, 0), rounds, rounds killed
mid-burst, the acknowledged and stored counts.

This proves durability against process crashes, the window of both ``durability``
settings; an OS crash or power loss (what ``durability="full"`` adds) is not simulated.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHUNK = 100
READY_TIMEOUT_S = 120.0  # a driver that has not started its Ray and engine by then failed


def driver(state: str, namespace: str, ledger: str, prefix: str, n: int, durability: str,
           shards: int = 1) -> None:
    """The process that is killed: its own Ray, one engine, a burst of acknowledged enqueues."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    import kmpray

    from .stamp import register

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    config = kmpray.EngineConfig(durability=durability, max_pending_tasks=10_000_000,  # type: ignore[arg-type]
                                 scheduler_shards=shards)
    sched = kmpray.connect(namespace=namespace, state_dir=state, config=config)
    register(sched)
    print(f"ready {ray.get_runtime_context().gcs_address}", flush=True)
    later = kmpray.TaskTrigger.OneTime(3_600_000)
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for k in range(0, n, CHUNK):
        items = [{"id": f"{prefix}{i}", "trigger": later, "worker_class_name": "BenchStamp"}
                 for i in range(k, min(n, k + CHUNK))]
        results = sched.enqueue_many(items)
        ok = [it["id"] for it, r in zip(items, results, strict=True) if r is kmpray.ScheduleResult.SUCCESS]
        if ok:
            os.write(fd, ("\n".join(ok) + "\n").encode())  # acknowledged: stored, says the engine
    print("done", flush=True)
    time.sleep(600)  # killed here if the burst ended before the nemesis came


def _first_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The driver's first line of output, or "" if none comes within ``timeout_s``."""
    if proc.stdout is None or not select.select([proc.stdout], [], [], timeout_s)[0]:
        return ""
    return proc.stdout.readline()


def _kill_session(sid: int) -> int:
    """SIGKILL every process of session ``sid`` (the driver and its Ray instance)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True, check=True).stdout
    pids = [int(p) for p, s in (line.split() for line in out.splitlines()) if int(s) == sid]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def _forget_cluster(address: str) -> None:
    """Ray remembers the last cluster started here; a dead one makes ``ray.init()`` hang."""
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        if current.read_text().strip() == address:
            current.unlink()
    except OSError:
        pass


def scenario(rounds: int = 20, tasks: int = 20_000, seed: int = 7, durability: str = "normal",
             max_delay_s: float = 1.5, shards: int = 1) -> dict[str, Any]:
    """``shards``: the engine's ``scheduler_shards`` (the restart opens the same count)."""
    import kmpray

    from .common import discard, ray_up, scratch_dir

    rng = random.Random(seed)
    acked_total = stored_total = lost_total = mid_burst = 0
    lost_examples: list[str] = []
    per_round = []
    ray_up()  # the engine is checked from here after each round
    for r in range(rounds):
        # A fresh state dir per round: each burst is checked on its own, not among every
        # earlier round's rows.
        prefix = f"r{r}-"
        state = scratch_dir("kmpray-chaos-restart-")
        ledger = Path(state) / "acknowledged"
        namespace = f"chaos-restart-{seed}-{r}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "kmpray.bench.chaos_restart", state, namespace, str(ledger), prefix,
             str(tasks), durability, str(shards)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        )
        try:
            line = _first_line(proc, READY_TIMEOUT_S)
            if not line.startswith("ready"):
                raise RuntimeError(f"round {r}: the driver did not start ({line!r})")
            address = line.split()[1]
            time.sleep(rng.uniform(0.0, max_delay_s))  # the nemesis strikes at a random moment
        finally:
            killed = _kill_session(proc.pid)
            proc.wait(timeout=30)
        _forget_cluster(address)
        acked = ledger.read_text().split() if ledger.exists() else []
        sched = kmpray.connect(namespace=namespace, state_dir=state,
                               config=kmpray.EngineConfig(scheduler_shards=shards))
        try:
            present = {t.id for t in sched.list_tasks() if t.id.startswith(prefix)}
        finally:
            sched.shutdown()
        discard(state)
        lost = [t for t in acked if t not in present]
        acked_total += len(acked)
        stored_total += len(present)
        lost_total += len(lost)
        lost_examples += lost[: 10 - len(lost_examples)]
        mid_burst += len(acked) < tasks
        per_round.append({"acknowledged": len(acked), "stored": len(present), "lost": len(lost),
                          "processes_killed": killed})
    return {
        "scenario": "hard-restart",
        "nemesis": "SIGKILL of the driver and every process of its Ray instance at once, mid-burst",
        "durability": durability,
        "shards": shards,
        "rounds": rounds,
        "rounds_killed_mid_burst": mid_burst,
        "tasks_per_burst": tasks,
        "acknowledged": acked_total,
        "stored_after_restart": stored_total,
        "lost": lost_total,
        "lost_examples": lost_examples,
        "per_round": per_round,
        "seed": seed,
    }


if __name__ == "__main__":
    driver(*sys.argv[1:5], int(sys.argv[5]), sys.argv[6], int(sys.argv[7]) if len(sys.argv) > 7 else 1)
