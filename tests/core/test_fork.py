"""A process forked after ``connect()`` (multiprocessing's "fork", a notebook Pool on
Linux): what the connection holds of its parent's threads must not be waited on in the
child. No Ray here: the handles fail the test if anything reaches them."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from tests.forked import in_a_forked_child

from .test_ray_shut_down import Untouchable


def test_a_sharded_connection_fans_out_in_a_forked_child_with_threads_of_its_own() -> None:
    """Calls to every shard go through a thread pool; the child's was its parent's, with
    none of its threads, so a call handed to it waited for good (status(), enqueue_many()
    over two shards)."""
    from kmpray.client.facade import BackgroundTaskScheduler

    handles = {"schedulers": [Untouchable(), Untouchable()], "broker": Untouchable(), "oracle": Untouchable()}
    described = {"virtual_time": False, "platform": "cluster", "state_dir": "/x"}
    sched = BackgroundTaskScheduler("nb", handles, described)
    both = threading.Barrier(2)

    def call(method: str, *args: Any, shard: int, **kw: Any) -> tuple[str, int]:
        if os.getpid() == parent:
            both.wait(10)  # both of the pool's threads made in the parent, as under load
        return method, shard

    parent = os.getpid()
    sched._call = call  # type: ignore[method-assign]
    assert sched._fan("status", [(0, ()), (1, ())]) == [("status", 0), ("status", 1)]  # the pool is made
    pool, deadline = sched._fan_pool, time.monotonic() + 10
    assert pool is not None
    while pool._idle_semaphore._value < len(pool._threads) and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)  # its threads idle, as between two calls: a submit then starts none
    answered = in_a_forked_child(lambda: repr(sched._fan("status", [(0, ()), (1, ())])).encode())
    assert answered == b"[('status', 0), ('status', 1)]"
    assert sched._fan("status", [(0, ()), (1, ())]) == [("status", 0), ("status", 1)]  # the parent's works on
