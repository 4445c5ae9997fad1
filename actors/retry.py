"""Calls across actor restarts: one retry schedule for the actors and the client facade.

A restarting actor answers ``ActorUnavailableError`` (or ``RayActorError``) for a while;
every caller waits and asks again on the same schedule: 50 ms, doubling, at most 1 s
apart, within the caller's deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from ray.exceptions import ActorUnavailableError, RayActorError

from kmpray.errors import KmprayError
from kmpray.timing import RETRY_FIRST_DELAY_S, RETRY_MAX_DELAY_S

from .names import named

TRANSIENT = (ActorUnavailableError, RayActorError)
FIRST_DELAY_S, MAX_DELAY_S = RETRY_FIRST_DELAY_S, RETRY_MAX_DELAY_S

T = TypeVar("T")
log = logging.getLogger("kmpray")


def delays(first_s: float = FIRST_DELAY_S) -> Iterator[float]:
    """The pauses between attempts: ``first_s``, doubling, capped at ``MAX_DELAY_S``."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * 2, MAX_DELAY_S)


async def call_with_retry(
    make_call: Callable[[], Awaitable[T]], timeout_s: float = 60.0, first_delay_s: float = FIRST_DELAY_S
) -> T:
    """Await an actor call, retrying while the actor restarts (TRANSIENT errors)."""
    deadline = time.monotonic() + timeout_s
    for delay in delays(first_delay_s):
        try:
            return await make_call()
        except TRANSIENT:
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def call_with_retry_sync(make_call: Callable[[], T], timeout_s: float = 60.0) -> T:
    """The same for a blocking caller (the client facade's sync methods)."""
    deadline = time.monotonic() + timeout_s
    for delay in delays():
        try:
            return make_call()
        except TRANSIENT:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


async def taken_back(name: str, namespace: str, method: str, *args: Any) -> Any:
    """After this actor's restart: what actor ``name`` holds for it (its ``method``), or
    None when there is nothing to take back (a fresh engine: that actor is not created
    yet) or it could not be had (logged; the caller goes on without)."""
    try:
        holder = named(name, namespace)
    except ValueError:
        return None
    try:
        return await call_with_retry(lambda: getattr(holder, method).remote(*args), timeout_s=60)
    except Exception:
        log.exception("could not take back %s from %s in %s", method, name, namespace)
        return None


def said(exc: BaseException) -> str | None:
    """What an error kmpray raised on purpose says (also when Ray carried it from another
    actor), to log as one line; None for anything else, whose traceback is worth logging."""
    cause = getattr(exc, "cause", exc)
    return str(cause) if isinstance(cause, KmprayError) else None
