"""Actor names within an engine's namespace, and the retry used for calls across a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

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
