"""Events: stored, replayed from a cursor, pushed to callbacks; bad use gets clear errors."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import kmpray
from kmpray import TaskCompletionEvent, TaskProgressEvent, TaskTrigger

from .helpers import drained

pytestmark = pytest.mark.ray


def test_completion_and_progress_events_arrive_in_order(svengine: Any) -> None:
    sub = svengine.events.subscribe()
    svengine.enqueue("p", TaskTrigger.OneTime(), "Progress")
    events = drained(sub, 5, of={"p"})
    assert [e.progress for e in events[:4]] == [25, 50, 75, 100]
    assert all(isinstance(e, TaskProgressEvent) and e.task_id == "p" for e in events[:4])
    done = events[4]
    assert isinstance(done, TaskCompletionEvent)
    assert (done.task_id, done.task_name, done.success, done.output_data) == ("p", "Progress", True, {"done": True})
    assert svengine.get_task_info("p").progress == 100


def test_a_flood_of_progress_reports_becomes_a_few_events_ending_with_the_last(svengine: Any) -> None:
    # 20,000 reports in a tight loop: the first progress_burst (20) pass, then one per
    # progress_interval_ms (100) with the newest winning, and the last before the result.
    sub = svengine.events.subscribe()
    svengine.enqueue("fl", TaskTrigger.OneTime(), "Floods", input="20000")
    events = _until(sub, lambda e: e.task_id == "fl" and isinstance(e, TaskCompletionEvent))
    shown = [(e.progress, e.message) for e in events if e.task_id == "fl" and isinstance(e, TaskProgressEvent)]
    assert 20 < len(shown) < 200, len(shown)
    assert shown[:3] == [(0, "1/20000"), (0, "2/20000"), (0, "3/20000")]  # the burst, as made
    assert shown[-1] == (100, "20000/20000")  # the last report is never thinned away
    assert [p for p, _ in shown] == sorted(p for p, _ in shown)
    assert svengine.get_task_info("fl").progress == 100


def test_after_advance_time_the_runs_events_are_already_at_the_broker(svengine: Any) -> None:
    """Virtual time: advance_time returns once what its runs emitted reached the broker, so
    a subscriber sees it at once. Before, the events lingered behind (a periodic task's four
    runs over an hour: the log's end had none of them after three of the four advances),
    and the demo printed its summary without the last cleanup runs."""
    svengine.enqueue("tick", TaskTrigger.Periodic(kmpray.FIFTEEN_MINUTES), "Echo")
    svengine.wait("tick", timeout_s=30)
    svengine.advance_time(1)  # the first run's event too (wait() answers once its result is stored)
    sub = svengine.events.subscribe()  # from here on: the next runs only
    ends = [svengine.events.last_cursor()]
    for _ in range(4):
        svengine.advance_time(kmpray.FIFTEEN_MINUTES)
        ends.append(svengine.events.last_cursor())
    assert [b - a for a, b in zip(ends, ends[1:], strict=False)] == [1, 1, 1, 1], ends
    got = [sub.get(timeout_s=10) for _ in range(4)]
    assert [(e.kind, e.task_id) for e in got if e is not None] == [("completion", "tick")] * 4
    svengine.cancel("tick")


def test_a_late_subscriber_replays_from_cursor_zero(svengine: Any) -> None:
    for i in range(3):
        svengine.enqueue(f"e{i}", TaskTrigger.OneTime(), "Echo")
        svengine.wait(f"e{i}", timeout_s=30)
    sub = svengine.events.subscribe(since=0)
    replayed = drained(sub, 3, of={"e0", "e1", "e2"})
    assert [e.task_id for e in replayed] == ["e0", "e1", "e2"]
    resumed = svengine.events.subscribe(since=sub.cursor - 1)
    assert resumed.get(timeout_s=5).task_id == "e2"
    assert sub.get(timeout_s=0.2) is None


def test_callback_subscription_receives_pushed_events(svengine: Any) -> None:
    got: list[Any] = []
    seen = threading.Event()

    def on_event(event: Any) -> None:
        if event.task_id == "cb":
            got.append(event)
            seen.set()

    sub = svengine.events.subscribe(callback=on_event)
    try:
        svengine.enqueue("cb", TaskTrigger.OneTime(), "Echo")
        assert seen.wait(timeout=30)
        assert got[0].task_id == "cb" and got[0].success
    finally:
        sub.close()


def _until(sub: Any, found: Any) -> list[Any]:
    """Events from ``sub`` up to the first for which ``found`` is true (bounded)."""
    out = []
    while (event := sub.get(timeout_s=30)) is not None:
        out.append(event)
        if found(event):
            break
    return out


def test_worker_code_can_emit_on_the_bus(svengine: Any) -> None:
    sub = svengine.events.subscribe()
    svengine.enqueue("em", TaskTrigger.OneTime(), "EmitsEvent", input="42")
    events = _until(sub, lambda e: e.task_name == "custom")
    assert events[-1].task_name == "custom" and events[-1].message == "from worker 42"


def test_bad_bus_use_is_a_clear_error(svengine: Any) -> None:
    with pytest.raises(ValueError, match="since"):
        svengine.events.subscribe(since=-1)
    with pytest.raises(ValueError, match="beyond"):
        svengine.events.subscribe(since=10**9)
    with pytest.raises(TypeError, match="TaskCompletionEvent"):
        kmpray.TaskEventBus.emit({"task_name": "x"})  # type: ignore[arg-type]
    sub = svengine.events.subscribe()  # from here on (the shared engine's log has other tests' events)
    kmpray.TaskEventBus.emit(TaskCompletionEvent("driver", True, "from the driver"))
    events = _until(sub, lambda e: e.task_name == "driver")
    assert events[-1].task_name == "driver" and events[-1].message == "from the driver"


def test_many_subscribers_one_slow_all_get_every_event_in_order(vengine: Any) -> None:
    import time

    subs = [vengine.events.subscribe() for _ in range(5)]
    slow_seen: list[str] = []

    def slow(event: Any) -> None:
        time.sleep(0.02)  # a slow consumer: it must not hold anyone up, nor lose anything
        slow_seen.append(event.task_id)

    slow_sub = vengine.events.subscribe(callback=slow)
    try:
        ids = [f"m{i}" for i in range(60)]
        assert all(r.value == "SUCCESS" for r in vengine.enqueue_many(
            [{"id": i, "trigger": TaskTrigger.OneTime(), "worker_class_name": "Echo"} for i in ids]))
        for i in ids:
            vengine.wait(i, timeout_s=30)
        for sub in subs:  # the fast ones already have everything, in the broker's order
            got = [e.task_id for e in drained(sub, 60)]
            assert sorted(got) == sorted(ids) and len(got) == 60
        orders = {tuple(e.task_id for e in drained(vengine.events.subscribe(since=0), 60))}
        assert len(orders) == 1
        deadline = time.monotonic() + 30
        while len(slow_seen) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tuple(slow_seen) in orders  # the slow one caught up, same order, nothing dropped
    finally:
        slow_sub.close()


def test_a_flood_of_progress_events_never_pushes_completions_out_of_the_log(engines: Any) -> None:
    """event_retention counts completions and progress_retention progress events, each
    kind its own newest N: progress from runs (via the scheduler) and from the bus alike."""
    from kmpray.bench.chaos_common import replay

    config = kmpray.EngineConfig(event_retention=20, progress_retention=5, progress_interval_ms=0)
    sched = engines.registered(config=config, virtual_time=True)
    ids = [f"e{i}" for i in range(10)]
    for i in ids:
        sched.enqueue(i, TaskTrigger.OneTime(), "Echo")
    sched.wait(ids, timeout_s=60)
    # their completions in the log before fl's: a wait() is answered at the commit, the
    # event goes on in a later batch, and on two shards another shard's batch (a fresh
    # engine's first call to the broker) can come after fl's whole run
    list(replay(sched, 0, succeeded=set(ids), timeout_s=60))
    sched.enqueue("fl", TaskTrigger.OneTime(), "Floods", input="50")  # 50 progress events
    sched.wait("fl", timeout_s=60)
    list(replay(sched, 0, succeeded={"fl"}, timeout_s=60))  # its events are in the log before the bus's
    for n in range(10):
        kmpray.TaskEventBus.emit(TaskProgressEvent("bus", "Bus", n * 10, f"bus {n}"))
    sched.enqueue("last", TaskTrigger.OneTime(), "Echo")
    sched.wait("last", timeout_s=60)
    events = [e for _c, e in replay(sched, 0, succeeded={"last"}, timeout_s=60)]
    done = [e.task_id for e in events if isinstance(e, TaskCompletionEvent)]
    assert sorted(done[:10]) == ids and done[10:] == ["fl", "last"], done  # 12, within 20: all kept
    progress = [(e.task_id, e.progress) for e in events if isinstance(e, TaskProgressEvent)]
    assert progress == [("bus", 50), ("bus", 60), ("bus", 70), ("bus", 80), ("bus", 90)], progress


def test_wait_many_with_a_progress_bar(svengine: Any, capsys: Any) -> None:
    ids = ["w1", "w2"]
    for i in ids:
        svengine.enqueue(i, TaskTrigger.OneTime(), "Progress")
    chain = svengine.begin_with(kmpray.TaskRequest("Echo")).with_id("wchain")
    chain.enqueue()
    infos = svengine.wait([*ids, "wchain"], timeout_s=60, progress=True)
    assert [i.state.value for i in infos] == ["SUCCEEDED"] * 3
    assert isinstance(infos[2], kmpray.ChainInfo)
    err = capsys.readouterr().err
    assert "kmpray" in err and "300/300" in err  # the bar reached 100 % per id
    assert "wchain: ✓" in err  # the chain's one step, shown done


def test_lists_and_infos_render_as_tables(svengine: Any) -> None:
    svengine.enqueue("tbl", TaskTrigger.OneTime(), "Echo")
    svengine.wait("tbl", timeout_s=30)
    tasks = svengine.list_tasks(kmpray.TaskState.SUCCEEDED)
    row = next(t for t in tasks if t.id == "tbl")
    assert isinstance(tasks, list)
    text = str(tasks)
    assert text.splitlines()[0].split()[:3] == ["id", "worker", "state"] and "SUCCEEDED" in text
    assert any(line.split()[:1] == ["tbl"] for line in text.splitlines())
    assert "<table>" in tasks._repr_html_() and "<td>tbl</td>" in row._repr_html_()


def test_actor_subscription_is_pushed_every_event(svengine: Any) -> None:
    import ray

    @ray.remote(num_cpus=0)
    class Inbox:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def on_event(self, event: Any) -> None:
            if event.task_id in ("a0", "a1", "a2"):
                self.seen.append(event.task_id)

        def get(self) -> list[str]:
            return self.seen

    inbox = Inbox.remote()
    sub = svengine.events.subscribe(actor=inbox)
    try:
        for i in range(3):
            svengine.enqueue(f"a{i}", TaskTrigger.OneTime(), "Echo")
            svengine.wait(f"a{i}", timeout_s=30)
        from .helpers import until

        until(lambda: len(ray.get(inbox.get.remote(), timeout=10)) >= 3, what="pushed events")
        assert ray.get(inbox.get.remote(), timeout=10)[:3] == ["a0", "a1", "a2"]
    finally:
        sub.close()


def test_an_actor_subscriber_that_died_leaves_no_pusher_behind(svengine: Any) -> None:
    import ray

    from .helpers import until

    @ray.remote(num_cpus=0)
    class Gone:
        def on_event(self, event: Any) -> None:
            pass

    @ray.remote(num_cpus=0)
    class Deaf:
        def ping(self) -> None:
            pass

    # No on_event: refused at once, rather than a traceback in the broker's log per event.
    with pytest.raises(TypeError, match=r"subscribe\(actor=\.\.\.\): .* has no method on_event\(event\)"):
        svengine.events.subscribe(actor=Deaf.remote())
    gone = Gone.remote()
    sub = svengine.events.subscribe(actor=gone)
    broker = ray.get_actor("kmpray.broker", namespace=svengine.namespace)

    def pushing() -> bool:
        return bool(ray.get(broker.__ray_call__.remote(lambda self: sub.id in self._pushing), timeout=10))

    assert pushing()
    ray.kill(gone)
    svengine.enqueue("after-gone", TaskTrigger.OneTime(), "Echo")  # its push finds the actor dead
    svengine.wait("after-gone", timeout_s=30)
    until(lambda: not pushing(), timeout_s=30, what="the dead subscriber's pusher gone")
    sub.close()  # nothing left to stop: no error


def test_subscriptions_are_async_iterable(svengine: Any) -> None:
    import asyncio

    sub = svengine.events.subscribe()
    svengine.enqueue("as", TaskTrigger.OneTime(), "Progress")

    async def first_completion() -> Any:
        async for event in sub:
            if event.kind == "completion" and event.task_id == "as":
                return event
        return None

    event = asyncio.run(asyncio.wait_for(first_completion(), 30))
    sub.close()
    assert event.task_id == "as" and event.success and event.output_data == {"done": True}


def test_the_broker_stores_an_oversized_completion_cut_down_and_refuses_an_oversized_emit(
        tmp_path: Any) -> None:
    """With max_output_bytes raised past 1 MiB a task's completion event is over the broker's
    limit of one event: it used to be left out of the log without a word (the subscriber
    never saw that task finish). Unit-tested on the actor's class: no Ray needed."""
    import asyncio

    from kmpray.actors.event_broker import EventBroker

    from kmpray.errors import InvalidParameters
    from kmpray.event_codec import decode_events, encode_event

    async def scenario() -> None:
        broker = EventBroker.__ray_actor_class__(str(tmp_path), retention=100)
        big = TaskCompletionEvent("W", True, "done", task_id="k", output_data={"s": "x" * (2 << 20)})
        small = TaskCompletionEvent("W", True, "done", task_id="j")
        assert broker.publish([encode_event(big), encode_event(small)], [1, 2]) == 2
        [(c1, e1), (c2, e2)] = decode_events(broker.log.read(0, 10))
        assert (c1, e1.task_id, e1.output_data["$kmpray"], c2, e2) == (1, "k", "omitted", 2, small)
        with pytest.raises(InvalidParameters, match="over the 1,048,576-byte limit"):
            broker.emit(encode_event(big))
        assert broker.log.last_cursor() == 2

    asyncio.run(scenario())
