"""Concurrent enqueue() calls share messages (kmpray/client/coalesce.py), without Ray: a fake
send that the test holds open decides exactly which calls pile up behind which."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from kmpray.client import coalesce
from kmpray.client.coalesce import AsyncCoalescer, Coalescer
from tests.forked import in_a_forked_child

Items = list[dict[str, Any]]


def _until(check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)


class HeldSend:
    """Records every message; the first one is held until ``release`` is set."""

    def __init__(self, fail_first: bool = False) -> None:
        self.messages: list[list[str]] = []
        self.release = threading.Event()
        self.fail_first = fail_first

    def __call__(self, items: Items) -> list[tuple[str, str | None]]:
        self.messages.append([i["id"] for i in items])
        if len(self.messages) == 1:
            assert self.release.wait(10)
            if self.fail_first:
                raise ConnectionError("scheduler gone")
        return [("SUCCESS", f"for {i['id']}") for i in items]


@pytest.fixture
def one_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """One message in flight at a time: the grouping itself, step by step."""
    monkeypatch.setattr(coalesce, "MAX_IN_FLIGHT", 1)


def _threads(c: Coalescer, ids: list[str], out: dict[str, Any]) -> list[threading.Thread]:
    def call(i: str) -> None:
        try:
            out[i] = c.submit({"id": i})
        except Exception as exc:  # recorded for the assertions
            out[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    return threads


def test_a_lone_caller_sends_its_own_item_at_once() -> None:
    send = HeldSend()
    send.release.set()
    c = Coalescer(send)
    assert [c.submit({"id": f"t{i}"}) for i in range(3)] == [("SUCCESS", f"for t{i}") for i in range(3)]
    assert send.messages == [["t0"], ["t1"], ["t2"]]


def test_callers_arriving_during_a_call_share_the_next_message_in_arrival_order(one_in_flight: None) -> None:
    send = HeldSend()
    c = Coalescer(send)
    out: dict[str, Any] = {}
    first = _threads(c, ["lead"], out)
    _until(lambda: len(send.messages) == 1)
    later = []
    for i in range(7):  # one at a time, so the arrival order is known
        later += _threads(c, [f"f{i}"], out)
        _until(lambda n=i: len(c._queue) == n + 1)
    send.release.set()
    for t in first + later:
        t.join(10)
    assert send.messages == [["lead"], [f"f{i}" for i in range(7)]]
    assert out == {i: ("SUCCESS", f"for {i}") for i in ["lead", *(f"f{i}" for i in range(7))]}


def test_a_failed_message_fails_only_its_own_group(one_in_flight: None) -> None:
    send = HeldSend(fail_first=True)
    c = Coalescer(send)
    out: dict[str, Any] = {}
    threads = _threads(c, ["lead"], out)
    _until(lambda: len(send.messages) == 1)
    threads += _threads(c, ["a", "b"], out)
    _until(lambda: len(c._queue) == 2)
    send.release.set()
    for t in threads:
        t.join(10)
    assert isinstance(out["lead"], ConnectionError)
    assert out["a"] == ("SUCCESS", "for a") and out["b"] == ("SUCCESS", "for b")
    assert send.messages[1] in (["a", "b"], ["b", "a"])


def test_a_group_is_capped_and_always_holds_its_leaders_item(
    monkeypatch: pytest.MonkeyPatch, one_in_flight: None
) -> None:
    monkeypatch.setattr(coalesce, "MAX_GROUP", 2)
    send = HeldSend()
    c = Coalescer(send)
    out: dict[str, Any] = {}
    threads = _threads(c, ["lead"], out)
    _until(lambda: len(send.messages) == 1)
    for i in range(5):
        threads += _threads(c, [f"f{i}"], out)
        _until(lambda n=i: len(c._queue) == n + 1)
    send.release.set()
    for t in threads:
        t.join(10)
    assert len(out) == 6 and all(v == ("SUCCESS", f"for {k}") for k, v in out.items())
    assert send.messages[0] == ["lead"]
    assert all(1 <= len(m) <= 3 for m in send.messages[1:])  # the cap, plus at most the leader's own
    assert sorted(i for m in send.messages[1:] for i in m) == [f"f{i}" for i in range(5)]


def test_a_short_answer_is_an_error_for_every_caller_not_a_wrong_answer() -> None:
    c = Coalescer(lambda items: [("SUCCESS", None)] * (len(items) - 1))
    with pytest.raises(RuntimeError, match="answered 0 of 1 items"):
        c.submit({"id": "x"})


def test_an_interrupted_leader_tells_its_followers_plainly() -> None:
    error = coalesce._shareable(KeyboardInterrupt())
    assert isinstance(error, RuntimeError) and "interrupted (KeyboardInterrupt)" in str(error)
    plain = ValueError("x")
    assert coalesce._shareable(plain) is plain


def test_async_callers_share_messages_and_a_cancelled_leader_leaves_its_group_answered(
    one_in_flight: None,
) -> None:
    messages: list[list[str]] = []

    async def main() -> dict[str, Any]:
        gate = asyncio.Event()

        async def send(items: Items) -> list[tuple[str, str | None]]:
            messages.append([i["id"] for i in items])
            if items[0]["id"].startswith("lead"):  # a leader's message waits for the gate
                await gate.wait()
            return [("SUCCESS", i["id"]) for i in items]

        c = AsyncCoalescer(send)
        lead = asyncio.ensure_future(c.submit({"id": "lead"}))
        await asyncio.sleep(0)  # the leader's message goes out
        followers = [asyncio.ensure_future(c.submit({"id": f"f{i}"})) for i in range(4)]
        await asyncio.sleep(0)
        gate.set()
        out = {"lead": await lead, **{f"f{i}": await f for i, f in enumerate(followers)}}
        # a leader cancelled while its message is out: its followers still get their answers
        gate.clear()
        lead2 = asyncio.ensure_future(c.submit({"id": "lead2"}))
        await asyncio.sleep(0)
        tail = [asyncio.ensure_future(c.submit({"id": f"g{i}"})) for i in range(2)]
        await asyncio.sleep(0)
        lead2.cancel()
        gate.set()
        out.update({f"g{i}": await g for i, g in enumerate(tail)})
        assert lead2.cancelled()
        return out

    out = asyncio.run(asyncio.wait_for(main(), 10))
    assert messages[:2] == [["lead"], ["f0", "f1", "f2", "f3"]]
    assert out == {k: ("SUCCESS", k) for k in ["lead", "f0", "f1", "f2", "f3", "g0", "g1"]}
    assert ["g0", "g1"] in messages


def test_two_messages_go_at_once_and_the_next_callers_group_behind_them() -> None:
    """MAX_IN_FLIGHT (2): a second caller does not wait for the first one's answer; the
    callers after them pile up and go together once a message is answered."""
    assert coalesce.MAX_IN_FLIGHT == 2
    gates = [threading.Event(), threading.Event()]
    messages: list[list[str]] = []

    def send(items: Items) -> list[tuple[str, str | None]]:
        k = len(messages)
        messages.append([i["id"] for i in items])
        if k < 2:
            assert gates[k].wait(10)
        return [("SUCCESS", i["id"]) for i in items]

    c = Coalescer(send)
    out: dict[str, Any] = {}
    threads = _threads(c, ["a"], out)
    _until(lambda: len(messages) == 1)
    threads += _threads(c, ["b"], out)
    _until(lambda: len(messages) == 2)  # sent while "a" is still out
    for i in range(3):
        threads += _threads(c, [f"f{i}"], out)
        _until(lambda n=i: len(c._queue) == n + 1)
    gates[1].set()  # "b" answered: its slot takes everyone waiting
    _until(lambda: len(messages) == 3)
    gates[0].set()
    for t in threads:
        t.join(10)
    assert messages == [["a"], ["b"], ["f0", "f1", "f2"]]
    assert out == {k: ("SUCCESS", k) for k in ["a", "b", "f0", "f1", "f2"]}


def test_many_threads_through_two_slots_each_get_their_own_answer_once() -> None:
    """A slot already in a group on its way never leads a group of its own (it would not
    be in the queue any more), however the two slots free up."""
    sent: list[str] = []
    lock = threading.Lock()

    def send(items: Items) -> list[tuple[str, str | None]]:
        time.sleep(0.0005 * (len(items) % 3))  # answers in varying order
        with lock:
            sent.extend(i["id"] for i in items)
        return [("SUCCESS", i["id"]) for i in items]

    c = Coalescer(send)
    out: dict[str, Any] = {}
    errors: list[BaseException] = []

    def caller(t: int) -> None:
        for i in range(50):
            try:
                out[f"{t}-{i}"] = c.submit({"id": f"{t}-{i}"})
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert errors == []
    assert out == {f"{t}-{i}": ("SUCCESS", f"{t}-{i}") for t in range(16) for i in range(50)}
    assert sorted(sent) == sorted(out)  # each item sent exactly once


def test_a_gather_of_many_async_calls_wakes_each_caller_about_once() -> None:
    """Each waiting caller has its own wake-up: a settled message wakes its own group and
    the next leader, not every waiter (that was quadratic: 100,000 calls took 15 s)."""
    n = 5_000
    futures = 0

    async def main() -> list[tuple[str, str | None]]:
        nonlocal futures
        loop = asyncio.get_running_loop()
        make = loop.create_future

        def counted() -> asyncio.Future[Any]:
            nonlocal futures
            futures += 1
            return make()

        loop.create_future = counted  # type: ignore[method-assign]

        async def send(items: Items) -> list[tuple[str, str | None]]:
            await asyncio.sleep(0.001)
            return [("SUCCESS", i["id"]) for i in items]

        c = AsyncCoalescer(send)
        return await asyncio.gather(*(c.submit({"id": f"t{i}"}) for i in range(n)))

    out = asyncio.run(asyncio.wait_for(main(), 30))
    assert out == [("SUCCESS", f"t{i}") for i in range(n)]
    assert futures <= 2 * n  # the old shared event made one per waiter per answer: ~3x n here


def test_an_async_caller_cancelled_before_its_item_went_is_never_sent_and_the_next_one_leads() -> None:
    messages: list[list[str]] = []

    async def main() -> dict[str, Any]:
        gates: list[asyncio.Future[None]] = []

        async def send(items: Items) -> list[tuple[str, str | None]]:
            messages.append([i["id"] for i in items])
            gates.append(asyncio.get_running_loop().create_future())
            await gates[-1]
            return [("SUCCESS", i["id"]) for i in items]

        c = AsyncCoalescer(send)
        a, b = asyncio.ensure_future(c.submit({"id": "a"})), asyncio.ensure_future(c.submit({"id": "b"}))
        for _ in range(5):
            await asyncio.sleep(0)
        assert messages == [["a"], ["b"]]  # both message slots taken: the next callers wait
        waiting = asyncio.ensure_future(c.submit({"id": "w"}))
        last = asyncio.ensure_future(c.submit({"id": "d"}))
        await asyncio.sleep(0)
        w_slot = c._queue[0]
        gates[0].set_result(None)  # "a" answered: "w", the oldest waiting, is woken to lead ...
        for _ in range(20):
            if w_slot.waiter is not None and w_slot.waiter.done():
                break
            await asyncio.sleep(0)
        assert w_slot.waiter is not None and w_slot.waiter.done() and not w_slot.taken
        waiting.cancel()  # ... and cancelled before it ran: "d" must lead instead
        for _ in range(20):
            if len(gates) == 3:
                break
            await asyncio.sleep(0)
        for gate in gates[1:]:
            gate.set_result(None)
        out = {"a": await a, "b": await b, "d": await last}
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return out

    out = asyncio.run(asyncio.wait_for(main(), 10))
    assert out == {k: ("SUCCESS", k) for k in "abd"}
    assert messages == [["a"], ["b"], ["d"]]  # the cancelled caller's item never went


def test_waiting_threads_are_each_woken_about_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread waits on a condition of its own: an answer wakes its group and the next
    leader, not every waiting thread (one shared condition woke them all at each answer)."""
    wakeups = 0
    lock = threading.Lock()

    class Counted(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            nonlocal wakeups
            woke = super().wait(timeout)
            with lock:
                wakeups += 1
            return woke

    monkeypatch.setattr(coalesce.threading, "Condition", Counted)

    def send(items: Items) -> list[tuple[str, str | None]]:
        time.sleep(0.001)
        return [("SUCCESS", i["id"]) for i in items]

    c = Coalescer(send)
    threads, per = 16, 50
    out: dict[str, Any] = {}
    workers = [threading.Thread(target=lambda t=t: out.update(
        {f"{t}-{i}": c.submit({"id": f"{t}-{i}"}) for i in range(per)})) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert out == {k: ("SUCCESS", k) for k in (f"{t}-{i}" for t in range(threads) for i in range(per))}
    assert wakeups <= threads * per * 3 // 2, wakeups  # ~1 per call; the shared condition: ~2.5


def test_a_child_forked_while_calls_are_in_flight_sends_its_own() -> None:
    """A process forked while its threads had enqueue calls in flight (a notebook's Pool
    started meanwhile): the child counted the parent's calls as its own, which no one in
    the child would ever answer, and its first enqueue() waited for good."""
    import os

    release = threading.Event()
    sent: list[list[Any]] = []

    def send(items: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
        sent.append(items)
        if os.getpid() == parent:
            release.wait(30)  # the parent's calls stay in flight across the fork
        return [("SUCCESS", None)] * len(items)

    parent = os.getpid()
    group = Coalescer(send)
    callers = [threading.Thread(target=group.submit, args=({"id": f"p{i}"},)) for i in range(4)]
    for t in callers:
        t.start()
    deadline = time.monotonic() + 10
    while group._in_flight < coalesce.MAX_IN_FLIGHT and time.monotonic() < deadline:
        time.sleep(0.01)
    assert group._in_flight == coalesce.MAX_IN_FLIGHT
    try:
        answered = in_a_forked_child(lambda: group.submit({"id": "child"})[0].encode(), timeout_s=20)
    finally:
        release.set()
        for t in callers:
            t.join(timeout=30)
    assert answered == b"SUCCESS"
    # the parent's calls, each sent once here (the child's went in the child's own memory)
    assert sorted(i["id"] for items in sent for i in items) == ["p0", "p1", "p2", "p3"]


def test_a_lone_async_caller_sends_in_its_own_task_and_frees_its_slot_however_it_ends(
    one_in_flight: None,
) -> None:
    """A caller alone awaits its own message: no task, shield and done-callback hop (two
    turns of the event loop instead of five per call; a caller awaiting one enqueue_async
    after another: 130 µs of CPU a call, 85 after). Its error is its own, and a cancel or a
    failure frees the message slot for the next caller (session 46)."""
    tasks: list[object] = []

    async def main() -> dict[str, Any]:
        gate = asyncio.Event()

        async def send(items: Items) -> list[tuple[str, str | None]]:
            tasks.append(asyncio.current_task())
            if items[0]["id"] == "boom":
                raise ConnectionError("scheduler gone")
            if items[0]["id"] == "held":
                await gate.wait()
            return [("SUCCESS", i["id"]) for i in items]

        c = AsyncCoalescer(send)
        out: dict[str, Any] = {"one": await c.submit({"id": "one"})}
        assert tasks == [asyncio.current_task()]  # sent from the caller's own task
        with pytest.raises(ConnectionError):
            await c.submit({"id": "boom"})
        out["after boom"] = await c.submit({"id": "after boom"})  # the slot was freed
        held = asyncio.ensure_future(c.submit({"id": "held"}))
        await asyncio.sleep(0)
        behind = asyncio.ensure_future(c.submit({"id": "behind"}))  # waits: one in flight
        await asyncio.sleep(0)
        assert not behind.done()
        held.cancel()
        out["behind"] = await behind  # led once the cancelled one let go of the slot
        assert held.cancelled() and c._in_flight == 0
        return out

    out = asyncio.run(asyncio.wait_for(main(), 10))
    assert out == {"one": ("SUCCESS", "one"), "after boom": ("SUCCESS", "after boom"),
                   "behind": ("SUCCESS", "behind")}
