"""How the client facade reaches Ray: imported on first use, never at ``import kmpray``."""

from __future__ import annotations

from typing import Any

from ..errors import KmprayError


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
