"""A REPLACE of work queued on an executor: the old run never begins after the answer."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import ray

from kmpray import Constraints, EngineConfig, ExistingWorkPolicy, ScheduleResult, TaskState, TaskTrigger

from .helpers import ONE_SHARD, blocks_input, until
from .workers import register_all

pytestmark = pytest.mark.ray

DELAY_S = 1.5


def _queued_behind_a_busy_slot(engines: Any, tmp_path: Path, old_id: str) -> tuple[Any, Path, Path]:
    """An engine of one executor with one slot, the slot taken by "hold" (until
    ``release``) and a run of ``old_id`` queued there behind it. Returns the engine,
    ``release`` and the file the old run writes when it begins."""
    sched = engines(config=EngineConfig(executors=1, executor_concurrency=1))
    register_all(sched)
    hold, held, release = blocks_input(tmp_path, "hold")
    old, old_started, _never = blocks_input(tmp_path, "old")
    assert sched.enqueue("hold", TaskTrigger.OneTime(), "Blocks", input=hold) is ScheduleResult.SUCCESS
    until(held.exists, what="the slot taken")
    assert sched.enqueue(old_id, TaskTrigger.OneTime(), "Blocks", input=old) is ScheduleResult.SUCCESS
    until(lambda: sched.status()["inflight"] >= 2, what="the old run handed to the executor, behind the slot")
    return sched, release, old_started


def _cancelled_while_stopped(sched: Any, cancelled: str, release: Path, expected: int) -> None:
    """``cancel(cancelled)`` while the executor is stopped (SIGSTOP), ``release`` touched
    first so its run ends the moment it goes on; resumed once the call returned. Asserts
    the call gave up waiting for it; returns once the executor's runs have all ended."""
    import os
    import signal

    from kmpray.timing import CANCEL_ACK_TIMEOUT_S

    from .helpers import asked, stop_process

    executor = ray.get_actor("kmpray.executor.0", namespace=sched.namespace)
    pid = asked(executor, lambda self: os.getpid())
    stop_process(pid)
    try:
        release.touch()
        began = time.monotonic()
        assert sched.cancel(cancelled) == expected
        took = time.monotonic() - began
    finally:
        os.kill(pid, signal.SIGCONT)
    assert took >= CANCEL_ACK_TIMEOUT_S - 0.5, took  # it gave up waiting for the stopped executor
    # The executor goes on: its runs end (old work begun would run until released).
    until(lambda: asked(executor, lambda self: not self._tasks), what="the executor's runs ended")


@ONE_SHARD  # reaches into the scheduler
def test_a_replace_is_answered_once_the_old_runs_executor_has_the_cancel(
        engines: Any, tmp_path: Path) -> None:
    """``cancel()`` answered only once the executors had the cancel; a REPLACE through
    ``enqueue()`` answered once stored, and the old run, queued on its executor behind a
    busy slot, could begin in between (a chaos run saw one; session 53). Here the cancel
    is 1.5 s late and the slot frees the moment the REPLACE is answered: the old run must
    not begin."""
    def delay_cancels(self: Any) -> None:
        """In the scheduler: every cancel reaches its executor DELAY_S late (a busy executor,
        a slow node), its answer with it."""
        import asyncio

        real = self.pool.cancel
        held: list[Any] = []

        def delayed(keys: Any) -> list[Any]:
            keys = list(keys)
            loop = asyncio.get_running_loop()
            answered: asyncio.Future[None] = loop.create_future()

            def send() -> None:
                refs = real(keys)

                async def answer() -> None:
                    for ref in refs:
                        await ref
                    answered.set_result(None)

                held.append(asyncio.ensure_future(answer()))  # held: the loop keeps weak refs

            loop.call_later(DELAY_S, send)
            return [answered]

        self.pool.cancel = delayed

    sched, release, old_started = _queued_behind_a_busy_slot(engines, tmp_path, "b")
    scheduler = ray.get_actor("kmpray.scheduler", namespace=sched.namespace)
    ray.get(scheduler.__ray_call__.remote(delay_cancels), timeout=30)

    assert not old_started.exists()  # queued behind the busy slot
    replace = Constraints(existing_work_policy=ExistingWorkPolicy.REPLACE)
    began = time.monotonic()
    answer = sched.enqueue("b", TaskTrigger.OneTime(), "Echo", input="new", constraints=replace)
    took = time.monotonic() - began
    assert answer is ScheduleResult.SUCCESS
    release.touch()  # the slot frees now: an old run still queued there would begin
    assert sched.wait("b", timeout_s=60).result.data == {"input": "new", "attempt": 0}
    assert sched.wait("hold", timeout_s=60).state is TaskState.SUCCEEDED
    # The old run was queued before the replacement: had it begun, it began first.
    assert not old_started.exists(), "the replaced run began after the REPLACE was answered"
    assert took >= DELAY_S - 0.2  # answered once the executor had the cancel


@ONE_SHARD  # reaches into the executor
def test_a_step_handed_to_an_executor_that_stood_still_never_begins_after_the_cancel(
        engines: Any, tmp_path: Path) -> None:
    """``cancel()`` waits for the executors holding the cancelled runs at most 5 s (one that
    is down has nothing to begin). One stopped (SIGSTOP: a frozen VM, a long pause) is not
    down: resumed after the answer, its run of the chain's first step succeeded before it
    read the cancel and began the second step, handed over with it, after ``cancel()`` had
    returned (the chaos driver's pauses scenario, session 59). An executor whose loop stood
    still now leaves that step to the scheduler, which knows of the cancel."""
    from kmpray import TaskRequest

    sched = engines(config=EngineConfig(executors=1, executor_concurrency=1))
    register_all(sched)
    first, first_started, release = blocks_input(tmp_path, "first")
    second, second_started, _never = blocks_input(tmp_path, "second")
    chain = sched.begin_with(TaskRequest("Blocks", id="first", input=first)).then(
        TaskRequest("Blocks", id="second", input=second))
    assert chain.with_id("ch").enqueue() is ScheduleResult.SUCCESS
    until(first_started.exists, what="the first step running")
    _cancelled_while_stopped(sched, "ch", release, 2)  # the first step succeeds as it goes on
    assert not second_started.exists(), "the handed step began after cancel() returned"
    info = sched.wait("ch", timeout_s=30)
    assert info.state is TaskState.CANCELLED and sched.get_task_info("second").state is TaskState.CANCELLED


@ONE_SHARD  # reaches into the executor
def test_a_run_queued_on_an_executor_that_stood_still_never_begins_after_the_cancel(
        engines: Any, tmp_path: Path) -> None:
    """As above, for a run queued on the stopped executor behind a busy slot: resumed after
    ``cancel()`` gave up waiting for it, the slot frees at once and the queued run must not
    begin before the executor reads the cancel."""
    sched, release, old_started = _queued_behind_a_busy_slot(engines, tmp_path, "old")
    _cancelled_while_stopped(sched, "old", release, 1)  # the slot frees as the process goes on
    assert not old_started.exists(), "the queued run began after cancel() returned"
    assert sched.get_task_info("old").state is TaskState.CANCELLED
    assert sched.wait("hold", timeout_s=30).state is TaskState.SUCCEEDED
