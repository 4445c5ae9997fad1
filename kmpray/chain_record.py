"""ChainRecord: the scheduler's stored record of a chain (which task keys form each step,
and which generation it is), its msgpack codec, and a chain's state from its tasks'."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgpack

from .enums import TaskState
from .errors import DamagedRow
from .records import seal, unpack_row

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
