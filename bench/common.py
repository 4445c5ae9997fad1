"""Shared bench plumbing: one local Ray, percentiles (numpy), JSON results, tables."""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

def results_dir(module: Path) -> Path:
    """Where results go without ``--json``: ``bench/results`` of a checkout (what the README's
    figures come from), else ``./kmpray-bench-results`` under the current directory. Installed
    from a wheel, ``kmpray bench load`` wrote into site-packages (``kmpray/bench/results``)."""
    here = module.parent
    if (here.parent / "pyproject.toml").exists() and (here.parent / "kmpray").is_dir():
        return here / "results"
    return Path.cwd() / "kmpray-bench-results"


RESULTS = results_dir(Path(__file__))


def ray_up(address: str | None = None) -> Any:
    import ray

    if not ray.is_initialized():
        if address:
            # The cluster's own authentication: with RAY_AUTH_MODE unset, Ray finds a token
            # cluster's token (~/.ray/auth_token, RAY_AUTH_TOKEN...). Until session 57 this set
            # "disabled" here too, and every benchmark pointed at a token cluster (Ray >= 2.59's
            # default for `ray start --head`) was refused: `kmpray bench load --address auto`.
            try:
                ray.init(address=address, log_to_driver=False)
            except ConnectionError as exc:
                from kmpray.client.remote import refused_connection

                raise ConnectionError(refused_connection(address, exc)) from exc
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local instance of its own
            ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    return ray


KEEP_STATE = "KMPRAY_KEEP_STATE"


def scratch_dir(prefix: str) -> str:
    """A new temporary folder for a run's state dir and ledgers, removed when this process
    exits (``KMPRAY_KEEP_STATE=1`` keeps it, for a look after the run). Before session 52
    each benchmark and chaos run left its state behind in the temp folder: the suite's runs
    of them ~280 MB a time (a 200 MB step-data artifact among it), ``bench chains`` 100 MB."""
    folder = tempfile.mkdtemp(prefix=prefix)
    if not _keeping():
        atexit.register(shutil.rmtree, folder, True)
    return folder


def discard(folder: str) -> None:
    """A scratch folder's end before this process's (unless ``KMPRAY_KEEP_STATE=1``)."""
    if not _keeping():
        shutil.rmtree(folder, ignore_errors=True)


def _keeping() -> bool:
    return os.environ.get(KEEP_STATE, "") not in ("", "0")


def engine(namespace: str, **kw: Any) -> Any:
    import kmpray

    sched = kmpray.connect(namespace=namespace, state_dir=scratch_dir(f"kmpray-{namespace}-"), **kw)
    config = kw.get("config") or kmpray.EngineConfig()
    settle(sched, config.chain_coordinators)
    return sched


def settle(sched: Any, coordinators: int = 2, timeout_s: float = 60) -> None:
    """Until every actor of the engine has started: connect() returns once the scheduler
    serves, and the chain coordinators, asked for last, may still be starting (a process
    start and its imports: ~0.7 s of CPU each here), which would land in the first figures
    a benchmark measures (its baseline, often). An engine starts its coordinators with its
    first chain (chains.py warms them up with one): those not started are not waited for."""
    import ray
    from kmpray.actors.names import CHAIN, shard_namespace

    refs = []
    for k in range(getattr(sched, "shards", 1)):
        ns = shard_namespace(sched.namespace, k)
        for i in range(coordinators):
            try:
                refs.append(ray.get_actor(CHAIN.format(i), namespace=ns).stats.remote())
            except ValueError:
                pass  # not started: no chain yet
    ray.get(refs, timeout=timeout_s)


def process_gone(pid: int) -> bool:
    """The process has ended (a zombie counts: it runs nothing more). Linux's /proc."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def drain(sched: Any, timeout_s: float = 180) -> bool:
    """Wait (bounded) until the engine has nothing pending; True if it got there."""
    deadline = time.monotonic() + timeout_s
    while sched.status()["pending"] != 0:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
    return True


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    if not samples_ms:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    arr = np.asarray(samples_ms, dtype=float)
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}


def spread(samples: list[float], digits: int = 3, runs: bool = False) -> dict[str, Any]:
    """The best (lowest) and the median of repeated measurements, and with ``runs`` each one."""
    out: dict[str, Any] = {"best": round(min(samples), digits),
                           "median": round(statistics.median(samples), digits)}
    if runs:
        out["runs"] = [round(v, digits) for v in samples]
    return out


def cdf(samples_ms: Any) -> list[float]:
    """The samples' percentiles 0, 1, ..., 100: enough to draw their CDF (``bench plot``,
    ``bench load --plot``), small enough for the JSON."""
    if len(samples_ms) == 0:
        return []
    return [round(float(v), 3) for v in np.percentile(np.asarray(samples_ms, dtype=float), range(101))]


def write(name: str, result: dict[str, Any], path: str | None = None) -> Path:
    result = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()},
        **result,
    }
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)

