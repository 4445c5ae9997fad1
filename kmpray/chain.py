"""Chains: the immutable builder users write (``scheduler.begin_with(...).then(...)``).

A chain is a list of steps; a step is a list of tasks that run in parallel. Every task
of step k+1 waits (BLOCKED) until every task of step k has SUCCEEDED, then receives
their merged ``Success.data``. Dependencies are kept per step, not per task, so a
5,000-wide step followed by another costs a counter, not 25 million edges.

The scheduler's stored record of a chain is ``chain_record.py``; the coordinator's rules
(step barriers, data merging, cascades) are ``chain_coordination.py``; the scheduler
core's side (admit whole, replace, apply promotions) is ``chain_rules.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .enums import ExistingPolicy, ScheduleResult
from .errors import InvalidParameters
from .models import TaskRequest

MAX_CHAIN_TASKS = 100_000
def request_payload(req: TaskRequest) -> dict[str, Any]:
    """A TaskRequest as the scheduler receives it; ``id_explicit`` says the user chose the id."""
    return {
        "id": req.id,
        "id_explicit": "id" in req.model_fields_set,
        "worker": req.worker_class_name,
        "input": req.input,
        "constraints": req.constraints.model_dump(mode="json", exclude_defaults=True),
        "input_merger": req.input_merger.value,
    }


def _as_step(step: TaskRequest | Sequence[TaskRequest], where: str) -> tuple[TaskRequest, ...]:
    items = (step,) if isinstance(step, TaskRequest) else tuple(step)
    if not items:
        raise InvalidParameters(f"{where}: a parallel step needs at least one TaskRequest")
    for item in items:
        if not isinstance(item, TaskRequest):
            raise InvalidParameters(f"{where}: expected TaskRequest, got {type(item).__name__}")
    return items


class ChainSubmitter(Protocol):
    """What a chain is enqueued through (the client facade's BackgroundTaskScheduler)."""

    def _enqueue_chain(self, chain: TaskChain) -> ScheduleResult: ...

    async def _enqueue_chain_async(self, chain: TaskChain) -> ScheduleResult: ...


@dataclass(frozen=True, slots=True)
class TaskChain:
    """``scheduler.begin_with(a).then([b, c]).then(d).with_id("sync").enqueue()``.

    Immutable: every call returns a new chain, so a half-built chain can be reused.
    """

    scheduler: ChainSubmitter | None
    steps: tuple[tuple[TaskRequest, ...], ...]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    policy: ExistingPolicy = ExistingPolicy.REPLACE
    error: str | None = None  # a bad step is reported by enqueue(), as REJECTED_INVALID_PARAMS

    @staticmethod
    def begin(
        scheduler: ChainSubmitter | None, first: TaskRequest | Sequence[TaskRequest]
    ) -> TaskChain:
        try:
            return TaskChain(scheduler, (_as_step(first, "begin_with"),))
        except InvalidParameters as exc:
            return TaskChain(scheduler, (), error=str(exc))

    def then(self, step: TaskRequest | Sequence[TaskRequest]) -> TaskChain:
        if self.error is not None:
            return self
        try:
            items = _as_step(step, f"then (step {len(self.steps) + 1})")
        except InvalidParameters as exc:
            return TaskChain(self.scheduler, self.steps, self.id, self.policy, str(exc))
        return TaskChain(self.scheduler, (*self.steps, items), self.id, self.policy)

    def with_id(self, id: str, policy: ExistingPolicy = ExistingPolicy.REPLACE) -> TaskChain:  # noqa: A002
        return TaskChain(self.scheduler, self.steps, id, ExistingPolicy(policy), self.error)

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "policy": self.policy.value,
            "steps": [[request_payload(r) for r in step] for step in self.steps],
            "error": self.error,
        }

    def enqueue(self) -> ScheduleResult:
        if self.scheduler is None:
            raise InvalidParameters("this chain is not bound to a scheduler: use scheduler.begin_with(...)")
        return self.scheduler._enqueue_chain(self)

    async def enqueue_async(self) -> ScheduleResult:
        if self.scheduler is None:
            raise InvalidParameters("this chain is not bound to a scheduler: use scheduler.begin_with(...)")
        return await self.scheduler._enqueue_chain_async(self)

    def __repr__(self) -> str:
        shape = " -> ".join(
            "[" + ", ".join(r.worker_class_name for r in step) + "]" if len(step) > 1 else step[0].worker_class_name
            for step in self.steps
        )
        return f"TaskChain(id={self.id!r}, {shape or 'empty'})"
