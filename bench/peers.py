"""peers: kmpray beside the task queues its users weigh it against, in one run, one harness.

``python -m bench peers [--quick] [--install]``: N no-op tasks (5,000; quick 1,000) with
2 workers each, sent as a new user would (one call per task, from one thread), and
for kmpray also ``enqueue_many``. Every task records when it started; each system
reports tasks/s (first send -> last start) and enqueue -> start latency {p50, p99}.

- raw Ray: ``f.remote()`` per task on the local Ray (2 CPUs), starts returned by the task.
- Huey, Dramatiq, Celery: each over one Redis (127.0.0.1, a free port, no persistence)
  that this script starts and stops; their workers are 2 processes started and stopped
  here; each task pushes its start stamp onto a Redis list (bench/peer_tasks.py).
- kmpray: an engine on the same Ray; starts read from completion events.

The peers are never kmpray dependencies: ``pip install -e ".[peers]"`` (or ``--install``,
which pip-installs the same list and apt-installs redis-server when it is missing); a peer whose
package or Redis is missing is reported as skipped, not failed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import engine, percentiles, ray_up, table, write
from .peer_tasks import STAMPS
from .stamp import collect_starts, register

ROOT = Path(__file__).resolve().parent.parent
PEERS = {"huey": "huey", "dramatiq": "dramatiq", "celery": "celery"}


def peer_packages() -> list[str]:
    """What ``--install`` installs: pyproject.toml's ``peers`` extra (stated once, there)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(project["project"]["optional-dependencies"]["peers"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def install() -> None:
    """The peers' packages from PyPI, and Redis from the OS package manager."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *peer_packages()], check=True)
    if shutil.which("redis-server") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], check=False)


class Redis:
    """A throwaway redis-server on 127.0.0.1 (no RDB, no AOF), stopped on exit."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        self.client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("redis-server did not start within 10 s") from None
                time.sleep(0.05)  # waiting for a process we started to listen

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _workers(peer: str, redis_url: str) -> subprocess.Popen[bytes]:
    """The peer's worker processes (2), started the way its docs show."""
    cmd = {
        "huey": ["huey_consumer", "bench.peer_tasks.huey", "-w", "2", "-k", "process", "-q"],
        "dramatiq": [sys.executable, "-m", "dramatiq", "bench.peer_tasks", "--processes", "2",
                     "--threads", "1"],
        "celery": [sys.executable, "-m", "celery", "-A", "bench.peer_tasks", "worker", "-c", "2",
                   "--pool", "prefork", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
                   "--without-heartbeat"],
    }[peer]
    env = {**os.environ, "KMPRAY_PEER_REDIS": redis_url, "KMPRAY_PEER": peer,
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def _sender(peer: str, redis_url: str) -> Callable[[str], None]:
    os.environ["KMPRAY_PEER_REDIS"] = redis_url
    from . import peer_tasks as tasks

    if peer == "huey":
        tasks.__getattr__("huey")
        return lambda tid: tasks.huey_stamp(tid)
    if peer == "dramatiq":
        actor = tasks.__getattr__("dramatiq_stamp")
        return lambda tid: actor.send(tid)
    tasks.__getattr__("app")
    return lambda tid: tasks.celery_stamp.delay(tid)


def _collect(client: Any, n: int, timeout_s: float) -> dict[str, float]:
    starts: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(starts) < n and time.monotonic() < deadline:
        got = client.blpop(STAMPS, timeout=1)
        if got is None:
            continue
        tid, ms = got[1].decode().split()
        starts[tid] = float(ms)
    if len(starts) < n:
        raise RuntimeError(f"only {len(starts)}/{n} tasks started within {timeout_s:.0f} s")
    return starts


PACED_RATE = 100  # tasks/s for the latency phase: well below every system's capacity


def _measure(n: int, paced: int, send: Callable[[str], Any], starts: Callable[[list[str]], dict[str, float]]
             ) -> dict[str, Any]:
    """A burst of ``n`` tasks sent back to back (throughput: first send -> last start), then
    ``paced`` tasks at PACED_RATE (latency: each send -> its start, no backlog in it)."""
    burst = [f"t{i}" for i in range(n)]
    first = time.time() * 1000
    for tid in burst:
        send(tid)
    span_s = (max(starts(burst).values()) - first) / 1000
    sent: dict[str, float] = {}
    begin = time.perf_counter()
    for i in range(paced):
        delay = begin + i / PACED_RATE - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # pacing the load itself, not synchronisation
        sent[f"p{i}"] = time.time() * 1000
        send(f"p{i}")
    got = starts(list(sent))
    return {"tasks_per_s": round(n / span_s, 1),
            "start_latency_ms": percentiles([got[t] - s for t, s in sent.items()])}


def _run_queue(peer: str, redis: Redis, n: int, paced: int) -> dict[str, Any]:
    send = _sender(peer, redis.url)
    redis.client.delete(STAMPS)
    workers = _workers(peer, redis.url)
    try:
        send("warm")  # the workers are up once the first task has run
        _collect(redis.client, 1, 60)
        return _measure(n, paced, send, lambda ids: _collect(redis.client, len(ids), 300))
    finally:
        _stop(workers)


def _run_ray(ray: Any, n: int, paced: int) -> dict[str, Any]:
    @ray.remote(num_cpus=1)
    def stamp() -> float:
        return time.time() * 1000

    ray.get(stamp.remote())
    refs: dict[str, Any] = {}

    def starts(ids: list[str]) -> dict[str, float]:
        return dict(zip(ids, ray.get([refs[t] for t in ids], timeout=300), strict=True))

    return _measure(n, paced, lambda tid: refs.__setitem__(tid, stamp.remote()), starts)


def _run_kmpray(n: int, paced: int) -> dict[str, dict[str, Any]]:
    """One call per task, then the same engine with one ``enqueue_many`` for the burst."""
    from kmpray import TaskRequest, TaskTrigger

    sched = engine("bench-peers", config=_two_workers())
    try:
        register(sched)
        once = TaskTrigger.OneTime()
        sched.enqueue("warm", once, "BenchStamp")
        sched.wait("warm", timeout_s=60)
        sub = sched.events.subscribe()

        def starts(ids: list[str]) -> dict[str, float]:
            return collect_starts(sub, set(ids))

        single = _measure(n, paced, lambda tid: sched.enqueue(tid, once, "BenchStamp"), starts)
        sched.cancel_all()
        first = time.time() * 1000
        sched.enqueue_many([TaskRequest("BenchStamp", id=f"b{i}") for i in range(n)])
        got = starts([f"b{i}" for i in range(n)])
        bulk = {"tasks_per_s": round(n / ((max(got.values()) - first) / 1000), 1),
                "start_latency_ms": single["start_latency_ms"]}
    finally:
        sched.shutdown()
    return {"kmpray enqueue() per task": single, "kmpray enqueue_many": bulk}


def _two_workers() -> Any:
    from kmpray import EngineConfig

    return EngineConfig(executors=2)


def run(quick: bool = False, json_path: str | None = None, address: str | None = None,
        install_peers: bool = False) -> dict[str, Any]:
    if install_peers:
        install()
    n, paced = (1_000, 200) if quick else (5_000, 500)
    ray = ray_up(address)
    systems: dict[str, Any] = {"raw Ray f.remote()": _run_ray(ray, n, paced)}
    redis: Redis | None = None
    skipped: dict[str, str] = {}
    try:
        if shutil.which("redis-server") is None or importlib.util.find_spec("redis") is None:
            skipped.update(dict.fromkeys(PEERS, "no redis-server or redis-py (--install)"))
        else:
            redis = Redis()
            for peer, module in PEERS.items():
                if importlib.util.find_spec(module) is None:
                    skipped[peer] = f"{module} not installed (--install)"
                    continue
                systems[f"{peer} + Redis, one call per task"] = _run_queue(peer, redis, n, paced)
    finally:
        if redis is not None:
            redis.stop()
    systems.update(_run_kmpray(n, paced))
    base = systems["raw Ray f.remote()"]["tasks_per_s"]
    for fig in systems.values():
        fig["ratio_to_raw_ray"] = round(fig["tasks_per_s"] / base, 2)
    result = {"tasks": n, "workers_each": 2, "systems": systems, "skipped": skipped,
              "versions": _versions(),
              "paced_rate_per_s": PACED_RATE, "paced_tasks": paced,
              "note": "tasks/s: one thread sends the burst, a call per task (kmpray enqueue_many: one call), "
                      "first send -> last start; start latency: each send -> its start at the paced rate "
                      "(enqueue_many's row repeats enqueue()'s: the same engine, one task at a time)"}
    out = write("peers", result, json_path)
    rows = [(name, f"{f['tasks_per_s']:,.0f} tasks/s ({f['ratio_to_raw_ray']}x raw Ray), start p50 "
                   f"{f['start_latency_ms']['p50']:.1f} ms, p99 {f['start_latency_ms']['p99']:.1f} ms")
            for name, f in systems.items()]
    rows += [(name, f"skipped: {why}") for name, why in skipped.items()]
    print(table([*rows, ("json", str(out))]))
    return result


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("ray", "kmpray", "huey", "dramatiq", "celery", "redis"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    if shutil.which("redis-server"):
        out["redis-server"] = subprocess.run(["redis-server", "--version"], capture_output=True,
                                             text=True).stdout.split()[2].removeprefix("v=")
    return out
