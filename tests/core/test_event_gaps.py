"""A subscriber slower than the event log's retention: the completions trimmed before it
read them were skipped silently ("nothing is dropped silently", DESIGN §4). The log keeps
the newest trimmed completion's cursor (kmpray/event_log.py ``trimmed_to``, stored), and a
subscription that jumps over it says so (``missed``, and a warning)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from kmpray import TaskCompletionEvent, TaskProgressEvent
from kmpray.client import subscription
from kmpray.client.subscription import Subscription
from kmpray.event_codec import encode_event
from kmpray.event_log import MemoryEventLog, SqliteEventLog
from tests.standins import Answer


def _done(i: int) -> bytes:
    return encode_event(TaskCompletionEvent(task_name="W", success=True, message=None, task_id=f"t{i}"))


def _progress(i: int) -> bytes:
    return encode_event(TaskProgressEvent(task_id=f"t{i}", task_name="W", progress=50))


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_the_log_keeps_the_newest_trimmed_completion_across_a_reopen(tmp_path: Path, kind: str) -> None:
    def opened() -> Any:
        return SqliteEventLog(tmp_path / "events.db") if kind == "sqlite" else log

    log: Any = SqliteEventLog(tmp_path / "events.db") if kind == "sqlite" else MemoryEventLog()
    assert log.trimmed_to() == 0
    log.append([_done(1), _progress(2), _done(3), _done(4), _progress(5), _done(6)],
               progress=[False, True, False, False, True, False])
    log.trim(3, progress=True)  # progress rows: never what a reader is told it missed
    assert log.trimmed_to() == 0
    log.trim(2)  # completions 1 and 3 go; 4 and 6 stay
    assert log.trimmed_to() == 3 and [c for c, _b in log.read(0, 10)] == [2, 4, 5, 6]
    if kind == "sqlite":
        log.close()
        log = opened()
        assert log.trimmed_to() == 3
        log.close()


class _Broker:
    """Answers ``bounds`` as the EventBroker does: (first, last, newest completion trimmed)."""

    def __init__(self, trimmed: int) -> None:
        self.bounds = self
        self.trimmed = trimmed
        self.asked = 0

    def remote(self) -> tuple[int, int, int]:
        self.asked += 1
        return (self.trimmed + 1, 10_000, self.trimmed)


def test_a_subscription_that_jumps_over_trimmed_completions_says_so(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(subscription, "_asked", lambda make: make())
    broker = _Broker(trimmed=5000)
    sub = Subscription(broker, 100)
    with caplog.at_level(logging.WARNING, logger="kmpray.client"):
        sub._take([(101, _done(101)), (102, _done(102))], 100)  # no jump: nothing asked
        assert broker.asked == 0 and sub.missed == []
        sub._take([(5001, _done(5001))], 102)  # a jump over cursor 5000, a trimmed completion
        assert sub.missed == [(102, 5000)]
        sub._take([(5010, _done(5010))], 5001)  # a jump over trimmed progress rows only
        sub._take([(7, _done(7))], 0)  # a first read from cursor 0: since=0 asked for what is kept
    assert sub.missed == [(102, 5000)] and broker.asked == 2
    said = [r.getMessage() for r in caplog.records]
    assert said == ["event subscription at cursor 102: completion events up to cursor 5000 were trimmed "
                    "(EngineConfig.event_retention) before it read them; it goes on at cursor 5001"]
    got = [sub.get(timeout_s=0) for _ in range(5)]  # every row read is handed out, in order
    assert [e.task_id for e in got] == ["t101", "t102", "t5001", "t5010", "t7"]  # type: ignore[union-attr]


def test_the_one_rule_for_a_read_that_jumped_over_trimmed_completions() -> None:
    """Shared by a Subscription and the broker's push to a subscriber actor."""
    from kmpray.event_log import jumped_trimmed

    assert jumped_trimmed(102, 5001, 5000)  # the newest trimmed completion lies in the jump
    assert not jumped_trimmed(102, 103, 0)  # nothing ever trimmed
    assert not jumped_trimmed(5001, 5010, 5000)  # behind the reader: progress rows trimmed only
    assert not jumped_trimmed(102, 104, 9000)  # past the first row read: a trim after the read
    assert not jumped_trimmed(0, 7, 5)  # since=0 asks for what is retained


def test_async_iteration_asks_about_a_jump_without_blocking_its_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``async for`` over a subscription asked the broker about a jump with a blocking
    ``ray.get`` (``_asked``) on the caller's event loop; it awaits the call now."""
    import asyncio

    monkeypatch.setattr(subscription, "_require_ray", lambda: None)
    monkeypatch.setattr(subscription, "_asked", lambda make: pytest.fail("a blocking call on the loop"))

    class _AsyncBroker:
        def __init__(self) -> None:
            self.poll = self.bounds = self
            self.polls = [[(101, _done(101))], [(5001, _done(5001))]]

        def remote(self, *args: Any) -> Answer:
            if args:  # poll(after, limit, timeout)
                return Answer(self.polls.pop(0) if self.polls else [])
            return Answer((5001, 5001, 5000))  # bounds()

    sub = Subscription(_AsyncBroker(), 100)

    async def read() -> list[str | None]:
        got = []
        async for event in sub:
            got.append(event.task_id)
            if len(got) == 2:
                break
        return got

    assert asyncio.run(read()) == ["t101", "t5001"] and sub.missed == [(101, 5000)]
