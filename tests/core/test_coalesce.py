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
