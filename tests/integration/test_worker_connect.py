"""``kmpray.connect()`` in an ``async def do_work`` (kmpray/client/here.py): the
connection to the engine running the worker is made as each executor starts, in a thread,
so the worker's first ``connect()`` no longer holds that executor's event loop (~0.5 s
here, reported as the worker blocking its loop, with Ray's warning of a blocking
``ray.get`` inside an async actor)."""

from __future__ import annotations

from typing import Any

import pytest
import ray

from kmpray import TaskState, TaskTrigger

from .helpers import ONE_SHARD, until

pytestmark = pytest.mark.ray


@ONE_SHARD
def test_an_async_worker_connects_without_blocking_its_executors_loop(engines: Any) -> None:
    sched = engines.registered()
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
