"""Chains: the immutable builder users write, and the pure rules the scheduler applies.

A chain is a list of steps; a step is a list of tasks that run in parallel. Every task
of step k+1 waits (BLOCKED) until every task of step k has SUCCEEDED, then receives
their merged ``Success.data``. Dependencies are kept per step, not per task, so a
5,000-wide step followed by another costs a counter, not 25 million edges.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

from .enums import ExistingPolicy, InputMerger, ScheduleResult, TaskState
from .errors import DamagedRow, InvalidParameters
from .merging import merge
from .models import TaskRequest
from .records import seal, unpack_row

if TYPE_CHECKING:
    from .client import BackgroundTaskScheduler

MAX_CHAIN_TASKS = 100_000
_CHAIN_ROW_TYPES: dict[str, tuple[type, ...]] = {"id": (str,), "steps": (list,), "c": (int,), "g": (str,)}


@dataclass(slots=True, eq=False)
class ChainRecord:
    """The scheduler's record of a chain's membership (the plan's rules are the
    coordinator's): which task keys form each step, and which generation this is."""

    id: str
    steps: list[list[str]]  # row keys per step
    created_at_ms: int
    gen: str = field(default_factory=lambda: uuid.uuid4().hex)  # a REPLACE starts a new one
    # Derived, not persisted: how many tasks are unfinished ("is the chain done?" in O(1)).
    unfinished: int = 0

    def encode(self) -> bytes:
        row = {"id": self.id, "steps": self.steps, "c": self.created_at_ms, "g": self.gen}
        return seal(msgpack.packb(row, use_bin_type=True))

    @staticmethod
    def decode(blob: bytes) -> ChainRecord:
        """A stored chain row back into a record; raises DamagedRow, naming what is wrong."""
        row = unpack_row(blob, ("id", "steps", "c"), _CHAIN_ROW_TYPES)
        steps = row["steps"]
        if not steps or not all(isinstance(s, list) and s and all(isinstance(k, str) for k in s) for s in steps):
            raise DamagedRow("field 'steps' is not a list of non-empty lists of task keys")
        return ChainRecord(row["id"], [list(s) for s in steps], row["c"], row.get("g") or row["id"])


def chain_state(states: Sequence[TaskState]) -> TaskState:
    """A chain is finished when all its tasks are: then CANCELLED > FAILED > SUCCEEDED.
    Until then it is RUNNING, ENQUEUED or BLOCKED, by its most advanced unfinished task."""
    present = set(states)
    for state in (TaskState.RUNNING, TaskState.ENQUEUED, TaskState.BLOCKED):
        if state in present:
            return state
    for state in (TaskState.CANCELLED, TaskState.FAILED):
        if state in present:
            return state
    return TaskState.SUCCEEDED


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


@dataclass(frozen=True, slots=True)
class TaskChain:
    """``scheduler.begin_with(a).then([b, c]).then(d).with_id("sync").enqueue()``.

    Immutable: every call returns a new chain, so a half-built chain can be reused.
    """

    scheduler: BackgroundTaskScheduler | None
    steps: tuple[tuple[TaskRequest, ...], ...]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    policy: ExistingPolicy = ExistingPolicy.REPLACE
    error: str | None = None  # a bad step is reported by enqueue(), as REJECTED_INVALID_PARAMS

    @staticmethod
    def begin(
        scheduler: BackgroundTaskScheduler | None, first: TaskRequest | Sequence[TaskRequest]
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


# ----------------------------------------------------------------- coordination
# Messages between the scheduler (owner of task states) and a chain coordinator (owner of
# each chain's plan: promotion, data passing, cascades). Plain tuples: they cross actors.
#   scheduler -> coordinator
#     ("plan", chain_id, gen, steps, mergers)       a chain was accepted (or replaced)
#     ("step", chain_id, gen, step, key, state, data) a chain task finished
#   coordinator -> scheduler
#     ("promote", chain_id, gen, step, {key: upstream}, {key: error})
#     ("cascade", chain_id, gen, from_step, state, reason)
# The coordinator's state only grows (keys that succeeded, outputs, cascades sent), so a
# snapshot merged in after a restart and a late duplicate message are both harmless, and
# the scheduler applies an action only to tasks still BLOCKED/unfinished of that gen.

Message = tuple[Any, ...]


def coordinator_index(chain_id: str, pool: int) -> int:
    """Which coordinator of a pool of ``pool`` owns ``chain_id`` (stable across processes)."""
    return zlib.crc32(chain_id.encode()) % max(1, pool)


@dataclass(slots=True, eq=False)
class ChainPlan:
    id: str
    gen: str
    steps: list[list[str]]
    mergers: dict[str, str]  # key -> InputMerger value (only non-default ones)
    succeeded: list[set[str]] = field(default_factory=list)
    outputs: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    promoted: set[int] = field(default_factory=set)  # steps whose promotion was sent
    cascaded: bool = False
    version: int = 0  # the coordinator's message count when this plan was made

    def __post_init__(self) -> None:
        if not self.succeeded:
            self.succeeded = [set() for _ in self.steps]


class ChainCoordinatorCore:
    """The pure rules of a chain coordinator: step barriers, data merging, cascades.

    ``apply(messages)`` returns the actions for the scheduler. Steps are barriers: step
    k+1 is promoted, with each task's prerequisites' ``Success.data`` merged by that
    task's merger, once every task of step k has SUCCEEDED. A FAILED or CANCELLED task
    finishes every later step the same way (FAILED ones with the reason).
    """

    def __init__(self) -> None:
        self.plans: dict[str, ChainPlan] = {}
        self._version = 0  # bumped per message batch: when each plan was last created

    def _retire(self, plan: ChainPlan) -> None:
        if self.plans.get(plan.id) is plan:
            del self.plans[plan.id]

    def apply(self, messages: Sequence[Message]) -> list[Message]:
        actions: list[Message] = []
        self._version += 1
        for msg in messages:
            if msg[0] == "plan":
                _kind, chain_id, gen, steps, mergers = msg
                current = self.plans.get(chain_id)
                if current is None or current.gen != gen:
                    plan = ChainPlan(chain_id, gen, [list(s) for s in steps], dict(mergers), version=self._version)
                    self.plans[chain_id] = plan
            elif msg[0] == "step":
                _kind, chain_id, gen, step, key, state, data = msg
                known = self.plans.get(chain_id)
                if known is not None and known.gen == gen:
                    self._step(known, step, key, TaskState(state), data, actions)
        return actions

    def mark(self) -> int:
        """Call before asking for a snapshot; pass the result to ``resync``."""
        self._version += 1
        return self._version

    def resync(self, snapshot: dict[str, dict[str, Any]], asked_at: int | None = None) -> list[Message]:
        """Merge the scheduler's view of its unfinished chains (after either side restarted,
        and now and then) and return every action it implies (the scheduler ignores what it
        already did). A plan older than the request and absent from the answer belongs to
        a chain that finished or went away: dropped. A chain that finished after the
        snapshot was taken comes back as a plan until the next resync drops it."""
        actions: list[Message] = []
        if asked_at is not None:
            for chain_id, plan in list(self.plans.items()):
                if chain_id not in snapshot and plan.version < asked_at:
                    del self.plans[chain_id]
        for chain_id, snap in snapshot.items():
            self.apply([("plan", chain_id, snap["gen"], snap["steps"], snap["mergers"])])
            plan = self.plans[chain_id]
            plan.promoted.clear()  # the scheduler may have lost what was sent: send again
            plan.cascaded = False
            for n, step in enumerate(plan.steps):
                for key in step:
                    state, data = snap["tasks"].get(key, (TaskState.BLOCKED.value, None))
                    if TaskState(state).is_finished:
                        self._step(plan, n, key, TaskState(state), data, actions)
        return actions

    def _step(
        self, plan: ChainPlan, step: int, key: str, state: TaskState, data: dict[str, Any] | None,
        actions: list[Message],
    ) -> None:
        if state is TaskState.SUCCEEDED:
            plan.succeeded[step].add(key)
            plan.outputs[key] = data
            done = len(plan.succeeded[step]) == len(plan.steps[step])
            if done and step + 1 < len(plan.steps) and step + 1 not in plan.promoted:
                plan.promoted.add(step + 1)
                actions.append(self._promotion(plan, step + 1))
            if done and step + 1 == len(plan.steps):
                self._retire(plan)  # finished: nothing left to coordinate
            return
        if not plan.cascaded and step + 1 < len(plan.steps):
            plan.cascaded = True
            reason = f"prerequisite {key!r} {state.value.lower()}"
            actions.append(("cascade", plan.id, plan.gen, step + 1, state.value, reason))
        if plan.cascaded or step + 1 == len(plan.steps):
            self._retire(plan)

    def _promotion(self, plan: ChainPlan, step: int) -> Message:
        outputs = [plan.outputs.get(k) for k in plan.steps[step - 1]]
        upstream: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        by_merger: dict[str, dict[str, Any] | str] = {}
        for key in plan.steps[step]:
            merger = plan.mergers.get(key, InputMerger.OVERWRITE.value)
            if merger not in by_merger:  # a wide step mostly shares one merger: merge once
                try:
                    by_merger[merger] = merge(InputMerger(merger), outputs)
                except InvalidParameters as exc:
                    by_merger[merger] = str(exc)
            merged = by_merger[merger]
            if isinstance(merged, str):
                errors[key] = merged
            else:
                upstream[key] = merged
        for key in plan.steps[step - 1]:  # passed on: no longer needed here
            plan.outputs.pop(key, None)
        return ("promote", plan.id, plan.gen, step, upstream, errors)
