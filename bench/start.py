"""start: ``connect()`` of a new engine until it serves, and to its first task's end.

Baseline, in the same run and alternating with it: as many empty detached actors as the
engine has processes once it serves, created at once, until each has answered a call:
the floor Ray's process starts set on this machine (on 2 cores, ~0.5 s of CPU each
before any of kmpray's code runs). ``ratio`` is the engine's median over the floor's.
What the suite pays per test engine, and a user per ``connect()`` of a new engine.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from .common import ray_up, scratch_dir, spread, table, write
from .stamp import register


class _Empty:
    def ping(self) -> int:
        return os.getpid()


def _engine_processes(ray: Any, namespace: str) -> int:
    """The engine's actors (every one a process): the named ones in its namespace(s)."""
    from kmpray.actors.names import base_namespace

    return sum(1 for e in ray.util.list_named_actors(all_namespaces=True)
               if base_namespace(e["namespace"]) == namespace)


def _engine(ray: Any, round_no: int) -> tuple[float, float, int]:
    import kmpray

    ns = f"bench-start-{os.getpid()}-{round_no}"
    t0 = time.perf_counter()
    sched = kmpray.connect(namespace=ns, state_dir=scratch_dir("kmpray-bench-start-"))
    serving = time.perf_counter() - t0
    try:
        processes = _engine_processes(ray, ns)
        register(sched)
        sched.enqueue("first", kmpray.TaskTrigger.OneTime(), "BenchStamp")
        state = sched.wait("first", timeout_s=120).state
        first = time.perf_counter() - t0
        if state is not kmpray.TaskState.SUCCEEDED:
            raise RuntimeError(f"the first task ended {state}")
    finally:
        sched.shutdown()
    return serving, first, processes


def _floor(ray: Any, n: int, round_no: int) -> float:
    empty = ray.remote(num_cpus=0)(_Empty)
    ns = f"bench-start-floor-{os.getpid()}-{round_no}"
    t0 = time.perf_counter()
    actors = [empty.options(name=f"e{i}", namespace=ns, lifetime="detached").remote() for i in range(n)]
    try:
        ray.get([a.ping.remote() for a in actors], timeout=120)
        return time.perf_counter() - t0
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)


def run(quick: bool = False, json_path: str | None = None, address: str | None = None) -> dict[str, Any]:
    ray = ray_up(address)
    rounds = 3 if quick else 7
    serving: list[float] = []
    first: list[float] = []
    floor: list[float] = []
    processes: list[int] = []
    for r in range(rounds):
        # Alternating which goes first: each meets the other's processes ending about as often.
        if r % 2 == 0:
            s, f, n = _engine(ray, r)
            floor.append(_floor(ray, n, r))
        else:
            floor.append(_floor(ray, processes[-1], r))
            s, f, n = _engine(ray, r)
        serving.append(s)
        first.append(f)
        processes.append(n)
    result = {
        "rounds": rounds,
        "engine_processes": max(processes),
        "connect_s": spread(serving),
        "first_task_s": spread(first),
        "floor_s": spread(floor),
        "ratio": round(statistics.median(serving) / statistics.median(floor), 2),
        "note": "connect_s: connect() of a new engine until it serves; first_task_s: from the same start "
                "to one task's end (connect, register, enqueue, run); floor_s: engine_processes empty "
                "detached actors created at once until each answered, alternating with the engine",
    }
    out = write("start", result, json_path)
    print(table([
        ("engine processes", str(result["engine_processes"])),
        ("connect() s best/median", f"{result['connect_s']['best']}/{result['connect_s']['median']}"),
        ("to first task's end s", f"{result['first_task_s']['best']}/{result['first_task_s']['median']}"),
        ("floor s (empty actors)", f"{result['floor_s']['best']}/{result['floor_s']['median']}"),
        ("ratio (median/median)", str(result["ratio"])),
        ("json", str(out)),
    ]))
    return result
