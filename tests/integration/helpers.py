from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kmpray.bench.common import process_gone

from .workers import count_runs

__all__ = ["ONE_SHARD", "asked", "began", "blocks_input", "count_runs", "enqueues_again", "metrics_port",
           "next_completion", "one_name_from_many_threads", "refusing_anew", "restarted", "scrape_metrics",
           "until"]

#: A test that reaches into one scheduler's actors or files (shard 0's), skipped when the
#: suite runs against sharded engines (KMPRAY_TEST_SHARDS=2, see tests/conftest.py).
ONE_SHARD = pytest.mark.skipif(int(os.environ.get("KMPRAY_TEST_SHARDS") or 0) > 1,
                               reason="reaches into one scheduler's actors or files")


def metrics_port() -> int:
    """This (one-node) Ray's metrics export port; skips the test where no metrics agent
    answers there (plain ``ray``, without ``ray[default]``)."""
    import ray

    why = "metrics need ray[default]: pip install 'kmpray[metrics]'"
    pytest.importorskip("prometheus_client", reason=why)
    [node] = [n for n in ray.nodes() if n["Alive"]]
    port = int(node.get("MetricsExportPort") or 0)
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except OSError as exc:
        pytest.skip(f"no metrics agent on port {port} (plain ray; pip install 'kmpray[metrics]'): {exc}")
    return port


def scrape_metrics(
    port: int, namespace: str, by_shard: bool = False
) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``ray_kmpray_*`` samples of one engine (its ``namespace`` label), summed over the
    processes that sent them (and over its shards unless ``by_shard``), by name and by
    their labels other than Ray's own. Samples labelled with any other namespace (a shard's
    own, ``<namespace>~shard1``) are not this engine's to a query, so not counted here."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    dropped = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId", "namespace", "JobId"}
    if not by_shard:
        dropped.add("shard")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_kmpray_") and sample.labels.get("namespace") == namespace:
                labels = tuple(sorted((k, v) for k, v in sample.labels.items()
                                      if k not in dropped and not k.startswith("otel_")))
                out[sample.name[4:]][labels] += sample.value
    return out


def drained(sub: Any, n: int, of: set[str] | None = None) -> list[Any]:
    """The next ``n`` events (of the tasks ``of`` only: on a module's shared engine,
    other tests' events may come first); fewer if 30 s pass with none."""
    out = []
    while len(out) < n and (event := sub.get(timeout_s=30)) is not None:
        if of is None or event.task_id in of:
            out.append(event)
    return out


def next_completion(sub: Any, task_id: str, timeout_s: float = 30.0) -> Any:
    """The next completion event of ``task_id`` on a subscription opened before the trigger."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        event = sub.get(timeout_s=max(0.1, deadline - time.monotonic()))
        if event is not None and event.kind == "completion" and event.task_id == task_id:
            return event
    raise AssertionError(f"no completion of {task_id} within {timeout_s} s")


def until(
    predicate: Callable[[], bool],
    timeout_s: float = 30.0,
    what: str = "condition",
    explain: Callable[[], object] | None = None,
) -> None:
    """Wait for an outside observation (a file a worker writes) that no engine call exposes.
    ``explain`` adds what the engine says (its status, ``explain(id)``) to a timeout."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            said = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{said}")
        time.sleep(0.01)


def until_task(
    engine: Any, task_id: str, test: Callable[[Any], bool], what: str, timeout_s: float = 30.0
) -> None:
    """``until`` on one task's ``get_task_info``: a timeout says what the engine says of the
    task (its info and ``explain``), so a CI failure shows where the task waited."""
    until(lambda: test(engine.get_task_info(task_id)), timeout_s, what,
          explain=lambda: (engine.get_task_info(task_id), engine.explain(task_id)))


def refusing_anew(actor: Any, first_pid: int, says: str) -> bool:
    """Whether a new process of ``actor`` (not ``first_pid``) refuses: its ready() raises,
    saying ``says``."""
    import ray

    try:
        pid = asked(actor, lambda self: os.getpid())
        ray.get(actor.ready.remote(), timeout=5)
    except Exception as exc:
        return pid != first_pid and says in str(exc)
    return False


def enqueues_again(sched: Any, task_id: str = "after", timeout_s: float = 60) -> float:
    """Seconds until an enqueue of ``task_id`` (run now, ``Echo``) is acknowledged: a
    scheduler that cannot write refuses (``StoreWriteFailed``) until it ends and Ray starts
    it again from its store."""
    from kmpray import ScheduleResult, TaskTrigger
    from kmpray.errors import StoreWriteFailed

    since = time.monotonic()

    def serving() -> bool:
        try:
            return sched.enqueue(task_id, TaskTrigger.OneTime(), "Echo") is ScheduleResult.SUCCESS
        except StoreWriteFailed:  # (the refusing scheduler, until it ends)
            return False

    until(serving, timeout_s=timeout_s, what="the engine serving again")
    return time.monotonic() - since


def asked(actor: Any, fn: Callable[[Any], Any]) -> Any:
    """``fn(actor_instance)`` run in the actor, asked again while it restarts."""
    import ray
    from kmpray.actors.retry import call_with_retry_sync

    return call_with_retry_sync(lambda: ray.get(actor.__ray_call__.remote(fn), timeout=30))


def restarted(
    name: str, namespace: str, timeout_s: float = 60.0, while_down: Callable[[], object] | None = None
) -> Any:
    """Kill engine actor ``name`` (Ray restarts it); its handle once a new process answers.
    ``ray.kill`` returns before the old process is gone, and that one may still answer.
    ``while_down``: called once the old process has ended, before the new one is waited
    for (it takes over a second to start here): what happens while no such actor runs."""
    import ray

    actor = ray.get_actor(name, namespace=namespace)
    before = asked(actor, lambda self: os.getpid())
    ray.kill(actor, no_restart=False)
    if while_down is not None:
        until(lambda: process_gone(before), timeout_s, what=f"{name}'s old process to end")
        while_down()
    until(lambda: asked(actor, lambda self: os.getpid()) != before, timeout_s, what=f"{name}'s new process")
    return actor


def killed_together(namespace: str, *names: str) -> None:
    """SIGKILL engine actors ``names`` back to back (Ray restarts each): a fault that
    strikes them at once, as ``restarted`` strikes one and waits for it."""
    import signal

    import ray

    pids = [asked(ray.get_actor(name, namespace=namespace), lambda self: os.getpid()) for name in names]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def stop_process(pid: int, timeout_s: float = 10) -> None:
    """SIGSTOP ``pid`` and return once every thread of it is stopped. ``kill`` returns
    before that: the group stop begins when one of its threads takes the signal, and on a
    busy machine the others ran on for 13 ms here (a Ray worker wrote a file 13 ms after
    ``kill`` returned, session 43): a test that went on at once raced the process."""
    import signal

    os.kill(pid, signal.SIGSTOP)

    def stopped() -> bool:
        states = []
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            try:
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
            except OSError:
                continue  # a thread that ended meanwhile
        return bool(states) and all(state in ("T", "t") for state in states)

    until(stopped, timeout_s=timeout_s, what=f"process {pid} to stop")


def began(*started: Path, runs: int = 1) -> Callable[[], bool]:
    """For ``until``: ``Blocks`` has written its ``started`` line ``runs`` times (in each
    file given). Not the file's existence: it exists from the worker's ``open``, a moment
    before the line is written, and a process killed in between has left no line (a test
    waiting for a second line after that kill would wait in vain)."""
    return lambda: all(count_runs(str(path)) >= runs for path in started)


def blocks_input(tmp: Path, name: str, max_s: float = 60, ended: bool = False) -> tuple[str, Path, Path]:
    """``Blocks``' input: it writes ``started`` and runs until ``release`` exists (then,
    given ``ended``, writes which process ended it to ``<name>.ended``)."""
    started, release = tmp / f"{name}.started", tmp / f"{name}.release"
    cfg = {"started": str(started), "release": str(release), "max_s": max_s}
    if ended:
        cfg["ended"] = str(tmp / f"{name}.ended")
    return json.dumps(cfg), started, release


def one_name_from_many_threads(sched: Any, name: str, tmp: Path, threads: int = 16) -> tuple[list[Any], int]:
    """``threads`` concurrent ``enqueue(name, KEEP)`` calls of a run-now ``Blocks`` task that
    stays RUNNING until every call has returned (so a late call cannot legitimately start a
    second run after the first finished: KEEP keeps only unfinished work). Returns every
    call's answer and how many runs started; the task ends SUCCEEDED."""
    from kmpray import TaskState, TaskTrigger

    payload, started, release = blocks_input(tmp, name)
    results: list[Any] = []

    def submit() -> None:
        results.append(sched.enqueue(name, TaskTrigger.OneTime(), "Blocks", input=payload))

    workers = [threading.Thread(target=submit) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    release.touch()
    assert sched.wait(name, timeout_s=30).state is TaskState.SUCCEEDED
    return results, count_runs(str(started))


def in_turn(shared: Any) -> Iterator[Any]:
    """A module's shared engine for one test (the body of each such fixture):
    ``kmpray.TaskEventBus`` bound to it, as by a fresh connect (another test's engine may
    have been connected since); whatever the test leaves unfinished is cancelled after it."""
    import kmpray

    kmpray.TaskEventBus._bind(shared.events)
    yield shared
    shared.cancel_all()
