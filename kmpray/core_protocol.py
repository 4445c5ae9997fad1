"""``Core``: what the parts of the scheduler core see of each other, for type checkers.

``SchedulerCore`` (engine.py) is assembled from mixins, one concern per file
(unique_work, restore, chain_rules, conditions, explain). Each mixin method is written
against this protocol (``self: Core``), which lists the shared state and the methods
the parts call across files; ``waiting.py`` reads a core through it too. Nothing here
runs: it is the core's table of contents.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from .chain_coordination import Message
from .chain_record import ChainRecord
from .clock import Clock
from .config import EngineConfig
from .constraints import Constraints
from .device import DeviceState
from .effects import Effects
from .enums import TaskState
from .models import TaskInfo
from .platforms import PlatformProfile
from .queues import Deadlines, ReadyQueue, TimerQueue
from .records import TaskRecord, TaskTable
from .results import Failure, Retry, Success
from .run_stats import RunStats


class Core(Protocol):
    # ---- configuration and collaborators
    clock: Clock
    config: EngineConfig
    platform: PlatformProfile
    is_registered: Callable[[str], bool]
    is_known: Callable[[str], bool]
    # ---- the task table and its indexes
    tasks: TaskTable
    names: dict[str, list[str]]  # name -> row keys, oldest first
    dependents: dict[str, list[str]]  # row key -> rows appended after it
    chains: dict[str, ChainRecord]
    _append_seq: dict[str, int]
    pending: int
    # ---- queues (queues.py) and what holds due tasks back (conditions.py)
    _timers: TimerQueue
    _ready: ReadyQueue
    _ready_heavy: ReadyQueue
    _deadlines: Deadlines
    _armed: dict[str, set[str]]
    devices: dict[str, DeviceState]
    _gated: set[str]
    _unplaced: set[str]
    _parked: dict[str, list[str]]
    # ---- restore, explanation, effects
    _adoptable: dict[str, int]
    decisions: deque[tuple[int, str, Any]]
    _waits: dict[str, tuple[str, int, bool]]
    stats: RunStats
    fx: Effects

    # engine.py
    def _touch(self, rec: TaskRecord, now: int) -> None: ...
    def latest(self, name_or_key: str) -> TaskRecord | None: ...
    def _schedule_first(self, rec: TaskRecord, now: int) -> None: ...
    def _arm(self, rec: TaskRecord, now: int) -> None: ...
    def _set_timer(self, rec: TaskRecord, due: int, now: int, store: bool = True) -> None: ...
    def _make_ready(self, rec: TaskRecord) -> None: ...
    def run_lost(self, key: str, run_id: int, crashed: bool = False, bounced: bool = False) -> None: ...
    def _emit_completion(
        self, rec: TaskRecord, success: bool, message: str | None, data: dict[str, Any] | None, now: int
    ) -> None: ...
    def _finish(
        self, rec: TaskRecord, state: TaskState, result: Success | Failure | Retry | None, now: int,
        ran: bool = False,
    ) -> None: ...
    def _cancel_rows(self, rows: Iterable[TaskRecord]) -> int: ...

    # unique_work.py
    def _admit(self, n: int) -> None: ...
    def _platform_constraints(self, task_id: str, c: Constraints) -> Constraints: ...
    def _insert(self, rec: TaskRecord, now: int) -> None: ...
    def _remove_name(self, name: str, now: int) -> int: ...
    def _drop(self, key: str) -> None: ...

    # restore.py
    def _placeholders(self, damaged: list[tuple[str, str, str]], now: int) -> list[TaskRecord]: ...
    def _contain_damage(
        self, damaged: list[tuple[str, str, str]], placeholders: list[TaskRecord], now: int
    ) -> None: ...

    # chain_rules.py
    def _chain_finished(self, chain: ChainRecord) -> bool: ...
    def _remove_chain(self, chain_id: str, now: int) -> dict[str, int]: ...
    def chain_actions(self, actions: Iterable[Message]) -> None: ...
    def successor(self, rec: TaskRecord) -> TaskRecord | None: ...

    # conditions.py
    def eligible_nodes(self, rec: TaskRecord) -> tuple[str, ...] | None: ...
    def release_unplaced(self) -> None: ...
    def fire(self, kind: str, uri: str | None = None) -> int: ...

    # explain.py (and what waiting.py reads)
    def note(self, key: str, text: str | tuple[Any, ...]) -> None: ...
    def info(self, rec: TaskRecord, places: dict[str, int] | None = None) -> TaskInfo: ...
    def is_parked(self, key: str) -> bool: ...
    def is_gated(self, key: str) -> bool: ...
    def is_unplaced(self, key: str) -> bool: ...
    def is_queued(self, key: str, seq: int | None = None) -> bool: ...
    def ahead_of(self, key: str) -> int: ...
    def prerequisites(self, rec: TaskRecord) -> list[TaskRecord]: ...
