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

    @classmethod
    def stopped(cls, namespace: str) -> EngineUnavailable:
        """What a client is told about a stopped engine (by its scheduler, or once it is gone)."""
        return cls(f"engine {namespace!r} was stopped (its scheduler is gone): connect() again")


class StoreWriteFailed(EngineUnavailable):
    """A scheduler could not write its store (a full disk, an I/O error). Nothing it could
    not store was acknowledged: enqueue calls in that write answer FAILED_UNKNOWN with this
    reason, and the scheduler restarts from its store, then serves again once it can write."""


class VirtualTimeOnly(KmprayError):
    """``advance_time`` was called on an engine that runs on the real clock."""


class DamagedRow(KmprayError, ValueError):
    """A stored row that is not one this version wrote: bad msgpack, a wrong shape or type,
    an unknown trigger kind, a value that fails validation. Moved to quarantine at restore."""


class StoreRefused(KmprayError):
    """A store file the engine will not open (not SQLite, damaged beyond its rows, or a
    schema from a newer kmpray). The message names the file and what to do."""
