"""How the client facade reaches Ray: imported on first use, never at ``import kmpray``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from ..errors import KmprayError
from ..protocol import RETRY_MARK


def _ray() -> Any:
    import ray

    return ray


def _unwrap(exc: BaseException) -> BaseException:
    """A remote KmprayError/ValueError comes back as itself, not wrapped in RayTaskError."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, (KmprayError, ValueError, TypeError)):
        return cause
    return exc


async def _await(ref: Any) -> Any:
    return await ref


def _tokens(token: bool) -> Iterator[tuple[str, ...]]:
    """The request token each try of one call carries (nothing if ``token`` is False): the
    first try a fresh token, every retry the same token marked as a retry. The scheduler
    looks stored answers up only for retries: a first try cannot have been applied."""
    if not token:
        while True:
            yield ()
    first = uuid.uuid4().hex
    yield (first,)
    while True:
        yield (first + RETRY_MARK,)
