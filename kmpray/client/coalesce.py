"""Concurrent single calls share one actor message (client-side group commit).

``enqueue()`` from one caller at a time sends its item at once, as before. When callers
overlap (threads, coroutines of one event loop), the items of everyone who arrives while
a call is in flight go out together in the next ``enqueue_many`` message, and each
caller gets its own item's result: one actor round trip and one scheduler turn for the
group instead of one per caller. No caller waits for company (nothing lingers): a group
is only what piled up behind the call in flight, so a lone caller pays exactly one round
trip and a busy one gets batching that grows with the load. The scheduler applies a
group's items in arrival order, and each call's retry token covers its whole group.

The pattern is the leader/follower group commit of databases (MySQL's binlog group
commit, PostgreSQL's commit_delay without the delay): the first caller to find nothing
in flight leads; the others wait for the leader's answer, and one of those left over
leads the next group.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

MAX_GROUP = 1_000  # items per message, like one enqueue_many call of a bulk producer

Send = Callable[[list[dict[str, Any]]], list[tuple[str, str | None]]]
SendAsync = Callable[[list[dict[str, Any]]], Awaitable[list[tuple[str, str | None]]]]


class _Slot:
    __slots__ = ("answer", "done", "error", "item")

    def __init__(self, item: dict[str, Any]) -> None:
        self.item = item
        self.done = False
        self.answer: tuple[str, str | None] | None = None
        self.error: BaseException | None = None

    def result(self) -> tuple[str, str | None]:
        if self.error is not None:
            raise self.error
        assert self.answer is not None
        return self.answer


Answers = list[tuple[str, str | None]]


def _settle(group: list[_Slot], answers: Answers | None, error: BaseException | None) -> None:
    """Each slot its own answer (the scheduler answers a group's items in order), or the error."""
    if error is None and (answers is None or len(answers) != len(group)):
        error = RuntimeError(f"the scheduler answered {len(answers or [])} of {len(group)} items")
    for i, slot in enumerate(group):
        if error is None:
            assert answers is not None
            result, reason = answers[i]
            slot.answer = (result, reason)
        else:
            slot.error = error
        slot.done = True


def _shareable(error: BaseException | None) -> BaseException | None:
    """What the group's other callers get for the leader's error: the error itself, or for
    an interrupt of the leader's thread (KeyboardInterrupt) a plain error saying so."""
    if error is None or isinstance(error, Exception):
        return error
    return RuntimeError(f"the call carrying this enqueue was interrupted ({type(error).__name__}); "
                        "its items may or may not have been applied: get_task_info() tells")


def _take(queue: deque[_Slot], own: _Slot) -> list[_Slot]:
    """The next group, oldest first, always holding the leader's own item."""
    group = [queue.popleft() for _ in range(min(len(queue), MAX_GROUP))]
    if own not in group:  # more than MAX_GROUP ahead of it: it goes too
        queue.remove(own)
        group.append(own)
    return group


class Coalescer:
    """Thread-side: ``submit(item)`` from any thread; blocks until its answer is in."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._cv = threading.Condition()
        self._queue: deque[_Slot] = deque()
        self._busy = False

    def submit(self, item: dict[str, Any]) -> tuple[str, str | None]:
        slot = _Slot(item)
        with self._cv:
            self._queue.append(slot)
            while self._busy and not slot.done:
                self._cv.wait()  # the leader's call is bounded (CALL_TIMEOUT_S), so is this
            if slot.done:
                return slot.result()
            self._busy = True
            group = _take(self._queue, slot)
        answers: list[tuple[str, str | None]] | None = None
        error: BaseException | None = None
        try:
            answers = self._send([s.item for s in group])
        except BaseException as exc:  # every caller of the group gets the call's error
            error = exc
        with self._cv:
            _settle(group, answers, _shareable(error))
            self._busy = False
            self._cv.notify_all()
        if error is not None and not isinstance(error, Exception):
            raise error  # the leader's own KeyboardInterrupt, not its followers'
        return slot.result()


class AsyncCoalescer:
    """The same for coroutines of one event loop (``enqueue_async``). The group's call runs
    as its own task: a leader cancelled while it is in flight leaves its group answered."""

    def __init__(self, send: SendAsync) -> None:
        self._send = send
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[_Slot] = deque()
        self._busy = False
        self._turn = asyncio.Event()

    async def submit(self, item: dict[str, Any]) -> tuple[str, str | None]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new loop (a notebook re-ran asyncio.run)
            if self._busy and self._loop is not None and not self._loop.is_closed():
                return (await self._send([item]))[0]  # another live loop is leading: go alone
            self._loop, self._queue, self._busy, self._turn = loop, deque(), False, asyncio.Event()
        slot = _Slot(item)
        self._queue.append(slot)
        while self._busy and not slot.done:
            await self._turn.wait()
        if slot.done:
            return slot.result()
        self._busy = True
        group = _take(self._queue, slot)
        call = asyncio.ensure_future(self._send([s.item for s in group]))
        call.add_done_callback(lambda done: self._settled(group, done))
        await asyncio.shield(call)  # raises the call's error; answers every slot either way
        return slot.result()

    def _settled(self, group: list[_Slot], call: asyncio.Future[Any]) -> None:
        if call.cancelled():
            _settle(group, None, asyncio.CancelledError())
        else:
            error = call.exception()
            _settle(group, None if error else call.result(), _shareable(error))
        self._busy = False
        turn, self._turn = self._turn, asyncio.Event()
        turn.set()
