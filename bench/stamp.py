"""A no-op worker that reports when it started, shared by the latency benchmarks."""

from __future__ import annotations

import time
from typing import Any

import kmpray


class BenchStamp(kmpray.CommonWorker):
    async def do_work(self, input: str | None) -> Any:  # noqa: A002
        return kmpray.WorkerResult.Success(data={"t": time.time() * 1000})


def register(sched: Any) -> None:
    sched.register_worker("BenchStamp", BenchStamp)


def collect_starts(sub: Any, ids: set[str], timeout_s: float = 300) -> dict[str, float]:
    """Worker start stamps from completion events (one subscription, no per-task calls)."""
    starts: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(starts) < len(ids) and time.monotonic() < deadline:
        event = sub.get(timeout_s=5)
        if event is not None and event.kind == "completion" and event.task_id in ids and event.output_data:
            starts[event.task_id] = event.output_data["t"]
    if len(starts) < len(ids):
        raise RuntimeError(f"only {len(starts)}/{len(ids)} completions within {timeout_s} s")
    return starts


def scheduler_pid(ray: Any, namespace: str) -> int:
    import os

    actor = ray.get_actor("kmpray.scheduler", namespace=namespace)
    return int(ray.get(actor.__ray_call__.remote(lambda self: os.getpid())))


def _stat_cpu_seconds(path: str) -> float:
    """User and system CPU seconds from a ``/proc`` ``stat`` file (a process's or a thread's)."""
    import os

    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far, user and system, every thread of it (``/proc``)."""
    return _stat_cpu_seconds(f"/proc/{pid}/stat")


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """Each thread's CPU time so far (``/proc/<pid>/task``): thread id -> seconds. The
    scheduler's event loop is one of them, and its busiest over a run: the bottleneck."""
    import os

    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = _stat_cpu_seconds(f"/proc/{pid}/task/{tid}/stat")
        except OSError:  # the thread ended meanwhile
            continue
    return out


def busiest_thread_seconds(before: dict[int, float], after: dict[int, float]) -> float:
    """The CPU seconds of the thread that used the most between two ``thread_cpu_seconds``."""
    return max((t - before.get(tid, 0.0) for tid, t in after.items()), default=0.0)


def rss_bytes(pid: int, part: str = "VmRSS") -> int:
    """A process's resident memory: ``VmRSS`` (all of it), or one part: ``RssAnon``
    (its private heap), ``RssFile`` (mapped files: code), ``RssShmem`` (shared memory
    it touched, e.g. Ray object-store pages it read)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(f"{part}:"):
            return int(line.split()[1]) * 1024
    return 0
