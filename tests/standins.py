"""Stand-ins for Ray's objects in tests that run without Ray: shared by the core and the
integration tests."""

from __future__ import annotations

from typing import Any


class Answer:
    """A stand-in for an actor call's ref: awaitable, answering ``value``."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Any:
        yield from []
        return self.value
