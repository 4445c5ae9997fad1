"""Connections from other processes than the one that connected: worker code's
``kmpray.connect()`` (kmpray/client/here.py) and a child forked after ``connect()``
(kmpray/client/lane.py, client/remote.py). One engine for the module: the first test
needs executors no worker has connected from yet (the second starts no worker that
connects).

Worker code: the connection to the engine running the worker is made as each executor
starts, in a thread, so the worker's first ``connect()`` no longer holds that executor's
event loop (~0.5 s here, reported as the worker blocking its loop, with Ray's warning of
a blocking ``ray.get`` inside an async actor)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import ray

import kmpray
from kmpray import ScheduleResult, TaskState, TaskTrigger
from tests.forked import in_a_forked_child

from .helpers import ONE_SHARD, until

pytestmark = pytest.mark.ray
LATER = TaskTrigger.OneTime(initial_delay_ms=600_000)


@pytest.fixture(scope="module")
def sched(module_engines: Any) -> Any:
    return module_engines.registered()


@ONE_SHARD
def test_an_async_worker_connects_without_blocking_its_executors_loop(sched: Any) -> None:
    names = [f"kmpray.executor.{i}" for i in range(int(sched.status()["executors"]))]
    executors = [ray.get_actor(n, namespace=sched.namespace) for n in names]

    def made_ahead(self: Any) -> bool:
        from kmpray.client import here

        return bool(here._HERE)

    until(lambda: all(ray.get([e.__ray_call__.remote(made_ahead) for e in executors], timeout=30)),
          timeout_s=60, what="each executor's connection to its engine, made as it started")
    for i in range(4):  # on both executors, most likely
        sched.enqueue(f"parent{i}", TaskTrigger.OneTime(), "EnqueuesChildAsync")
    for i in range(4):
        # connect() looked nothing up on the executor's loop: it was made as the executor started
        assert sched.wait(f"parent{i}", timeout_s=60).result.data == {"enqueued": "SUCCESS", "lookups": 0}
        assert sched.wait(f"parent{i}-child", timeout_s=60).state is TaskState.SUCCEEDED
    assert "EnqueuesChildAsync" not in sched.status()["loop_blocks"]


@ONE_SHARD
def test_a_forked_child_makes_its_own_lane_connections_and_is_told_ray_does_not_work_there(
        sched: Any) -> None:
    """multiprocessing's "fork" (a notebook's default on Linux) after connect(): the child
    used the parent's lane connections, the same sockets, so each read answers meant for
    the other ("the scheduler answered 14 of 1 items", a TaskInfo that was an enqueue's
    answer), and a call through Ray never answered there."""
    assert sched.enqueue("parent", LATER, "Noop") is ScheduleResult.SUCCESS  # an idle lane connection now
    seen: list[str | None] = []

    def parent_reads() -> None:  # the parent uses its lane while the child uses its own
        info = sched.get_task_info("parent")
        seen.append(info.id if info is not None else None)

    def child() -> dict[str, Any]:
        ids = [f"child-{i}" for i in range(30)]
        said = [sched.enqueue(i, LATER, "Noop").value for i in ids]
        infos = [getattr(sched.get_task_info(i), "id", None) for i in ids]
        try:
            sched.list_tasks()
            listed = "answered"
        except kmpray.EngineUnavailable as exc:
            listed = str(exc)
        return {"said": said, "infos": infos, "listed": listed}

    out = json.loads(in_a_forked_child(lambda: json.dumps(child()).encode(), parent_reads, timeout_s=60))
    assert out.get("said") == ["SUCCESS"] * 30, out  # each call its own answer
    assert out["infos"] == [f"child-{i}" for i in range(30)], out
    assert "was forked from process" in out["listed"] and "'spawn'" in out["listed"], out
    assert seen and set(seen) == {"parent"}, set(seen)
    assert {"parent", *(f"child-{i}" for i in range(30))} <= {t.id for t in sched.list_tasks()}
