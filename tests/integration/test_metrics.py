"""The engine's metrics on Ray's metrics export port (``ray.util.metrics``, exported by the
metrics agent of ``ray[default]``), with the values of a known workload."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from kmpray import Constraints, TaskState, TaskTrigger

from .helpers import metrics_port, scrape_metrics

pytestmark = pytest.mark.ray
ONCE = TaskTrigger.OneTime()


def test_a_known_workload_shows_on_the_metrics_export_port(engines: Any) -> None:
    port = metrics_port()

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
        got = scrape_metrics(port, sched.namespace)
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
