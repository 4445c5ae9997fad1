"""Concurrent single calls share one actor message (client-side group commit).

``enqueue()`` from one caller at a time sends its item at once, as before. When callers
overlap (threads, coroutines of one event loop), the items of everyone who arrives while
a call is in flight go out together in the next ``enqueue_many`` message, and each
caller gets its own item's result: one actor round trip and one scheduler turn for the
group instead of one per caller. No caller waits for company (nothing lingers): a group
is only what piled up behind the calls in flight (at most MAX_IN_FLIGHT), so a lone caller
pays exactly one round trip and busy ones get batching that grows with the load. The scheduler applies a
group's items in arrival order, and each call's retry token covers its whole group.

The pattern is the leader/follower group commit of databases (MySQL's binlog group
commit, PostgreSQL's commit_delay without the delay): a caller that finds a free slot
leads; the others wait for a leader's answer, and one of those left over leads the next
group.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from .remote import let_go_in_forked_child

MAX_GROUP = 1_000  # items per message, like one enqueue_many call of a bulk producer
# Messages of one client in flight at once. One would halve what a few concurrent callers
# get through (each waits for its own group and the one ahead, so 4 callers behave like
# 2); two keep them pipelined, and under load the groups still grow.
MAX_IN_FLIGHT = 2

Send = Callable[[list[dict[str, Any]]], list[tuple[str, str | None]]]
SendAsync = Callable[[list[dict[str, Any]]], Awaitable[list[tuple[str, str | None]]]]


class _Slot:
    __slots__ = ("answer", "cond", "done", "error", "item", "taken", "waiter")

    def __init__(self, item: dict[str, Any]) -> None:
        self.item = item
        self.taken = False  # in a group on its way: its caller waits for that group's answer
        self.done = False
        self.answer: tuple[str, str | None] | None = None
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None  # AsyncCoalescer: what its caller awaits
        self.cond: threading.Condition | None = None  # Coalescer: what its thread waits on

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
    for slot in group:
        slot.taken = True
    return group


class Coalescer:
    """Thread-side: ``submit(item)`` from any thread; blocks until its answer is in. Each
    waiting thread waits on a condition of its own (over one shared lock), notified when
    its group is answered or when it is the oldest left to lead the next group: one
    wake-up per caller, where one shared condition woke every waiting thread at each
    answer (8 threads: ~58 µs of CPU per call in the coalescer with a 1 ms send)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._after_fork()
        let_go_in_forked_child(self)

    def _after_fork(self) -> None:
        """Empty (at the start, and in a child forked from this process: the parent's
        waiting threads and calls in flight are not there, and a child that counted them
        as its own waited for their answers for good)."""
        self._lock = threading.Lock()
        self._queue: deque[_Slot] = deque()  # not yet taken, oldest first
        self._in_flight = 0

    def submit(self, item: dict[str, Any]) -> tuple[str, str | None]:
        slot = _Slot(item)
        with self._lock:
            self._queue.append(slot)
            while not slot.done and (slot.taken or self._in_flight >= MAX_IN_FLIGHT):
                if slot.cond is None:
                    slot.cond = threading.Condition(self._lock)
                try:
                    slot.cond.wait()  # the leaders' calls are bounded (CALL_TIMEOUT_S), so is this
                except BaseException:  # interrupted while waiting (KeyboardInterrupt)
                    if not slot.taken:  # never sent: it never will be
                        self._queue.remove(slot)
                        self._notify_next()  # it may have been woken to lead: another leads instead
                    raise
            if slot.done:
                return slot.result()
            self._in_flight += 1
            group = _take(self._queue, slot)
        answers: list[tuple[str, str | None]] | None = None
        error: BaseException | None = None
        try:
            answers = self._send([s.item for s in group])
        except BaseException as exc:  # every caller of the group gets the call's error
            error = exc
        with self._lock:
            _settle(group, answers, _shareable(error))
            self._in_flight -= 1
            for done in group:
                if done.cond is not None:
                    done.cond.notify()
            self._notify_next()
        if error is not None and not isinstance(error, Exception):
            raise error  # the leader's own KeyboardInterrupt, not its followers'
        return slot.result()

    def _notify_next(self) -> None:
        """(Lock held.) The oldest thread still waiting to be sent leads the next group."""
        if self._in_flight < MAX_IN_FLIGHT:
            for waiting in self._queue:
                if waiting.cond is not None:
                    waiting.cond.notify()
                    return


class AsyncCoalescer:
    """The same for coroutines of one event loop (``enqueue_async``). The group's call runs
    as its own task: a leader cancelled while it is in flight leaves its group answered.

    Each waiting caller awaits a future of its own, woken when its group is answered or
    when it is the oldest left over as a message slot frees up: one wake-up per caller,
    not one per caller per message (``gather`` of 100,000 calls woke every waiter at each
    of ~100 answers: 15 s of CPU in this class alone, against ~0.1 s now)."""

    def __init__(self, send: SendAsync) -> None:
        self._send = send
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[_Slot] = deque()  # not yet taken, oldest first
        self._in_flight = 0

    async def submit(self, item: dict[str, Any]) -> tuple[str, str | None]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new loop (a notebook re-ran asyncio.run)
            if self._in_flight and self._loop is not None and not self._loop.is_closed():
                return (await self._send([item]))[0]  # another live loop is leading: go alone
            self._loop, self._queue, self._in_flight = loop, deque(), 0
        slot = _Slot(item)
        self._queue.append(slot)
        while not slot.done and (slot.taken or self._in_flight >= MAX_IN_FLIGHT):
            slot.waiter = loop.create_future()
            try:
                await slot.waiter
            except BaseException:  # cancelled while waiting
                if not slot.taken:  # never sent: it never will be
                    self._queue.remove(slot)
                    self._wake_next()  # it may have been woken to lead: another leads instead
                raise
            finally:
                slot.waiter = None
        if slot.done:
            return slot.result()
        self._in_flight += 1
        group = _take(self._queue, slot)
        if len(group) == 1:  # alone: its own call, awaited here (no task, shield and callback hop:
            # ~2 turns of the loop of a caller awaiting one enqueue_async after another)
            answers: Answers | None = None
            error: BaseException | None = None
            try:
                answers = await self._send([item])
            except BaseException as exc:  # cancelled too: its one slot, answered with it
                error = exc
                raise
            finally:
                _settle(group, answers, error)
                self._in_flight -= 1
                self._wake_next()
            return slot.result()
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
        self._in_flight -= 1
        for slot in group:
            _wake(slot)
        self._wake_next()

    def _wake_next(self) -> None:
        """The oldest caller still waiting to be sent leads the next group, if a slot is free."""
        if self._in_flight >= MAX_IN_FLIGHT:
            return
        for slot in self._queue:
            if _wake(slot):
                return


def _wake(slot: _Slot) -> bool:
    """Wake ``slot``'s waiting coroutine; False if none waits (or it was woken already)."""
    if slot.waiter is None or slot.waiter.done():
        return False
    slot.waiter.set_result(None)
    return True
