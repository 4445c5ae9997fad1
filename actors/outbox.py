"""Outbox: batching to one receiver with one call in flight (the transport under every
report, event and chain message between actors)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

from .retry import call_with_retry, said

T = TypeVar("T")

log = logging.getLogger("kmpray.outbox")


class Outbox(Generic[T]):
    """Items for one receiver: one call in flight, in order; items added meanwhile ride the
    next call, so batches grow with load. A failed call keeps its batch for the next try.

    ``call(batch)`` issues the actor call and returns its ref. ``eager`` (or when it
    returns true): the first call leaves at once from ``add`` (on a chain's critical path,
    waiting for the event loop's next turn costs ~0.2 ms); otherwise on the next turn,
    after the caller's current work (issuing a call costs ~0.2 ms of the caller's CPU,
    and under load more items join the batch), or ``linger_s`` later. With ``linger_s``
    there is at most one call per ``linger_s`` under steady load too (the next batch waits
    out the rest of the period after the previous call was issued).
    ``on_reply(answer, batch)`` runs after each call that succeeded.
    """

    def __init__(
        self,
        call: Callable[[list[T]], Awaitable[Any]],
        what: str,
        on_reply: Callable[[Any, list[T]], None] | None = None,
        timeout_s: float = 120.0,
        retry_s: float = 1.0,
        eager: bool | Callable[[], bool] = True,
        linger_s: float = 0.0,
    ) -> None:
        self._call = call
        self._eager: Callable[[], bool] = eager if callable(eager) else (lambda: eager)
        self._linger_s = linger_s
        self._task: asyncio.Future[None] | None = None  # held: the loop keeps only weak refs to tasks
        self._what = what
        self._on_reply = on_reply
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._items: list[T] = []
        self._running = False

    @property
    def busy(self) -> bool:
        """Items wait, or a call is in flight."""
        return self._running or bool(self._items)

    async def delivered(self, timeout_s: float) -> bool:
        """Until everything added so far has been delivered (nothing waits, no call in
        flight), at most ``timeout_s``; whether it was."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        while self.busy and self._task is not None and (left := until - loop.time()) > 0:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), left)
            except TimeoutError:
                break
        return not self.busy

    def add(self, items: Iterable[T]) -> None:
        self._items.extend(items)
        if self._items and not self._running:
            self._running = True
            if self._eager():
                batch, self._items = self._items, []
                self._task = asyncio.ensure_future(self._drain(batch, self._issue(batch)))
            else:
                self._task = asyncio.ensure_future(self._drain([], None))

    def _issue(self, batch: list[T]) -> Awaitable[Any] | None:
        try:
            return self._call(batch)
        except Exception:  # e.g. the receiver is being re-created: retried in _drain
            return None

    async def _drain(self, batch: list[T], first: Awaitable[Any] | None) -> None:
        try:
            if not batch:  # not eager: what was added until this turn (or the linger's end)
                if self._linger_s:
                    await asyncio.sleep(self._linger_s)
                batch, self._items = self._items, []
            loop = asyncio.get_running_loop()
            while True:
                issued_at = loop.time()
                issued = [first] if first is not None else []
                try:
                    reply = await call_with_retry(
                        lambda b=batch, i=issued: i.pop() if i else self._call(b), self._timeout_s
                    )
                    if self._on_reply is not None:
                        self._on_reply(reply, batch)
                except Exception as exc:
                    if (why := said(exc)) is not None:  # the receiver saying why (its disk is full)
                        log.warning("%s: %d items not delivered (%s); keeping them for the next try",
                                    self._what, len(batch), why)
                    else:
                        log.exception("%s: %d items not delivered; keeping them for the next try",
                                      self._what, len(batch))
                    self._items[:0] = batch
                    await asyncio.sleep(self._retry_s)
                if not self._items:
                    return
                if self._linger_s and (wait := issued_at + self._linger_s - loop.time()) > 0:
                    await asyncio.sleep(wait)  # under steady load too: at most one call per linger
                batch, self._items = self._items, []
                first = self._issue(batch)
        finally:
            self._running = False
