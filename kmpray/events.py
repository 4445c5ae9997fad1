"""Events: the frozen completion/progress records and the bus users emit and subscribe with."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Protocol, Union

from pydantic import Field, SerializationInfo, SerializerFunctionWrapHandler, model_serializer

from ._model import Frozen, bytes_shown
from .errors import KmprayError

if TYPE_CHECKING:
    from collections.abc import Callable


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class TaskCompletionEvent(Frozen):
    kind: Literal["completion"] = "completion"
    task_name: str
    success: bool
    message: str | None = None
    timestamp: int = Field(default_factory=_now_ms)
    task_id: str | None = None
    chain_id: str | None = None
    output_data: dict[str, Any] | None = None
    _positional: ClassVar[tuple[str, ...]] = ("task_name", "success", "message")

    @model_serializer(mode="wrap")
    def _bytes_in_json(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        """In JSON (kmpray events, the dashboard) any bytes in ``output_data`` show as descriptors."""
        data = self.output_data
        if info.mode_is_json() and data and (shown := bytes_shown(data)) is not data:
            return handler(self.model_copy(update={"output_data": shown}))
        return handler(self)


class TaskProgressEvent(Frozen):
    kind: Literal["progress"] = "progress"
    task_id: str
    task_name: str
    progress: Annotated[int, Field(ge=0, le=100)]
    message: str | None = None
    timestamp: int = Field(default_factory=_now_ms)
    _positional: ClassVar[tuple[str, ...]] = ("task_id", "task_name", "progress", "message")


Event = Annotated[Union[TaskCompletionEvent, TaskProgressEvent], Field(discriminator="kind")]


class EventBackend(Protocol):
    """What a connected bus talks to (the EventBroker actor, through the client)."""

    def emit(self, event: TaskCompletionEvent | TaskProgressEvent) -> None: ...

    def subscribe(
        self,
        since: int | None = None,
        callback: Callable[[Any], None] | None = None,
        actor: Any = None,
    ) -> Any: ...


class _BusProxy:
    """``kmpray.TaskEventBus``: the bus of the latest ``connect()``, or, inside worker
    code, of the engine running it. Bound by the client and by the executors."""

    def __init__(self) -> None:
        self._backend: EventBackend | None = None

    def _bind(self, backend: EventBackend | None) -> None:
        self._backend = backend

    def _release(self, backend: EventBackend) -> None:
        """Unbind ``backend`` (an engine shutting down), not another engine's bus."""
        if self._backend is backend:
            self._backend = None

    def _require(self) -> EventBackend:
        if self._backend is None:
            raise KmprayError("TaskEventBus is not connected: call kmpray.connect() first")
        return self._backend

    def emit(self, event: TaskCompletionEvent | TaskProgressEvent) -> None:
        if not isinstance(event, (TaskCompletionEvent, TaskProgressEvent)):
            raise TypeError(
                f"TaskEventBus.emit takes a TaskCompletionEvent or TaskProgressEvent, "
                f"got {type(event).__name__}"
            )
        self._require().emit(event)

    def subscribe(
        self,
        since: int | None = None,
        *,
        callback: Callable[[Any], None] | None = None,
        actor: Any = None,
    ) -> Any:
        return self._require().subscribe(since=since, callback=callback, actor=actor)


TaskEventBus = _BusProxy()

#: The engine whose worker code runs in this process (set by its executors and heavy
#: workers, through this module, as they bind TaskEventBus); None in a client.
#: ``kmpray.connect()`` there attaches to it, unless given another namespace.
engine_here: str | None = None


class _Default(str):
    """``connect()``'s default namespace: told apart from an explicit "kmpray" by identity."""


DEFAULT_NAMESPACE = _Default("kmpray")
