"""WorkerResult: what a worker's ``do_work`` returns, and how other returns are read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, NamedTuple, Union

from pydantic import (
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from ._model import Frozen, bytes_shown, one_line, trusted
from .millis import DurationMs


class Success(Frozen):
    kind: Literal["success"] = "success"
    message: str | None = None
    data: dict[str, Any] | None = None
    _positional: ClassVar[tuple[str, ...]] = ("message", "data")

    @model_serializer(mode="wrap")
    def _bytes_in_json(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        """In JSON (kmpray info, the dashboard) any bytes in ``data`` show as descriptors.
        (A field serializer would do, but it makes ``exclude_defaults`` keep ``data=None``.)"""
        if info.mode_is_json() and self.data and (shown := bytes_shown(self.data)) is not self.data:
            return handler(self.model_copy(update={"data": shown}))
        return handler(self)

    if TYPE_CHECKING:  # what Frozen.__init__ accepts, spelled out for type checkers
        def __init__(self, message: str | None = None, data: dict[str, Any] | None = None) -> None: ...


class Failure(Frozen):
    kind: Literal["failure"] = "failure"
    message: str
    should_retry: bool = False
    _positional: ClassVar[tuple[str, ...]] = ("message", "should_retry")

    if TYPE_CHECKING:
        def __init__(self, message: str, should_retry: bool = False) -> None: ...


class Retry(Frozen):
    kind: Literal["retry"] = "retry"
    reason: str | None = None
    delay_ms: DurationMs | None = None
    _positional: ClassVar[tuple[str, ...]] = ("reason", "delay_ms")

    if TYPE_CHECKING:
        def __init__(self, reason: str | None = None, delay_ms: int | None = None) -> None: ...


Result = Annotated[Union[Success, Failure, Retry], Field(discriminator="kind")]


class WorkerResult:
    """``WorkerResult.Success(data={...})``, ``WorkerResult.Failure("why")``, ``WorkerResult.Retry()``."""

    Success = Success
    Failure = Failure
    Retry = Retry


class GivenBack(NamedTuple):
    """Not a worker's result: its executor gives the run back uncalled, since its class
    could not be had (actors/worker_classes.py ``ClassMissing``). On the wire
    ``(GIVEN_BACK, why, None)``, which the scheduler re-queues, not counted as an attempt
    (``from_wire`` never reads it)."""

    why: str


GIVEN_BACK = "g"


def to_wire(result: Success | Failure | Retry | GivenBack) -> tuple[str, Any, Any]:
    """A compact, msgpack-able form for the executor -> scheduler hot path."""
    if isinstance(result, Success):
        return ("s", result.message, result.data)
    if isinstance(result, Failure):
        return ("f", result.message, result.should_retry)
    if isinstance(result, GivenBack):
        return (GIVEN_BACK, result.why, None)
    return ("r", result.reason, result.delay_ms)


def from_wire(wire: tuple[str, Any, Any] | list[Any]) -> Success | Failure | Retry:
    kind, a, b = wire
    if kind == "s":
        if a is None and b is None:  # a run with nothing to say (most): one shared instance
            return _EMPTY_SUCCESS
        return trusted(Success, {"kind": "success", "message": a, "data": b})  # type: ignore[no-any-return]
    if kind == "f":
        return trusted(Failure, {"kind": "failure", "message": str(a), "should_retry": bool(b)})  # type: ignore[no-any-return]
    if kind == "r":
        return trusted(Retry, {"kind": "retry", "reason": a, "delay_ms": b})  # type: ignore[no-any-return]
    raise ValueError(f"unknown result kind {kind!r}")


def to_row(result: Success | Failure | Retry) -> dict[str, Any]:
    """A result as stored: ``kind`` and the fields that differ from their defaults (what
    ``model_dump(exclude_defaults=True)`` gives, without pydantic on the finish path)."""
    if isinstance(result, Success):
        if result.message is None and result.data is None:  # most: no dict built and filtered
            return {"kind": "success"}
        row: dict[str, Any] = {"message": result.message, "data": result.data}
    elif isinstance(result, Failure):
        return {"message": result.message, "should_retry": True, "kind": "failure"} if result.should_retry \
            else {"message": result.message, "kind": "failure"}
    else:
        row = {"reason": result.reason, "delay_ms": result.delay_ms}
    row = {k: v for k, v in row.items() if v is not None}
    row["kind"] = result.kind
    return row


_TRUE = Success()
# What from_wire gives for ("s", None, None): the same as trusted() builds (every field set).
_EMPTY_SUCCESS: Success = trusted(Success, {"kind": "success", "message": None, "data": None})
_FALSE = Failure("Task failed")

# A result's message (an exception's text, a Retry's reason) and a progress message are
# clipped to this many characters where they are made: each is stored in the task's row,
# sent in every TaskInfo and event, and a worker raising with a whole response body in
# its exception once made a 20 MB row (its store grew 200 MB for five such tasks).
MAX_MESSAGE_CHARS = 8192


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def raised(exc: BaseException) -> Failure:
    """A run that raised: a retryable failure naming the exception (its text clipped). A
    pydantic ValidationError (``Retry(delay_ms=-5)`` in the worker) in one line naming the
    field, not pydantic's several lines and URL."""
    text = one_line(exc, exc.title, with_input=True) if isinstance(exc, ValidationError) else str(exc)
    return Failure(clip(f"{type(exc).__name__}: {text}"), should_retry=True)


def clipped(result: Success | Failure | Retry) -> Success | Failure | Retry:
    """``result`` with its message (a Retry: its reason) clipped to ``MAX_MESSAGE_CHARS``."""
    field = "reason" if isinstance(result, Retry) else "message"
    text = getattr(result, field)
    if text is None or len(text) <= MAX_MESSAGE_CHARS:
        return result
    return result.model_copy(update={field: clip(text)})


def to_result(value: object) -> Success | Failure | Retry:
    """Read a ``do_work`` return value: a WorkerResult, or a bool (True/False)."""
    if value is True:  # first: pydantic's isinstance on its models is a Python call
        return _TRUE  # frozen: one shared instance, not a validated model per run
    if value is False:
        return _FALSE
    if isinstance(value, (Success, Failure, Retry)):
        return value
    return Failure(
        f"do_work returned {type(value).__name__}; expected a WorkerResult or bool"
    )
