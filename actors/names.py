"""Actor names within an engine's namespace, and the retry used for calls across a restart."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

SCHEDULER = "kmpray.scheduler"
BROKER = "kmpray.broker"
REGISTRY = "kmpray.registry"
EXECUTOR = "kmpray.executor.{}"
HEAVY = "kmpray.heavy.{}"
ORACLE = "kmpray.oracle"
CHAIN = "kmpray.chain.{}"

TRANSIENT = (ActorUnavailableError, RayActorError)

T = TypeVar("T")


def lookup(name: str, namespace: str, timeout_s: float = 30.0) -> Any:
    """Resolve a named actor, waiting while it is being (re)created."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get_actor(name, namespace=namespace)
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def call_with_retry(
    make_call: Callable[[], Awaitable[T]], timeout_s: float = 60.0, first_delay_s: float = 0.05
) -> T:
    """Await an actor call, retrying while the actor restarts (ActorUnavailableError)."""
    deadline = time.monotonic() + timeout_s
    delay = first_delay_s
    while True:
        try:
            return await make_call()
        except TRANSIENT:
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


log = logging.getLogger("kmpray.outbox")


class Outbox(Generic[T]):
    """Items for one receiver: one call in flight, in order; items added meanwhile ride the
    next call, so batches grow with load. A failed call keeps its batch for the next try."""

    def __init__(self, send: Callable[[list[T]], Awaitable[object]], what: str, retry_s: float = 1.0) -> None:
        self._send = send
        self._what = what
        self._retry_s = retry_s
        self._items: list[T] = []
        self._running = False

    def add(self, items: Iterable[T]) -> None:
        self._items.extend(items)
        if self._items and not self._running:
            self._running = True
            asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            while self._items:
                batch, self._items = self._items, []
                try:
                    await self._send(batch)
                except Exception:
                    log.exception("%s: %d items not delivered; keeping them for the next try", self._what, len(batch))
                    self._items[:0] = batch
                    await asyncio.sleep(self._retry_s)
        finally:
            self._running = False
