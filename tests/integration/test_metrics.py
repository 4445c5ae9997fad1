"""The engine's metrics on Ray's metrics export port (``ray.util.metrics``, exported by the
metrics agent of ``ray[default]``), with the values of a known workload."""

from __future__ import annotations

import os
import time
import urllib.request
from collections import defaultdict
from typing import Any

import pytest

from kmpray import Constraints, TaskState, TaskTrigger

from .helpers import ONE_SHARD

pytestmark = pytest.mark.ray
ONCE = TaskTrigger.OneTime()


def _scrape(port: int, namespace: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``ray_kmpray_*`` samples of one engine, summed over the processes that sent them,
    by name and by their labels other than Ray's own."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    ray_labels = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId", "namespace", "JobId"}
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_kmpray_") and sample.labels.get("namespace") == namespace:
                labels = tuple(sorted((k, v) for k, v in sample.labels.items()
                                      if k not in ray_labels and not k.startswith("otel_")))
                out[sample.name[4:]][labels] += sample.value
    return out


@ONE_SHARD  # it reads one namespace's samples (each shard's carry its own)
def test_a_known_workload_shows_on_the_metrics_export_port(engines: Any) -> None:
    import ray

    pytest.importorskip("prometheus_client", reason="metrics need ray[default]: pip install 'kmpray[metrics]'")
    [node] = [n for n in ray.nodes() if n["Alive"]]
    port = node.get("MetricsExportPort")
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except OSError as exc:
        pytest.skip(f"no metrics agent on port {port} (plain ray; pip install 'kmpray[metrics]'): {exc}")

    from .workers import register_all

    sched = engines()  # real time: executors time enqueue -> start
    register_all(sched)
    for i in range(5):
        sched.enqueue(f"m{i}", ONCE, "Echo")
    sched.enqueue("bad", ONCE, "Raises", input="x", constraints=Constraints(max_retries=1, backoff_delay_ms=50))
    sched.wait([f"m{i}" for i in range(5)], timeout_s=30)
    assert sched.wait("bad", timeout_s=30).state is TaskState.FAILED

    want = {
        ("kmpray_tasks_enqueued_total", (("worker", "Echo"),)): 5,
        ("kmpray_tasks_enqueued_total", (("worker", "Raises"),)): 1,
        ("kmpray_runs_finished_total", (("outcome", "succeeded"), ("worker", "Echo"))): 5,
        ("kmpray_runs_finished_total", (("outcome", "retried"), ("worker", "Raises"))): 1,
        ("kmpray_runs_finished_total", (("outcome", "failed"), ("worker", "Raises"))): 1,
        ("kmpray_retries_total", (("worker", "Raises"),)): 1,
        ("kmpray_runs_dispatched_total", ()): 7,
        ("kmpray_tasks", (("state", "SUCCEEDED"),)): 5,
        ("kmpray_tasks", (("state", "FAILED"),)): 1,
        ("kmpray_tasks", (("state", "ENQUEUED"),)): 0,
        ("kmpray_ready_depth", (("kind", "light"),)): 0,
        ("kmpray_runs_started_total", (("worker", "Echo"),)): 5,  # summed over the executors
        ("kmpray_runs_started_total", (("worker", "Raises"),)): 2,
        ("kmpray_run_duration_ms_count", (("worker", "Echo"),)): 5,
        ("kmpray_enqueue_to_dispatch_ms_count", ()): 6,  # first runs due at once; not the retry
        ("kmpray_enqueue_to_start_ms_count", ()): 6,  # the same runs, timed by their executors
        ("kmpray_events_published_total", ()): 7,  # 5 + "retrying in" + the failure
    }
    deadline = time.monotonic() + 60  # Ray's agent exports every few seconds
    while True:
        got = _scrape(port, sched.namespace)
        seen = {key: got.get(key[0], {}).get(key[1]) for key in want}
        if seen == want or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert seen == want
    assert got["kmpray_timer_lateness_ms_count"][()] >= 7  # six due at enqueue, then the retry
    assert got["kmpray_store_write_ms_count"][()] >= 1
    assert got["kmpray_events_stored"][()] == 7 and got["kmpray_pending_tasks"][()] == 0
    store_only = got["kmpray_tasks_store_only"][()]
    if os.environ.get("KMPRAY_TEST_FINISHED_IN_MEMORY_MS") is None:
        assert store_only == 0  # finished seconds ago: still in memory (30 s)
    else:  # the suite with finished rows going at once (tests/conftest.py): some or all went by now
        assert 0 <= store_only <= 6
    assert sum(v for labels, v in got["kmpray_run_duration_ms_bucket"].items() if ("le", "+Inf") in labels) == 7
