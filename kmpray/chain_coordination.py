"""The pure rules of a chain coordinator: step barriers, data merging, cascades, and the
messages it exchanges with the scheduler (see actors/chain_coordinator.py)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .enums import InputMerger, TaskState
from .errors import InvalidParameters
from .merging import merge
from .protocol import Cascade, ChainMessage, Plan, Promote, Step

# Messages between the scheduler (owner of task states) and a chain coordinator (owner of
# each chain's plan): Plan and Step one way, Promote and Cascade back (kmpray/protocol.py).
Message = ChainMessage


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
    heard: int = 0  # ... when it last heard of this chain (its plan, a step, a resync)

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
            if isinstance(msg, Plan):
                current = self.plans.get(msg.chain_id)
                if current is None or current.gen != msg.gen:
                    self.plans[msg.chain_id] = ChainPlan(
                        msg.chain_id, msg.gen, [list(s) for s in msg.steps], dict(msg.mergers),
                        version=self._version, heard=self._version,
                    )
                else:
                    current.heard = self._version
            elif isinstance(msg, Step):
                known = self.plans.get(msg.chain_id)
                if known is not None and known.gen == msg.gen:
                    known.heard = self._version
                    self._step(known, msg.step, msg.key, TaskState(msg.state), msg.data, actions)
        return actions

    def mark(self) -> int:
        """Call before asking for a snapshot; pass the result to ``resync``."""
        self._version += 1
        return self._version

    def quiet_since(self, mark: int) -> list[str]:
        """The chains whose plans heard nothing since ``mark`` (a ``mark()`` result): what
        a periodic check asks the scheduler about. A chain that moves has its messages
        delivered (the scheduler's outbox retries them; a restart on either side brings a
        whole resync), so only a quiet one can be a plan the scheduler has finished or
        lost, or one waiting for a message that went missing."""
        return [chain_id for chain_id, plan in self.plans.items() if plan.heard <= mark]

    def resync(
        self,
        snapshot: dict[str, dict[str, Any]],
        asked_at: int | None = None,
        asked: Sequence[str] | None = None,
    ) -> list[Message]:
        """Merge the scheduler's view of its unfinished chains (after either side restarted,
        and now and then) and return every action it implies (the scheduler ignores what it
        already did). A plan older than the request and absent from the answer belongs to
        a chain that finished or went away: dropped. A chain that finished after the
        snapshot was taken comes back as a plan until the next resync drops it.
        ``asked``: the snapshot covers only these chains (``quiet_since``); the others'
        plans are left as they are."""
        actions: list[Message] = []
        if asked_at is not None:
            candidates = list(self.plans.items()) if asked is None else [
                (chain_id, self.plans[chain_id]) for chain_id in asked if chain_id in self.plans]
            for chain_id, plan in candidates:
                if chain_id not in snapshot and plan.version < asked_at:
                    del self.plans[chain_id]
        for chain_id, snap in snapshot.items():
            self.apply([Plan(chain_id, snap["gen"], snap["steps"], snap["mergers"])])
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
            actions.append(Cascade(plan.id, plan.gen, step + 1, state.value, reason))
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
        # The outputs stay until the plan is retired: a resync clears ``promoted`` and may
        # promote this step again, and must merge every predecessor's output as the first
        # promotion did (it once merged only the one it replayed first: a fan-in successor
        # got one of its predecessors' data when the resync's promotion arrived first).
        return Promote(plan.id, plan.gen, step, upstream, errors)
