"""Requests and the read models users get back: TaskRequest, TaskInfo, ChainInfo."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from pydantic import Field

from ._model import Frozen
from .constraints import Constraints
from .enums import InputMerger, TaskState
from .results import Result
from .triggers import Trigger


def _new_id() -> str:
    return str(uuid.uuid4())


class TaskRequest(Frozen):
    """One task of a chain step: ``TaskRequest("DownloadWorker", input='{"url": ...}')``."""

    worker_class_name: str
    input: str | None = None
    constraints: Constraints = Constraints()
    id: str = Field(default_factory=_new_id)
    input_merger: InputMerger = InputMerger.OVERWRITE
    _positional: ClassVar[tuple[str, ...]] = ("worker_class_name", "input", "constraints")


class WaitingFor(Frozen):
    """Why an unfinished task does not run yet: a kind, a sentence (``str()``), and details.
    The kinds and their details are listed in ``kmpray/waiting.py``: due_at, window,
    trigger, constraints, doze, prerequisites, worker, capacity."""

    kind: str
    message: str
    details: dict[str, Any] = {}

    def __str__(self) -> str:
        return self.message


class TaskInfo(Frozen):
    id: str
    worker_class_name: str
    state: TaskState
    run_attempt_count: int = 0
    run_count: int = 0
    result: Result | None = None
    progress: int | None = None
    next_run_at_ms: int | None = None
    chain_id: str | None = None
    trigger: Trigger | None = None
    constraints: Constraints = Constraints()
    created_at_ms: int = 0
    updated_at_ms: int = 0
    waiting_for: WaitingFor | None = None

    @property
    def is_finished(self) -> bool:
        return self.state.is_finished

    def __str__(self) -> str:
        """One line for a terminal (``print(scheduler.wait("h1"))``); ``repr`` keeps every field."""
        from .display import task_line

        return task_line(self)

    def _repr_html_(self) -> str:
        from .display import tasks_html

        return tasks_html([self])

    def table(self) -> str:
        """The task as a one-row text table (for terminals)."""
        from .display import tasks_text

        return tasks_text([self])


class ChainInfo(Frozen):
    id: str
    state: TaskState
    steps: list[list[TaskInfo]]

    @property
    def is_finished(self) -> bool:
        return self.state.is_finished

    def __str__(self) -> str:
        """The chain as a text table per step (as ``table()``); ``repr`` keeps every field."""
        from .display import chain_text

        return chain_text(self)

    def _repr_html_(self) -> str:
        from .display import chain_html

        return chain_html(self)

    def table(self) -> str:
        """The chain as a text table per step (for terminals)."""
        from .display import chain_text

        return chain_text(self)


class TaskList(list[TaskInfo]):
    """What ``list_tasks`` returns: a plain list that prints as a table (and renders as
    one in a notebook)."""

    def __str__(self) -> str:
        from .display import tasks_text

        return tasks_text(self)

    def _repr_html_(self) -> str:
        from .display import tasks_html

        return tasks_html(self)

