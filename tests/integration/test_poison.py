"""Workers that kill the process running them (os._exit, a memory cap): bounded system
re-runs, exact blame, the runs beside them finish (kmpray.engine.SchedulerCore.run_lost,
actors/executor_pool.py isolation, actors/memory_cap.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kmpray import EngineConfig, TaskState, TaskTrigger

pytestmark = pytest.mark.ray
ONCE = TaskTrigger.OneTime()


def _scheduler_pid(ray: Any, namespace: str) -> int:
    import os

    actor = ray.get_actor("kmpray.scheduler", namespace=namespace)
    return int(ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30))


def _starts(ledger: Path, task_id: str) -> int:
    return sum(1 for line in ledger.read_text().splitlines() if line.split()[1] == task_id) if ledger.exists() else 0


def test_a_worker_that_ends_its_process_fails_after_its_system_reruns_and_its_neighbours_finish(
    engines: Any, ray_session: Any, tmp_path: Path
) -> None:
    from kmpray.bench.chaos_common import ChaosLedger
    from kmpray.bench.chaos_poison import ChaosExit

    sched = engines(config=EngineConfig(max_system_reruns=2, executor_memory_mb=768))
    for name, cls in (("ChaosLedger", ChaosLedger), ("ChaosExit", ChaosExit)):
        sched.register_worker(name, cls)
    ledger = tmp_path / "ledger"
    payload = json.dumps({"ledger": str(ledger), "sleep_ms": 300, "hog_mb": 1024})
    pid = _scheduler_pid(ray_session, sched.namespace)
    items = [{"id": f"n{i}", "trigger": ONCE, "worker_class_name": "ChaosLedger", "input": payload} for i in range(40)]
    items.insert(20, {"id": "exit", "trigger": ONCE, "worker_class_name": "ChaosExit", "input": payload})
    sched.enqueue_many(items)

    for tid in ("exit",):  # the memory cap's worker (ChaosHog): the chaos poison test
        info = sched.wait(tid, timeout_s=120)
        assert info.state is TaskState.FAILED, sched.explain(tid)
        assert info.result.message.startswith("system: the process running it died during 3 runs in a row")
        assert info.run_attempt_count == 1  # system re-runs are not attempts
        assert 1 <= _starts(ledger, tid) <= 3  # its first run, then at most max_system_reruns=2 re-runs
        assert "its process died again (3 in a row): FAILED" in sched.explain(tid)
    for i in range(40):  # the runs in flight beside them ran again (alone) and finished
        assert sched.wait(f"n{i}", timeout_s=120).state is TaskState.SUCCEEDED
    assert _scheduler_pid(ray_session, sched.namespace) == pid  # no scheduler restart
    status = sched.status()
    assert status["probation_executors"] == 2 and status["running_alone"] == 0
    assert status["counts"]["FAILED"] == 1 and status["counts"]["SUCCEEDED"] == 40
