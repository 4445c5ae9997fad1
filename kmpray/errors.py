"""The one exception hierarchy of kmpray."""

from __future__ import annotations


class KmprayError(Exception):
    """Root of every error kmpray raises on purpose."""


class InvalidParameters(KmprayError):
    """A request the engine will not accept; ``enqueue`` turns it into REJECTED_INVALID_PARAMS."""


class RejectedByPolicy(KmprayError):
    """The platform profile or admission control refuses the request (REJECTED_OS_POLICY)."""


class WorkerNotRegistered(InvalidParameters):
    """A worker name that was never registered with the engine."""


class EngineUnavailable(KmprayError):
    """The engine's actors could not be reached in time."""


class VirtualTimeOnly(KmprayError):
    """``advance_time`` was called on an engine that runs on the real clock."""
