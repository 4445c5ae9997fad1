"""Large ``enqueue_many`` calls (actors/scheduler_intake.py): taken in slices of
``INTAKE_SLICE`` items, each committed with its part of the call's answer, so the
scheduler's loop serves other calls, reports and timers in between (300,000 gated items
taken whole held it over 6 s: Exact timers due meanwhile ran 2.9-6.3 s late). The answer
is whole and in order; a retry after a restart applies only the slices no commit stored,
and a retry while the first try is still being taken in waits for its answer instead of
applying it again.

The first tests drive the actor's intake mixin on a stand-in host (a real core and
store, no Ray): the interleavings are made exactly. The last runs a real engine."""

from __future__ import annotations

import asyncio
import os
from collections import Counter, deque
from pathlib import Path
from typing import Any

import msgpack
import pytest
from kmpray.actors.scheduler_intake import SchedulerIntake

from kmpray import Constraints, ExistingWorkPolicy, ScheduleResult, TaskRequest, TaskState, TaskTrigger
from kmpray.clock import ManualClock
from kmpray.engine import SchedulerCore
from kmpray.platforms import profile
from kmpray.protocol import RETRY_MARK
from kmpray.store import SqliteTaskStore
from kmpray.timing import INTAKE_SLICE, TURN_BUDGET

LATER = {"kind": "one_time", "initial_delay_ms": 600_000}
OK = ScheduleResult.SUCCESS.value


class Host(SchedulerIntake):
    """What the intake mixin needs of the SchedulerActor: a core, a store, the turn's
    group commit (``_flush`` writes the core's changes and the answers in one transaction)."""

    def __init__(self, store: SqliteTaskStore) -> None:
        self.namespace = "batches"
        self.core = SchedulerCore(ManualClock(1_700_000_000_000), profile("cluster"),
                                  is_registered=lambda name: name == "Noop")
        self.store = store
        self.rejections = deque(maxlen=100)
        self.known = set()
        self._blobs = {}
        self._answers = []
        self.messages = Counter()
        self._commit_due = None
        self._taking_in = {}
        self._cancel_acks = []  # executors' answers to cancels: none here (no executors)
        self.commits: list[int] = []  # rows written by each commit
        self._ready = asyncio.get_running_loop().create_future()
        self._ready.set_result(None)

    def _flush(self) -> None:
        fx = self.core.drain()
        answers, self._answers = self._answers, []
        if fx or answers:
            self.store.write(fx.persist.values(), fx.delete, answers=answers)
            self.commits.append(len(fx.persist))

    def _kick(self) -> None:
        pass


def _items(n: int, policy: str | None = None, bad: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    constraints = {"existing_work_policy": policy} if policy else None
    return [{"id": f"b{i}", "trigger": LATER, "worker": "NoSuch" if i in bad else "Noop",
             "input": None, "constraints": constraints} for i in range(n)]


async def _first_commit(host: Host, turns: int = 100) -> None:
    """Until the host's first commit, a bounded number of loop turns (it takes two)."""
    for _ in range(turns):
        if host.commits:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"no commit within {turns} turns of the loop")


def _store(folder: Path) -> SqliteTaskStore:
    return SqliteTaskStore(os.path.join(folder, "tasks.db"))


def test_a_batch_over_a_slice_is_committed_slice_by_slice_and_answered_whole_in_order(tmp_path: Path) -> None:
    n = 2 * INTAKE_SLICE + 500
    bad = (INTAKE_SLICE - 1, INTAKE_SLICE, n - 1)  # rejections on both sides of a slice's end

    async def main() -> tuple[Host, list[Any], list[str]]:
        host = Host(_store(tmp_path))
        between: list[str] = []

        async def meanwhile() -> None:  # another call's turn, served while the batch is taken in
            await asyncio.sleep(0)
            between.append(f"{len(host.core.tasks)} rows in")

        other = asyncio.ensure_future(meanwhile())
        answer = await host.enqueue_many(_items(n, bad=bad), token="call-1")
        await other
        return host, answer, between

    host, answer, between = asyncio.run(main())
    assert len(answer) == n
    assert [i for i, (result, _why) in enumerate(answer) if result != OK] == list(bad)
    assert all("NoSuch" in (why or "") for result, why in answer if result != OK)
    assert host.commits == [INTAKE_SLICE - 1, INTAKE_SLICE - 1, 499]  # one commit per slice
    assert between == [f"{INTAKE_SLICE - 1} rows in"]  # it ran after the first slice, not after all
    keys = ["call-1", f"call-1@{INTAKE_SLICE}", f"call-1@{2 * INTAKE_SLICE}"]  # a part per slice
    stored = [tuple(a) for key in keys for a in msgpack.unpackb(host.store.answer(key), raw=False)]
    assert stored == [tuple(a) for a in answer]


def test_a_commit_is_answered_only_once_the_executors_have_the_cancels_sent(tmp_path: Path) -> None:
    """A commit that cancelled runs on executors (a REPLACE of handed-over work) answers
    its callers once those executors have the cancels, as cancel() does: the old run
    queued there must not begin after the answer (session 53's chaos failure)."""

    async def main() -> tuple[list[str], list[Any]]:
        host = Host(_store(tmp_path))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done_ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done_ack.set_result(None)
        host._cancel_acks = [done_ack, ack]  # one executor answered already, one has not
        seen: list[str] = []
        call = asyncio.ensure_future(host.enqueue_many(_items(3), token="call-c"))
        await _first_commit(host)
        for _ in range(50):  # loop turns: the commit is stored, its answer must wait
            await asyncio.sleep(0)
        seen.append(f"stored {host.commits}, answered {call.done()}")
        ack.set_result(None)
        answer = await asyncio.wait_for(call, 5)
        seen.append(f"answered {call.done()}")
        return seen, answer

    seen, answer = asyncio.run(main())
    assert seen == ["stored [3], answered False", "answered True"]
    assert [result for result, _why in answer] == [OK, OK, OK]


def test_a_retry_after_a_restart_applies_only_what_no_commit_stored(tmp_path: Path) -> None:
    """The first try's process died after its first slice's commit: a new scheduler on the
    same store gets the retry, answers that slice from the stored answer and takes in the
    rest. Taken again, finished one-time work would run again, replaced work be replaced."""
    n = INTAKE_SLICE + 300
    store = _store(tmp_path)
    first = _items(n, policy=ExistingWorkPolicy.REPLACE.value)

    async def first_try() -> Host:
        host = Host(store)
        task = asyncio.ensure_future(host.enqueue_many(first, token="call-2"))
        await _first_commit(host)  # until the first slice is stored ...
        task.cancel()  # ... then the process dies
        return host

    asyncio.run(first_try())
    assert len(msgpack.unpackb(store.answer("call-2"), raw=False)) == INTAKE_SLICE

    async def retry() -> tuple[Host, list[Any]]:
        host = Host(store)  # its core restores nothing: what it takes in shows in its commits
        return host, await host.enqueue_many(first, token="call-2" + RETRY_MARK)

    host, answer = asyncio.run(retry())
    assert len(answer) == n and all(result == OK for result, _why in answer)
    assert host.commits == [300]  # only the rest was taken in: the first slice not replaced again
    assert host.messages["retries_answered"] == 1


def test_a_retry_while_the_first_try_is_taken_in_waits_for_its_answer(tmp_path: Path) -> None:
    n = 3 * INTAKE_SLICE

    async def main() -> tuple[Host, list[Any], list[Any]]:
        host = Host(_store(tmp_path))
        items = _items(n)
        first = asyncio.ensure_future(host.enqueue_many(items, token="call-3"))
        await _first_commit(host)
        again = await host.enqueue_many(items, token="call-3" + RETRY_MARK)  # the client gave up waiting
        return host, await first, again

    host, first, again = asyncio.run(main())
    assert again == first and len(first) == n and all(result == OK for result, _why in first)
    assert sum(host.commits) == n  # each task taken in once (KEEP would have answered "kept ...")
    assert all(why is None for _result, why in again)


def _chain(cid: str, n: int, bad: int | None = None) -> dict[str, Any]:
    """A chain payload as the client sends it: n tasks, half in a first step, half after."""
    tasks = [{"id": f"{cid}-{i}", "id_explicit": True, "worker": "NoSuch" if i == bad else "Noop",
              "input": None, "constraints": None} for i in range(n)]
    return {"id": cid, "policy": "REPLACE", "steps": [tasks[: n // 2], tasks[n // 2:]], "error": None}


def test_a_big_chain_is_checked_in_slices_then_admitted_whole_in_one_commit(tmp_path: Path) -> None:
    """Until session 47 a chain was checked and inserted in one turn (a 99,000-task one
    held the loop ~1-2 s). Now what needs no state is checked slice by slice, other calls
    served in between, with nothing of the chain in the engine until it is admitted whole."""
    n = 5 * INTAKE_SLICE + 10

    async def main() -> tuple[Host, Any, list[int]]:
        host = Host(_store(tmp_path))
        seen: list[int] = []

        async def meanwhile() -> None:  # other calls' turns while the chain is checked
            for _ in range(3):
                await asyncio.sleep(0)
                seen.append(len(host.core.tasks))
            await host.enqueue_many(_items(1), token="other")

        other = asyncio.ensure_future(meanwhile())
        answer = await host.enqueue_chain(_chain("big", n), token="chain-1")
        await other
        return host, answer, seen

    host, answer, seen = asyncio.run(main())
    assert tuple(answer) == (OK, None)
    assert seen == [0, 0, 0]  # served between the slices, and the chain not in yet
    assert sorted(host.commits) == [1, n]  # the other call's commit, and the chain's in one
    assert host.core.chains["big"].steps == [[f"big-{i}" for i in range(n // 2)],
                                             [f"big-{i}" for i in range(n // 2, n)]]
    assert Counter(r.state for r in host.core.tasks.values() if r.chain_id) == {
        TaskState.ENQUEUED: n // 2, TaskState.BLOCKED: n - n // 2}


def test_a_big_chain_is_refused_whole_by_its_last_slice_or_by_what_happened_meanwhile(tmp_path: Path) -> None:
    n = 2 * INTAKE_SLICE + 10

    async def main() -> tuple[Host, Any, Any]:
        host = Host(_store(tmp_path))
        bad = await host.enqueue_chain(_chain("bad", n, bad=n - 1), token="chain-2")

        async def take_an_id() -> None:  # while the chain is checked, a task takes one of its ids
            await asyncio.sleep(0)
            await host.enqueue_many([{**_items(1)[0], "id": "late-5"}], token="other")

        other = asyncio.ensure_future(take_an_id())
        late = await host.enqueue_chain(_chain("late", n), token="chain-3")
        await other
        return host, bad, late

    host, bad, late = asyncio.run(main())
    assert bad[0] == ScheduleResult.REJECTED_INVALID_PARAMS.value and "'NoSuch' is not a registered" in bad[1]
    assert tuple(late) == (ScheduleResult.REJECTED_INVALID_PARAMS.value,
                           "step 1 task id: 'late-5' is used twice or already in use")
    assert set(host.core.tasks) == {"late-5"} and host.core.chains == {}
    assert sum(host.commits) == 1  # the other call's row: none of either chain


def test_a_retry_while_a_big_chain_is_checked_waits_for_its_answer(tmp_path: Path) -> None:
    n = 3 * INTAKE_SLICE

    async def main() -> tuple[Host, Any, Any]:
        host = Host(_store(tmp_path))
        first = asyncio.ensure_future(host.enqueue_chain(_chain("c", n), token="chain-4"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the first try is between two slices
        again = await host.enqueue_chain(_chain("c", n), token="chain-4" + RETRY_MARK)
        return host, await first, again

    host, first, again = asyncio.run(main())
    assert tuple(first) == tuple(again) == (OK, None)
    assert host.commits == [n]  # taken in once: a second intake would have replaced the chain
    assert len(host.core.tasks) == n and list(host.core.chains) == ["c"]


@pytest.mark.ray
def test_a_real_engine_takes_a_big_batch_in_slices(engines: Any) -> None:
    sched = engines()
    n = 2 * INTAKE_SLICE + 10
    before = sched.status()["messages"].get("commits", 0)
    results = sched.enqueue_many([{"id": f"r{i}", "trigger": TaskTrigger.OneTime(initial_delay_ms=600_000),
                                   "worker_class_name": "HttpRequestWorker",
                                   "input": '{"url": "http://127.0.0.1:9"}'} for i in range(n)])
    assert results == [ScheduleResult.SUCCESS] * n
    assert sched.status()["counts"]["ENQUEUED"] == n
    assert sched.status()["messages"]["commits"] - before >= 3  # a commit per slice, not one


@pytest.mark.ray
def test_a_wide_gated_step_is_set_aside_over_turns_and_the_free_task_behind_it_runs(engines: Any) -> None:
    """A pump turn sets aside at most TURN_BUDGET ready runs it cannot hand out, then the
    loop comes back for the rest by itself (nothing else is due to wake it): the one free
    task behind two and a half budgets' worth of gated ones runs. Before, the whole step
    was one turn (a 99,000-task one held the loop ~1 s)."""
    sched = engines.registered()
    sched.set_device_state(charging=False)
    try:
        n = 2 * TURN_BUDGET + TURN_BUDGET // 2
        gate = Constraints(requires_charging=True)
        step = [TaskRequest("Noop", id=f"g{i}", constraints=gate) for i in range(n)]
        step.append(TaskRequest("Noop", id="free"))
        assert sched.begin_with(step).with_id("wide").enqueue() is ScheduleResult.SUCCESS
        assert sched.wait("free", timeout_s=60).state is TaskState.SUCCEEDED
        last = sched.get_task_info(f"g{n - 1}")
        assert last.state is TaskState.ENQUEUED
        assert last.waiting_for is not None and last.waiting_for.kind == "constraints"
    finally:
        sched.clear_device_overrides()
