"""SchedulerCore: the scheduler's decisions over plain data, driven by an injected clock.

It owns the task table, the timer heap, the ready queue (expedited > qos > due time),
unique-work names, retries/backoff, dependency promotion and cascades. It performs
no I/O: every call records its effects (rows to persist or delete, runs to cancel,
events to emit, names whose waiters may wake), which the SchedulerActor drains and
performs. One thread owns a core; nothing here is thread-safe on purpose.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
import json
import logging
import uuid
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from typing import Any

from .backoff import backoff_delay_ms
from .chain import MAX_CHAIN_TASKS, ChainRecord, Message, chain_state, coordinator_index
from .clock import Clock
from .config import EngineConfig
from .constraints import DEFAULT_CONSTRAINTS, Constraints
from .device import DeviceState, in_trigger_state, is_gated, satisfies, transitions
from .enums import ExistingPolicy, InputMerger, ScheduleResult, TaskState
from .errors import InvalidParameters, KmprayError, RejectedByPolicy
from .events import TaskCompletionEvent, TaskProgressEvent
from .merging import merge
from .models import ChainInfo, TaskInfo
from .platforms import PlatformProfile
from .policies import Action, appended_state, decide
from .records import TaskRecord
from .results import Failure, Retry, Success
from .triggers import (
    DEVICE_TRIGGER_KINDS,
    ContentUri,
    Exact,
    OneTime,
    Periodic,
    Trigger,
    Windowed,
    periodic_next,
    uri_matches,
)
from .validation import check_id, check_input, check_trigger
from .waiting import waiting_for

log = logging.getLogger("kmpray.engine")

_ONE_TIME = OneTime()

_UNFINISHED = (TaskState.ENQUEUED, TaskState.BLOCKED, TaskState.RUNNING)


@dataclass(frozen=True, slots=True)
class Outcome:
    result: ScheduleResult
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One run handed to an executor."""

    key: str
    name: str
    run_id: int
    worker: str
    input: str | None
    upstream: dict[str, Any] | None
    previous_attempts: int
    timeout_ms: int | None
    heavy: bool
    chain_id: str | None
    nodes: tuple[str, ...] | None = None  # where it may run (None: anywhere)
    start_at_ms: int | None = None  # handed over ahead of its due time: begin then, not before


@dataclass(slots=True)
class Effects:
    persist: dict[str, TaskRecord] = field(default_factory=dict)
    delete: set[str] = field(default_factory=set)
    cancel_runs: list[tuple[str, int]] = field(default_factory=list)
    events: list[TaskCompletionEvent | TaskProgressEvent] = field(default_factory=list)
    settled: set[str] = field(default_factory=set)  # names/chain ids whose waiters should re-check
    chains: dict[str, ChainRecord] = field(default_factory=dict)
    delete_chains: set[str] = field(default_factory=set)
    chain_msgs: list[Message] = field(default_factory=list)  # for the chain coordinators

    def __bool__(self) -> bool:
        return bool(
            self.persist or self.delete or self.cancel_runs or self.events or self.settled
            or self.chains or self.delete_chains or self.chain_msgs
        )


class SchedulerCore:
    def __init__(
        self,
        clock: Clock,
        platform: PlatformProfile,
        config: EngineConfig | None = None,
        is_registered: Callable[[str], bool] = lambda _name: True,
        is_known: Callable[[str], bool] = lambda _name: False,
    ) -> None:
        self.clock = clock
        self.platform = platform
        self.config = config or EngineConfig()
        self.is_registered = is_registered
        # A worker registered before a restart but not yet again: its runs wait, not fail.
        self.is_known = is_known
        self._parked: dict[str, list[str]] = {}
        self.tasks: dict[str, TaskRecord] = {}
        self.names: dict[str, list[str]] = {}  # name -> row keys, oldest first
        self.dependents: dict[str, list[str]] = {}
        self.chains: dict[str, ChainRecord] = {}
        self._timers: list[tuple[int, int, str]] = []
        self._ready: list[tuple[int, int, int, int, str]] = []
        self._ready_heavy: list[tuple[int, int, int, int, str]] = []
        self._deadlines: list[tuple[int, str]] = []  # (instant a window expires, key)
        self._armed: dict[str, set[str]] = {}  # event trigger kind -> keys waiting for it
        self._seq = itertools.count()
        self._append_seq: dict[str, int] = {}
        self.devices: dict[str, DeviceState] = {}  # node id -> state, pushed by the oracle
        self._gated: set[str] = set()  # ready tasks that no node satisfies right now
        self._unplaced: set[str] = set()  # eligible, but no executor room on their nodes
        self.pending = 0  # unfinished tasks, for admission control
        # After a restore: the run id a run dispatched before the restart would carry, per
        # task that may have one (see ``adopt``).
        self._adoptable: dict[str, int] = {}
        self.decisions: deque[tuple[int, str, Any]] = deque(maxlen=self.config.decision_log_size)
        self._waits: dict[str, tuple[str, int, bool]] = {}  # key -> (reason kind, since, warned)
        self.fx = Effects()

    # ----------------------------------------------------------------- effects
    def drain(self) -> Effects:
        fx, self.fx = self.fx, Effects()
        return fx

    def _touch(self, rec: TaskRecord, now: int) -> None:
        rec.updated_at_ms = now
        self.fx.persist[rec.key] = rec

    # ------------------------------------------------------------------ reads
    def latest(self, name_or_key: str) -> TaskRecord | None:
        rec = self.tasks.get(name_or_key)
        keys = self.names.get(name_or_key)
        if keys:
            return self.tasks[keys[-1]]
        return rec

    def is_settled(self, name: str) -> bool:
        if name in self.chains:
            return self._chain_finished(self.chains[name])
        rec = self.latest(name)
        return rec is None or rec.state.is_finished

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in TaskState}
        for rec in self.tasks.values():
            out[rec.shown_state.value] += 1
        return out

    def next_due_ms(self, lead_ms: int = 0) -> int | None:
        """When ``tick(lead_ms)`` next has work: half the lead before the next timer (so
        each tick hands over about half a lead's worth of timers), or a window's end."""
        while self._timers:
            due, seq, key = self._timers[0]
            rec = self.tasks.get(key)
            if rec is not None and rec.timer_seq == seq:
                break
            heapq.heappop(self._timers)
        candidates = [self._timers[0][0] - lead_ms // 2] if self._timers else []
        if self._deadlines:
            candidates.append(self._deadlines[0][0])
        return min(candidates) if candidates else None

    def ready_count(self) -> int:
        return len(self._ready) + len(self._ready_heavy)

    def heavy_ready_count(self, exact: bool = False) -> int:
        """Heavy runs waiting for a heavy worker: an upper bound (the heap keeps entries of
        runs cancelled meanwhile), or ``exact``ly, counting only live entries."""
        if not exact:
            return len(self._ready_heavy)
        return sum(1 for *_, seq, key in self._ready_heavy if self.is_queued(key, seq))

    # ------------------------------------------------- why a task waits (waiting.py)
    def is_gated(self, key: str) -> bool:
        return key in self._gated

    def is_unplaced(self, key: str) -> bool:
        return key in self._unplaced

    def is_parked(self, key: str) -> bool:
        return any(key in keys for keys in self._parked.values())

    def places_in_line(self) -> dict[str, int]:
        """Every queued task's place in its ready queue (how many come before it), in one
        pass: what a listing uses instead of ``ahead_of`` per task."""
        out: dict[str, int] = {}
        for queue in (self._ready, self._ready_heavy):
            live = sorted(entry for entry in queue if self.is_queued(entry[4], entry[3]))
            out.update((entry[4], n) for n, entry in enumerate(live))
        return out

    def ahead_of(self, key: str) -> int:
        """How many live entries of its ready queue come before this task's (O(queue))."""
        rec = self.tasks[key]
        c = rec.constraints
        due = rec.next_run_at_ms if rec.next_run_at_ms is not None else 0
        mine = (0 if c.expedited else 1, due + c.qos.rank * self.config.qos_aging_ms, c.qos.rank, rec.ready_seq, key)
        queue = self._ready_heavy if c.is_heavy_task else self._ready
        return sum(1 for entry in queue if entry < mine and self.is_queued(entry[4], entry[3]))

    def prerequisites(self, rec: TaskRecord) -> list[TaskRecord]:
        """The tasks ``rec`` waits for: the previous step of its chain, or the work it was appended to."""
        if rec.chain_id is not None and rec.chain_id in self.chains and rec.step > 0:
            keys: Iterable[str] = self.chains[rec.chain_id].steps[rec.step - 1]
        else:
            keys = rec.prereqs
        return [self.tasks[k] for k in keys if k in self.tasks]

    def info(self, rec: TaskRecord, places: dict[str, int] | None = None) -> TaskInfo:
        """What users see of a task: its row, why it waits, and a ``next_run_at_ms`` that
        means what it says (None, not a passed instant, while it waits for something else
        than time). ``places``: from ``places_in_line``, when listing many."""
        info = rec.info()
        reason = waiting_for(self, rec, places=places)
        if reason is None:
            return info
        update: dict[str, Any] = {"waiting_for": reason}
        if reason.kind not in ("due_at", "window") and rec.state is not TaskState.RUNNING:
            update["next_run_at_ms"] = None
        return info.model_copy(update=update)

    def note(self, key: str, text: str | tuple[Any, ...]) -> None:
        """Record a decision about a task, for ``explain`` (a bounded log of recent ones).
        A tuple is formatted only when read (the dispatch path records one per run)."""
        self.decisions.append((self.clock.now_ms(), key, text))

    def explain(self, name_or_key: str) -> str | None:
        """A task's state, why it waits, and the recent decisions about it, as text."""
        rec = self.latest(name_or_key)
        if rec is None:
            return None
        info = self.info(rec)
        lines = [f"task {rec.key} ({rec.worker}): {info.state.value}, attempt {info.run_attempt_count}, "
                 f"{rec.run_count} finished runs"]
        if info.waiting_for is not None:
            lines.append(f"waiting for: {info.waiting_for.message}")
            for node, why in (info.waiting_for.details.get("nodes") or {}).items():
                lines.append(f"  node {node[:12]}: {', '.join(why)}")
        elif info.state.is_finished and info.result is not None:
            lines.append(f"result: {info.result.kind}: {getattr(info.result, 'message', None) or ''}".rstrip(": "))
        recent = [(at, text) for at, key, text in self.decisions if key == rec.key]  # type: ignore[misc]
        if recent:
            lines.append("recent decisions:")
            lines += [f"  {_stamp(at)}  {_decision(text)}" for at, text in recent[-20:]]
        return "\n".join(lines)

    def warn_long_waits(self) -> list[tuple[str, str]]:
        """Tasks that have waited on the same reason (not on time) longer than
        ``wait_warning_ms``: logged once each at WARNING, and returned."""
        now = self.clock.now_ms()
        candidates = self._gated | self._unplaced | {k for keys in self._parked.values() for k in keys}
        for key in list(self._waits):
            if key not in candidates:
                del self._waits[key]
        warned = []
        for key in candidates:
            rec = self.tasks.get(key)
            reason = waiting_for(self, rec) if rec is not None else None
            if reason is None:
                continue
            kind, since, done = self._waits.get(key, (reason.kind, now, False))
            if kind != reason.kind:
                kind, since, done = reason.kind, now, False
            if not done and now - since >= self.config.wait_warning_ms:
                log.warning("task %s has waited %.0f s: %s", key, (now - since) / 1000, reason.message)
                warned.append((key, reason.message))
                done = True
            self._waits[key] = (kind, since, done)
        return warned

    def is_queued(self, key: str, seq: int | None = None) -> bool:
        """Is this task in a ready queue now (due, waiting only for capacity)?"""
        rec = self.tasks.get(key)
        if rec is None or rec.state is not TaskState.ENQUEUED or rec.ready_seq == -1:
            return False
        return seq is None or rec.ready_seq == seq

    def gated_count(self) -> int:
        return len(self._gated)

    # ----------------------------------------------------------- device state
    def eligible_nodes(self, rec: TaskRecord) -> tuple[str, ...] | None:
        """The nodes this task may run on now; None when it may run anywhere."""
        kind = rec.trigger.kind
        device_trigger = kind in DEVICE_TRIGGER_KINDS
        if not self.devices or not (device_trigger or is_gated(rec.constraints) or self._dozing):
            return None
        return tuple(
            node
            for node, state in self.devices.items()
            if satisfies(rec.constraints, state) and (not device_trigger or in_trigger_state(kind, state))
        )

    @property
    def _dozing(self) -> bool:
        return any(s.doze for s in self.devices.values())

    def unplaced(self, key: str, run_id: int) -> None:
        """A run had no executor room on its nodes: undo the dispatch, wait for capacity."""
        self.run_lost(key, run_id)
        rec = self.tasks.get(key)
        if rec is not None and rec.state is TaskState.ENQUEUED:
            self.note(key, "no executor room on the nodes that satisfy it: waits for capacity there")
            rec.timer_seq = -1  # not on a timer: it waits for release_unplaced
            self._unplaced.add(key)

    def release_unplaced(self) -> None:
        """Capacity freed up somewhere: unplaced runs try again."""
        for key in self._unplaced:
            rec = self.tasks.get(key)
            if rec is not None and rec.state is TaskState.ENQUEUED and rec.ready_seq == -1:
                self._make_ready(rec)
        self._unplaced.clear()

    def set_devices(self, states: dict[str, DeviceState]) -> list[str]:
        """New device states (every node): fire device triggers on transitions, release
        tasks whose gate opened. Returns the trigger kinds that fired."""
        fired: list[str] = []
        for node, state in states.items():
            fired += transitions(self.devices.get(node), state)
        self.devices = dict(states)
        for kind in dict.fromkeys(fired):
            self.fire(kind)
        self.release_unplaced()
        for key in list(self._gated):
            rec = self.tasks.get(key)
            if rec is None or rec.state is not TaskState.ENQUEUED or rec.ready_seq != -1:
                self._gated.discard(key)
            elif self.eligible_nodes(rec) != ():
                self._gated.discard(key)
                self._make_ready(rec)
        return fired

    # ---------------------------------------------------------------- restore
    def restore(
        self,
        records: Iterable[TaskRecord],
        chains: Iterable[ChainRecord] = (),
        damaged: Iterable[tuple[str, str, str]] = (),
    ) -> None:
        """Rebuild every index from stored rows. Runs that were in flight run again.
        ``damaged``: ``(table, key, reason)`` of rows the store just moved to quarantine
        (see ``_contain_damage``)."""
        now = self.clock.now_ms()
        for chain in chains:
            self.chains[chain.id] = chain
        rows = sorted(records, key=lambda r: (r.created_at_ms, r.key))
        for rec in rows:
            self.tasks[rec.key] = rec
            self.names.setdefault(rec.name, []).append(rec.key)
            if "#" in rec.key:
                suffix = int(rec.key.rsplit("#", 1)[1])
                self._append_seq[rec.name] = max(self._append_seq.get(rec.name, 1), suffix)
            for pre in rec.prereqs:
                self.dependents.setdefault(pre, []).append(rec.key)
        for rec in rows:
            if rec.state.is_finished:
                continue
            self.pending += 1
            # A dispatch is not stored; a run's progress is. A run still out there carries
            # the stored id (stored RUNNING) or the next one (dispatched after the last write).
            if rec.state is TaskState.RUNNING:
                self._adoptable[rec.key] = rec.run_id
            elif rec.state is TaskState.ENQUEUED:
                self._adoptable[rec.key] = rec.run_id + 1
            # Skip the id of that unstored dispatch: its late report is never taken for a new run.
            rec.run_id += 1
            if rec.state is TaskState.RUNNING:
                # Interrupted, not finished: like a lost run, it is not counted as an attempt.
                rec.state = TaskState.ENQUEUED
                rec.run_attempt_count = max(0, rec.run_attempt_count - 1)
                rec.next_run_at_ms = max(now, rec.next_run_at_ms or now)  # one handed over early
                self._touch(rec, now)
            if rec.state is TaskState.ENQUEUED:
                self._arm(rec, now)
            if rec.deadline_ms is not None:
                heapq.heappush(self._deadlines, (rec.deadline_ms + 1, rec.key))
        damaged = list(damaged)
        placeholders = self._placeholders(damaged, now) if damaged else []
        for chain in self.chains.values():
            chain.unfinished = sum(
                1 for step in chain.steps for k in step if k in self.tasks and not self.tasks[k].state.is_finished
            )
        if damaged:
            self._contain_damage(damaged, placeholders, now)

    def _placeholders(self, damaged: list[tuple[str, str, str]], now: int) -> list[TaskRecord]:
        """A FAILED row in place of each damaged task row, so what depends on it (a chain's
        later steps, appended work) ends by the ordinary cascade, and users see why."""
        steps = {k: (c, n) for c in self.chains.values() for n, step in enumerate(c.steps) for k in step}
        out = []
        for table, key, reason in damaged:
            if table != "tasks" or key in self.tasks:
                continue
            chain, step = steps.get(key, (None, 0))
            rec = TaskRecord(
                key=key, name=key if chain is not None else key.split("#", 1)[0], worker="(damaged row)",
                trigger=_ONE_TIME, constraints=DEFAULT_CONSTRAINTS, state=TaskState.FAILED,
                created_at_ms=now, updated_at_ms=now, chain_id=chain.id if chain is not None else None, step=step,
                result=Failure(f"stored row damaged ({reason}); kept in quarantine: see `kmpray quarantine`"),
            )
            self.tasks[key] = rec
            keys = self.names.setdefault(rec.name, [])
            keys.append(key)
            keys.sort(key=_append_number)
            self._touch(rec, now)
            out.append(rec)
        return out

    def _contain_damage(
        self, damaged: list[tuple[str, str, str]], placeholders: list[TaskRecord], now: int
    ) -> None:
        for rec in placeholders:
            self._emit_completion(rec, False, rec.result.message, None, now)  # type: ignore[union-attr]
            self.fx.settled.add(rec.name)
            chain = self.chains.get(rec.chain_id) if rec.chain_id is not None else None
            if chain is not None:
                self.fx.settled.add(chain.id)
                reason = f"prerequisite {rec.key!r} failed (its stored row was damaged)"
                self.chain_actions([("cascade", chain.id, chain.gen, rec.step + 1, TaskState.FAILED.value, reason)])
            cause = Failure(f"prerequisite {rec.key!r} failed (its stored row was damaged)")
            for dep in list(self.dependents.get(rec.key, ())):
                drec = self.tasks.get(dep)
                if drec is not None and not drec.state.is_finished:
                    self._finish(drec, TaskState.FAILED, cause, now)
        lost_chains = {key: reason for table, key, reason in damaged if table == "chains"}
        for rec in list(self.tasks.values()):
            if rec.chain_id in lost_chains and rec.chain_id not in self.chains and not rec.state.is_finished:
                why = f"its chain's stored row {rec.chain_id!r} was damaged ({lost_chains[rec.chain_id]})"
                self._finish(rec, TaskState.FAILED, Failure(why), now)

    # ---------------------------------------------------------------- enqueue
    def submit(
        self,
        task_id: str,
        trigger: Trigger,
        worker: str,
        input: str | None = None,  # noqa: A002
        constraints: Constraints | None = None,
    ) -> Outcome:
        """Validate and admit one task under the unique-work name ``task_id``."""
        constraints = constraints or Constraints()
        now = self.clock.now_ms()
        try:
            check_id(task_id, self.config)
            check_input(input, self.config)
            check_trigger(trigger, constraints, self.platform, now, self.config)
            if not (self.is_registered(worker) or self.is_known(worker)):
                raise InvalidParameters(f"worker_class_name: {worker!r} is not a registered worker")
            self._admit(1)
        except KmprayError as exc:
            return outcome_for(exc)
        constraints = self._platform_constraints(task_id, constraints)

        if task_id in self.chains:
            return Outcome(ScheduleResult.REJECTED_INVALID_PARAMS, f"id: {task_id!r} is the id of a chain")
        existing = [self.tasks[k] for k in self.names.get(task_id, ())]
        if any(r.chain_id is not None for r in existing):
            return Outcome(
                ScheduleResult.REJECTED_INVALID_PARAMS,
                f"id: {task_id!r} is a task of chain {existing[0].chain_id!r}",
            )
        action = decide(constraints.existing_work_policy, [r.state for r in existing])
        if action is Action.IGNORE:
            return Outcome(ScheduleResult.SUCCESS, f"kept existing unfinished work {task_id!r}")
        prereqs: tuple[str, ...] = ()
        key = task_id
        last_run_id = 0
        if action is Action.REPLACE:
            last_run_id = self._remove_name(task_id, now)
        elif action is Action.APPEND:
            leaf = existing[-1]
            if isinstance(leaf.trigger, Periodic) or leaf.trigger.kind in DEVICE_TRIGGER_KINDS | {"content_uri"}:
                return Outcome(
                    ScheduleResult.REJECTED_INVALID_PARAMS,
                    f"existing_work_policy: cannot append to {task_id!r}: its {leaf.trigger.kind} work never finishes",
                )
            prereqs = (leaf.key,)
            n = self._append_seq.get(task_id, 1) + 1
            self._append_seq[task_id] = n
            key = f"{task_id}#{n}"
            # After a REPLACE and a restart a key like X#2 can come back; its runs must never
            # be mistaken for the deleted X#2's (an executor may still report one). Every run id
            # used under the name is at most the largest stored one (REPLACE carries it over).
            last_run_id = max(r.run_id for r in existing)
        rec = TaskRecord(
            key=key,
            name=task_id,
            worker=worker,
            trigger=trigger,
            constraints=constraints,
            state=TaskState.ENQUEUED,
            created_at_ms=now,
            updated_at_ms=now,
            input=input,
            prereqs=prereqs,
            # A replacement reuses the key: its runs must not be mistaken for the old ones'.
            run_id=last_run_id,
        )
        self._insert(rec, now)
        return Outcome(ScheduleResult.SUCCESS)

    def _admit(self, n: int) -> None:
        """Admission control: too many unfinished tasks is the OS policy's 'no'."""
        if self.pending + n > self.config.max_pending_tasks:
            raise RejectedByPolicy(
                f"admission: {self.pending} tasks pending, the limit is {self.config.max_pending_tasks}"
            )

    def _platform_constraints(self, task_id: str, c: Constraints) -> Constraints:
        """Constraints the platform cannot honour are dropped, with a warning (iOS)."""
        dropped = [f for f in self.platform.ignored_constraints if getattr(c, f)]
        if not dropped:
            return c
        log.warning("%s: platform %r ignores %s", task_id, self.platform.name, ", ".join(sorted(dropped)))
        return c.model_copy(update=dict.fromkeys(dropped, False))

    def _insert(self, rec: TaskRecord, now: int) -> None:
        self.tasks[rec.key] = rec
        self.names.setdefault(rec.name, []).append(rec.key)
        self.pending += 1
        for pre in rec.prereqs:
            self.dependents.setdefault(pre, []).append(rec.key)
        if rec.prereqs:
            states = [self.tasks[p].state for p in rec.prereqs]
            worst = next((s for s in (TaskState.FAILED, TaskState.CANCELLED) if s in states), None)
            if worst is not None:
                state = appended_state(worst)
            elif all(s is TaskState.SUCCEEDED for s in states):
                state = TaskState.ENQUEUED
            else:
                state = TaskState.BLOCKED
            rec.state = state
            if state.is_finished:
                self.pending -= 1
                rec.result = Failure(f"prerequisite {rec.prereqs[0]!r} is {state.value}")
                self.fx.settled.add(rec.name)
        self._touch(rec, now)
        if rec.state is TaskState.ENQUEUED:
            self._schedule_first(rec, now)

    def _schedule_first(self, rec: TaskRecord, now: int) -> None:
        trig = rec.trigger
        if isinstance(trig, OneTime):
            self._set_timer(rec, now + trig.initial_delay_ms, now)
        elif isinstance(trig, Periodic):
            rec.anchor_ms = now
            rec.period = 0
            self._set_timer(rec, now, now)
        elif isinstance(trig, Exact):
            self._set_timer(rec, max(trig.at_epoch_millis, now), now)
        elif isinstance(trig, Windowed):
            rec.deadline_ms = trig.end_epoch_millis
            heapq.heappush(self._deadlines, (trig.end_epoch_millis + 1, rec.key))  # expires after end
            self._set_timer(rec, max(trig.start_epoch_millis, now), now)
        else:  # device-state and content triggers wait for their event
            rec.next_run_at_ms = None
            self._armed.setdefault(trig.kind, set()).add(rec.key)

    def _arm(self, rec: TaskRecord, now: int) -> None:
        """Re-enter the timer or event index after a restore. A stored due time is not
        written back (at 100,000 rows that rewrite cost 0.7 s of every restart)."""
        if rec.trigger.kind in DEVICE_TRIGGER_KINDS or isinstance(rec.trigger, ContentUri):
            self._armed.setdefault(rec.trigger.kind, set()).add(rec.key)
            if rec.next_run_at_ms is not None:
                self._set_timer(rec, rec.next_run_at_ms, now, store=False)
            return
        if rec.next_run_at_ms is None:
            self._schedule_first(rec, now)
        else:
            self._set_timer(rec, rec.next_run_at_ms, now, store=False)

    def _set_timer(self, rec: TaskRecord, due: int, now: int, store: bool = True) -> None:
        rec.next_run_at_ms = due
        seq = next(self._seq)
        rec.timer_seq = seq
        rec.ready_seq = -1
        heapq.heappush(self._timers, (due, seq, rec.key))
        if store:
            self._touch(rec, now)

    def _make_ready(self, rec: TaskRecord) -> None:
        seq = next(self._seq)
        rec.ready_seq = seq
        rec.timer_seq = -1
        c = rec.constraints
        due = rec.next_run_at_ms if rec.next_run_at_ms is not None else 0
        queue = self._ready_heavy if c.is_heavy_task else self._ready
        # Aging: each qos class below HIGH counts as due qos_aging_ms later, so equal due
        # times order HIGH > DEFAULT > LOW, yet a LOW task that waited long enough wins.
        rank = due + c.qos.rank * self.config.qos_aging_ms
        heapq.heappush(queue, (0 if c.expedited else 1, rank, c.qos.rank, seq, rec.key))

    # ------------------------------------------------------------------- time
    def tick(self, lead_ms: int = 0) -> None:
        """Move due timers to the ready queue and expire passed windows. ``lead_ms``: also
        timers due that soon; their runs are handed over early and begin at their due
        time on the executor's clock (see ``Dispatch.start_at_ms``)."""
        now = self.clock.now_ms()
        timers = self._timers
        while timers and timers[0][0] <= now + lead_ms:
            _due, seq, key = heapq.heappop(timers)
            rec = self.tasks.get(key)
            if rec is not None and rec.timer_seq == seq and rec.state is TaskState.ENQUEUED:
                self._make_ready(rec)
        while self._deadlines and self._deadlines[0][0] <= now:
            _end, key = heapq.heappop(self._deadlines)
            rec = self.tasks.get(key)
            if rec is not None and rec.state is TaskState.ENQUEUED and rec.deadline_ms is not None:
                self._finish(rec, TaskState.FAILED, Failure("window expired"), now)

    def take_ready(self, limit: int, heavy_limit: int = 0) -> list[Dispatch]:
        """Pop up to ``limit`` light and ``heavy_limit`` heavy runs, each in priority order,
        and mark them RUNNING."""
        out = self._take(self._ready, limit)
        if heavy_limit:
            out += self._take(self._ready_heavy, heavy_limit)
        return out

    def _take(self, ready: list[tuple[int, int, int, int, str]], limit: int) -> list[Dispatch]:
        now = self.clock.now_ms()
        out: list[Dispatch] = []
        while ready and len(out) < limit:
            *_, seq, key = heapq.heappop(ready)
            rec = self.tasks.get(key)
            if rec is None or rec.ready_seq != seq or rec.state is not TaskState.ENQUEUED:
                continue
            rec.ready_seq = -1
            if not self.is_registered(rec.worker):
                if self.is_known(rec.worker):
                    self._parked.setdefault(rec.worker, []).append(rec.key)
                    self.note(rec.key, f"parked: worker {rec.worker!r} is not registered (again) yet")
                    continue
                self._finish(rec, TaskState.FAILED, Failure(f"worker {rec.worker!r} is not registered"), now)
                continue
            nodes = self.eligible_nodes(rec)
            if nodes == ():  # no node satisfies it now: wait for a device state change
                self._gated.add(rec.key)
                self.note(rec.key, "due, but no node satisfies its constraints: waits for a device state change")
                continue
            # A chain task's data was merged at promotion; appended work merges its leaf's here.
            upstream: dict[str, Any] | None = rec.upstream
            if rec.prereqs:
                try:
                    upstream = merge(rec.input_merger, [self._output(p) for p in rec.prereqs])
                except InvalidParameters as exc:
                    self._finish(rec, TaskState.FAILED, Failure(str(exc)), now)
                    continue
            run_input = rec.input
            if run_input is None and upstream:
                run_input = json.dumps(upstream)
            rec.state = TaskState.RUNNING
            rec.started = False  # shown ENQUEUED until the executor says the worker began
            rec.run_id += 1
            rec.progress = None
            due = rec.next_run_at_ms
            start_at = due if due is not None and due > now else None
            rec.next_run_at_ms = start_at  # kept: a lost run is due again then, not earlier
            # Not persisted: a restarted scheduler adopts the run from its executor (or runs it
            # again), and the run's end is always written. Saves a store write per run.
            rec.updated_at_ms = now
            out.append(
                Dispatch(
                    key=rec.key,
                    name=rec.name,
                    run_id=rec.run_id,
                    worker=rec.worker,
                    input=run_input,
                    upstream=upstream,
                    previous_attempts=rec.run_attempt_count,
                    timeout_ms=rec.constraints.timeout_ms,
                    heavy=rec.constraints.is_heavy_task,
                    chain_id=rec.chain_id,
                    nodes=nodes,
                    start_at_ms=start_at,
                )
            )
            rec.run_attempt_count += 1
        return out

    def parked(self) -> dict[str, int]:
        return {worker: len(keys) for worker, keys in self._parked.items()}

    def unpark(self, worker: str) -> int:
        """``worker`` is registered again: its waiting runs become ready."""
        n = 0
        for key in self._parked.pop(worker, []):
            rec = self.tasks.get(key)
            if rec is not None and rec.state is TaskState.ENQUEUED and rec.ready_seq == -1:
                self._make_ready(rec)
                n += 1
        return n

    def _output(self, key: str) -> dict[str, Any] | None:
        rec = self.tasks.get(key)
        if rec is not None and isinstance(rec.result, Success):
            return rec.result.data
        return None

    # ------------------------------------------------------------- completion
    def complete(self, key: str, run_id: int, result: Success | Failure | Retry) -> bool:
        """Apply a run's result. A report for a run that is no longer current is ignored."""
        rec = self.tasks.get(key)
        if rec is None or rec.state is not TaskState.RUNNING or rec.run_id != run_id:
            return False
        now = self.clock.now_ms()
        retryable = isinstance(result, Retry) or (isinstance(result, Failure) and result.should_retry)
        if retryable:
            attempts = rec.run_attempt_count
            if attempts <= rec.constraints.max_retries:
                if isinstance(result, Retry) and result.delay_ms is not None:
                    delay = result.delay_ms
                else:
                    c = rec.constraints
                    delay = backoff_delay_ms(c.backoff_policy, c.backoff_delay_ms, attempts)
                rec.state = TaskState.ENQUEUED
                rec.result = result
                why = result.reason if isinstance(result, Retry) else result.message
                self.note(rec.key, f"run {rec.run_id} asked to retry ({why or 'retry requested'}): "
                                   f"retry {attempts} of {rec.constraints.max_retries} in {delay} ms")
                self._emit_completion(rec, False, f"retrying in {delay} ms: {why or 'retry requested'}", None, now)
                self._set_timer(rec, now + delay, now)
                self.fx.settled.add(rec.name)
                return True
            why = result.reason if isinstance(result, Retry) else result.message
            result = Failure(f"gave up after {attempts} attempts: {why or 'retry requested'}")
        success = isinstance(result, Success)
        if self.recurs(rec):
            rec.run_count += 1
            rec.result = result
            rec.state = TaskState.ENQUEUED
            rec.run_attempt_count = 0
            self._emit_completion(rec, success, result.message, result.data if success else None, now)
            self._schedule_recurrence(rec, now)
            self.fx.settled.add(rec.name)
            return True
        rec.run_count += 1
        self._finish(rec, TaskState.SUCCEEDED if success else TaskState.FAILED, result, now, ran=True)
        return True

    def recurs(self, rec: TaskRecord) -> bool:
        """Periodic and event-triggered tasks never finish on their own."""
        return isinstance(rec.trigger, (Periodic, ContentUri)) or rec.trigger.kind in DEVICE_TRIGGER_KINDS

    def _schedule_recurrence(self, rec: TaskRecord, now: int) -> None:
        trig = rec.trigger
        if isinstance(trig, Periodic):
            rec.period, due = periodic_next(rec.anchor_ms, trig.interval_ms, trig.flex_ms, rec.period, now)
            self._set_timer(rec, due, now)
        elif rec.refire:
            rec.refire = False
            self._set_timer(rec, now, now)
        else:
            rec.next_run_at_ms = None
            self._touch(rec, now)

    def adopt(
        self, runs: Iterable[tuple[str, int]], waiting: Container[tuple[str, int]] = ()
    ) -> list[tuple[str, int]]:
        """Right after ``restore``: runs the previous scheduler dispatched that executors
        still hold (running, queued, or finished but unreported) stay RUNNING under their
        run id, so their reports count and the tasks do not run a second time. Returns the
        runs adopted; every other held run is stale (its report will be ignored). Only
        the first call after a restore adopts anything. ``waiting``: held runs whose worker
        has not begun (queued for an executor slot)."""
        adoptable, self._adoptable = self._adoptable, {}
        now = self.clock.now_ms()
        adopted: list[tuple[str, int]] = []
        for key, run_id in runs:
            rec = self.tasks.get(key)
            if rec is None or rec.state is not TaskState.ENQUEUED or adoptable.get(key) != run_id:
                continue
            del adoptable[key]  # held twice (a run re-sent to another executor): adopt one
            rec.state = TaskState.RUNNING
            rec.run_id = run_id
            rec.ready_seq = rec.timer_seq = -1  # its queue entries go stale
            if rec.next_run_at_ms is not None and rec.next_run_at_ms <= now:
                rec.next_run_at_ms = None  # else handed over early: if lost, due then still
            rec.progress = None
            rec.started = (key, run_id) not in waiting
            rec.run_attempt_count += 1
            adopted.append((key, run_id))
        return adopted

    def run_lost(self, key: str, run_id: int) -> None:
        """The executor of a run died: run it again, not counted as an attempt."""
        rec = self.tasks.get(key)
        if rec is None or rec.state is not TaskState.RUNNING or rec.run_id != run_id:
            return
        now = self.clock.now_ms()
        rec.state = TaskState.ENQUEUED
        rec.run_attempt_count = max(0, rec.run_attempt_count - 1)
        self.note(key, f"run {run_id} re-queued: its executor lost it or gave it back (not counted as an attempt)")
        # One handed over ahead of its due time is due then still.
        self._set_timer(rec, max(now, rec.next_run_at_ms or now), now)

    def started(self, key: str, run_id: int) -> None:
        """The run's worker began (it was handed to an executor earlier): now RUNNING."""
        rec = self.tasks.get(key)
        if rec is not None and rec.state is TaskState.RUNNING and rec.run_id == run_id:
            rec.started = True

    def progress(self, key: str, run_id: int, pct: int, message: str | None) -> None:
        rec = self.tasks.get(key)
        if rec is None or rec.state is not TaskState.RUNNING or rec.run_id != run_id:
            return
        rec.started = True
        rec.progress = pct
        now = self.clock.now_ms()
        self._touch(rec, now)
        self.fx.events.append(
            TaskProgressEvent.model_construct(
                kind="progress",
                task_id=rec.key, task_name=rec.worker, progress=pct, message=message, timestamp=now
            )
        )

    def notice(self, key: str, worker: str, message: str) -> None:
        """Tell subscribers something about a task's run (a TaskProgressEvent carrying its
        current progress), without changing its state."""
        rec = self.tasks.get(key)
        self.fx.events.append(
            TaskProgressEvent.model_construct(
                kind="progress", task_id=key, task_name=worker,
                progress=(rec.progress or 0) if rec is not None else 0, message=message,
                timestamp=self.clock.now_ms(),
            )
        )

    def _emit_completion(
        self, rec: TaskRecord, success: bool, message: str | None, data: dict[str, Any] | None, now: int
    ) -> None:
        self.fx.events.append(
            TaskCompletionEvent.model_construct(  # trusted values: skip re-validation
                kind="completion",
                task_name=rec.worker,
                success=success,
                message=message,
                timestamp=now,
                task_id=rec.key,
                chain_id=rec.chain_id,
                output_data=data,
            )
        )

    def _finish(
        self,
        rec: TaskRecord,
        state: TaskState,
        result: Success | Failure | Retry | None,
        now: int,
        ran: bool = False,
    ) -> None:
        """Move ``rec`` to a terminal state and cascade to its dependents."""
        was_running = rec.state is TaskState.RUNNING
        if rec.state.is_finished:
            return
        rec.state = state
        if result is not None:
            rec.result = result
        rec.next_run_at_ms = None
        rec.timer_seq = rec.ready_seq = -1
        self.pending -= 1
        for kind in (rec.trigger.kind,):
            self._armed.get(kind, set()).discard(rec.key)
        if was_running and state is TaskState.CANCELLED:
            self.fx.cancel_runs.append((rec.key, rec.run_id))
            if not rec.started:  # still waiting on its executor: that attempt never began
                rec.run_attempt_count = max(0, rec.run_attempt_count - 1)
        self._touch(rec, now)
        self.fx.settled.add(rec.name)
        if rec.chain_id is not None:
            chain = self.chains.get(rec.chain_id)
            if chain is not None:
                chain.unfinished -= 1
                # Promotion, data passing and cascades are the chain coordinator's.
                data = result.data if isinstance(result, Success) else None
                self.fx.chain_msgs.append(("step", chain.id, chain.gen, rec.step, rec.key, state.value, data))
            self.fx.settled.add(rec.chain_id)
        if ran or state is not TaskState.SUCCEEDED:
            data = result.data if isinstance(result, Success) else None
            message = result.message if isinstance(result, (Success, Failure)) else None
            if state is TaskState.CANCELLED:
                message = "cancelled"
            self._emit_completion(rec, state is TaskState.SUCCEEDED, message, data, now)
        if state is TaskState.SUCCEEDED:
            self._promote_dependents(rec, now)
            return
        cascade = Failure(f"prerequisite {rec.key!r} {state.value.lower()}") if state is TaskState.FAILED else None
        for dep in list(self.dependents.get(rec.key, ())):
            drec = self.tasks.get(dep)
            if drec is not None and not drec.state.is_finished:
                self._finish(drec, state, cascade, now)

    def _promote_dependents(self, rec: TaskRecord, now: int) -> None:
        for dep in self.dependents.get(rec.key, ()):
            drec = self.tasks.get(dep)
            if drec is None or drec.state is not TaskState.BLOCKED:
                continue
            if all(self.tasks[p].state is TaskState.SUCCEEDED for p in drec.prereqs if p in self.tasks):
                drec.state = TaskState.ENQUEUED
                self._schedule_first(drec, now)

    # ----------------------------------------------------------------- cancel
    def cancel(self, name_or_key: str) -> int:
        """Cancel every unfinished work under a name (or one row key). Returns how many."""
        keys = list(self.names.get(name_or_key, ()))
        if not keys and name_or_key in self.tasks:
            keys = [name_or_key]
        if not keys and name_or_key in self.chains:
            keys = [k for step in self.chains[name_or_key].steps for k in step if k in self.tasks]
        return self._cancel_rows(self.tasks[k] for k in keys)

    def cancel_all(self) -> int:
        return self._cancel_rows(list(self.tasks.values()))

    def _cancel_rows(self, rows: Iterable[TaskRecord]) -> int:
        """Cancel the unfinished rows (dependents cascade); count every row cancelled."""
        now = self.clock.now_ms()
        before = self.pending
        for rec in [r for r in rows if not r.state.is_finished]:
            self._finish(rec, TaskState.CANCELLED, None, now)
        return before - self.pending

    def _remove_name(self, name: str, now: int) -> int:
        """Cancel and forget every work under ``name``; returns the highest run id it used."""
        last_run_id = 0
        for key in self.names.pop(name, []):
            rec = self.tasks.get(key)
            if rec is None:
                continue
            if not rec.state.is_finished:
                self._finish(rec, TaskState.CANCELLED, None, now)
            last_run_id = max(last_run_id, rec.run_id)
            self._drop(key)
        return last_run_id

    def _drop(self, key: str) -> None:
        rec = self.tasks.pop(key, None)
        if rec is None:
            return
        self.fx.persist.pop(key, None)
        self.fx.delete.add(key)
        for pre in rec.prereqs:
            deps = self.dependents.get(pre)
            if deps and key in deps:
                deps.remove(key)
        self.dependents.pop(key, None)

    def prune(self) -> int:
        """Forget finished rows older than ``retain_finished_ms`` (their dependents too)."""
        now = self.clock.now_ms()
        horizon = now - self.config.retain_finished_ms
        def old(key: str) -> bool:
            rec = self.tasks.get(key)
            return rec is None or (rec.state.is_finished and rec.updated_at_ms < horizon)

        stale = [
            name
            for name, keys in self.names.items()
            if all(old(k) and self.tasks[k].chain_id is None for k in keys)
        ]
        for name in stale:
            for key in self.names.pop(name):
                self._drop(key)
        stale_chains = [cid for cid, c in self.chains.items() if all(old(k) for s in c.steps for k in s)]
        for cid in stale_chains:
            self._remove_chain(cid, now)
        return len(stale) + len(stale_chains)

    # ----------------------------------------------------------------- chains
    def submit_chain(self, chain_id: str, policy: ExistingPolicy, steps: list[list[dict[str, Any]]]) -> Outcome:
        """Validate a whole chain and insert it, or reject it whole with nothing stored.

        Each task dict carries: id, id_explicit, worker, input, constraints (a
        Constraints), input_merger. An auto-generated id that is already taken (a reused
        TaskRequest) gets a fresh one; an explicit id that is taken is an error.
        """
        now = self.clock.now_ms()
        try:
            check_id(chain_id, self.config, "chain id")
            if not steps:
                raise InvalidParameters("chain: is empty (begin_with needs at least one TaskRequest)")
            total = sum(len(step) for step in steps)
            if total > MAX_CHAIN_TASKS:
                raise InvalidParameters(f"chain: {total} tasks, more than the limit of {MAX_CHAIN_TASKS}")
            if chain_id in self.names:
                raise InvalidParameters(f"chain id: {chain_id!r} is already the id of a task")
            existing = self.chains.get(chain_id)
            unfinished = existing is not None and not self._chain_finished(existing)
            if unfinished and policy is ExistingPolicy.KEEP:
                return Outcome(ScheduleResult.SUCCESS, f"kept existing unfinished chain {chain_id!r}")
            replaced = set() if existing is None else {k for st in existing.steps for k in st}
            seen: set[str] = set()
            for n, step in enumerate(steps, 1):
                if not step:
                    raise InvalidParameters(f"chain step {n}: a parallel step needs at least one TaskRequest")
                for task in step:
                    tid = task["id"]
                    check_id(tid, self.config, f"step {n} task id")
                    taken = tid in seen or ((tid in self.tasks or tid in self.names) and tid not in replaced)
                    if taken and task.get("id_explicit", True):
                        raise InvalidParameters(f"step {n} task id: {tid!r} is used twice or already in use")
                    if taken:
                        task["id"] = tid = str(uuid.uuid4())
                    seen.add(tid)
                    check_input(task.get("input"), self.config, f"step {n} input")
                    if not (self.is_registered(task["worker"]) or self.is_known(task["worker"])):
                        raise InvalidParameters(
                            f"step {n} worker_class_name: {task['worker']!r} is not a registered worker"
                        )
            self._admit(total)
        except KmprayError as exc:
            return outcome_for(exc)

        last_run_ids = self._remove_chain(chain_id, now) if existing is not None else {}
        chain = ChainRecord(chain_id, [[t["id"] for t in step] for step in steps], now)
        chain.unfinished = total
        self.chains[chain_id] = chain
        self.fx.chains[chain_id] = chain
        mergers = {t["id"]: t["input_merger"] for step in steps for t in step
                   if t.get("input_merger", "OVERWRITE") != "OVERWRITE"}
        self.fx.chain_msgs.append(("plan", chain_id, chain.gen, chain.steps, mergers))
        for n, step in enumerate(steps):
            for task in step:
                rec = TaskRecord(
                    key=task["id"],
                    name=task["id"],
                    worker=task["worker"],
                    trigger=_ONE_TIME,
                    constraints=self._platform_constraints(task["id"], task["constraints"]),
                    state=TaskState.ENQUEUED if n == 0 else TaskState.BLOCKED,
                    created_at_ms=now,
                    updated_at_ms=now,
                    input=task.get("input"),
                    chain_id=chain_id,
                    input_merger=InputMerger(task.get("input_merger", "OVERWRITE")),
                    step=n,
                    run_id=last_run_ids.get(task["id"], 0),
                )
                self.tasks[rec.key] = rec
                self.names[rec.key] = [rec.key]
                self.pending += 1
                self._touch(rec, now)
                if n == 0:
                    self._schedule_first(rec, now)
        return Outcome(ScheduleResult.SUCCESS)

    def _chain_finished(self, chain: ChainRecord) -> bool:
        return chain.unfinished == 0

    def _remove_chain(self, chain_id: str, now: int) -> dict[str, int]:
        """Cancel and forget a chain; returns the run ids its tasks used (keys may be reused)."""
        chain = self.chains.pop(chain_id, None)
        if chain is None:
            return {}
        self.fx.chains.pop(chain_id, None)
        self.fx.delete_chains.add(chain_id)
        keys = [k for step in chain.steps for k in step if k in self.tasks]
        self._cancel_rows([self.tasks[k] for k in keys])
        run_ids = {}
        for key in keys:
            run_ids[key] = self.tasks[key].run_id
            self.names.pop(key, None)
            self._drop(key)
        return run_ids

    def chain_actions(self, actions: Iterable[Message]) -> None:
        """Apply a coordinator's decisions to the tasks of the chain generation they name;
        only BLOCKED tasks are promoted and only unfinished ones cascaded (idempotent)."""
        now = self.clock.now_ms()
        for action in actions:
            kind, chain_id, gen = action[0], action[1], action[2]
            chain = self.chains.get(chain_id)
            if chain is None or chain.gen != gen:
                continue  # replaced or pruned meanwhile
            if kind == "promote":
                _k, _c, _g, step, upstream, errors = action
                for key in chain.steps[step]:
                    rec = self.tasks.get(key)
                    if rec is None or rec.state is not TaskState.BLOCKED:
                        continue
                    if key in errors:
                        self._finish(rec, TaskState.FAILED, Failure(errors[key]), now)
                        continue
                    rec.upstream = upstream.get(key) or None
                    rec.state = TaskState.ENQUEUED
                    self._schedule_first(rec, now)
            elif kind == "cascade":
                _k, _c, _g, from_step, state, reason = action
                final = TaskState(state)
                cause = Failure(reason) if final is TaskState.FAILED else None
                for later in chain.steps[from_step:]:
                    for key in later:
                        rec = self.tasks.get(key)
                        if rec is not None and not rec.state.is_finished:
                            self._finish(rec, final, cause, now)

    def chain_snapshot(self, index: int, pool: int) -> dict[str, dict[str, Any]]:
        """Unfinished chains owned by coordinator ``index``: what a restarted coordinator
        (or one facing a restarted scheduler) rebuilds its plans from."""
        out: dict[str, dict[str, Any]] = {}
        for chain in self.chains.values():
            if chain.unfinished == 0 or coordinator_index(chain.id, pool) != index:
                continue
            tasks: dict[str, tuple[str, dict[str, Any] | None]] = {}
            mergers: dict[str, str] = {}
            for step in chain.steps:
                for key in step:
                    rec = self.tasks.get(key)
                    if rec is None:
                        continue
                    data = rec.result.data if isinstance(rec.result, Success) else None
                    tasks[key] = (rec.state.value, data if rec.state is TaskState.SUCCEEDED else None)
                    if rec.input_merger is not InputMerger.OVERWRITE:
                        mergers[key] = rec.input_merger.value
            out[chain.id] = {"gen": chain.gen, "steps": chain.steps, "mergers": mergers, "tasks": tasks}
        return out

    def chain_info(self, chain_id: str) -> ChainInfo | None:
        chain = self.chains.get(chain_id)
        if chain is None:
            return None
        steps = [[self.tasks[k].info() for k in step if k in self.tasks] for step in chain.steps]
        state = chain_state([i.state for step in steps for i in step])
        return ChainInfo.model_construct(id=chain_id, state=state, steps=steps)

    # ------------------------------------------------------------ event triggers
    def watched_uris(self) -> set[str]:
        """The ``file://`` URIs of armed ContentUri tasks (for the file watcher)."""
        return {
            self.tasks[k].trigger.uri_string  # type: ignore[union-attr]
            for k in self._armed.get("content_uri", ())
            if k in self.tasks and self.tasks[k].trigger.uri_string.startswith("file:")  # type: ignore[union-attr]
        }

    def fire(self, kind: str, uri: str | None = None) -> int:
        """A device-state transition or content change: queue each armed task once."""
        now = self.clock.now_ms()
        n = 0
        for key in list(self._armed.get(kind, ())):
            rec = self.tasks.get(key)
            if rec is None or rec.state.is_finished:
                continue
            trig = rec.trigger
            if isinstance(trig, ContentUri) and (
                uri is None or not uri_matches(trig.uri_string, uri, trig.trigger_for_descendants)
            ):
                continue
            n += 1
            if rec.state is TaskState.RUNNING:
                rec.refire = True
            elif rec.state is TaskState.ENQUEUED and rec.next_run_at_ms is None:
                self._set_timer(rec, now, now)
            # already queued or blocked: the change coalesces into that run
        return n


def _decision(text: str | tuple[Any, ...]) -> str:
    if isinstance(text, str):
        return text
    _kind, run_id, where, node = text  # ("handed", run id, executor, node)
    return f"run {run_id} handed to {where}" + (f" on node {node[:12]}" if node else "")


def _stamp(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}"


def _append_number(key: str) -> int:
    """Work appended under a name is stored as name#2, name#3, ...: its place in line."""
    return int(key.rsplit("#", 1)[1]) if "#" in key and key.rsplit("#", 1)[1].isdigit() else 1


def outcome_for(exc: KmprayError) -> Outcome:
    if isinstance(exc, RejectedByPolicy):
        return Outcome(ScheduleResult.REJECTED_OS_POLICY, str(exc))
    if isinstance(exc, InvalidParameters):
        return Outcome(ScheduleResult.REJECTED_INVALID_PARAMS, str(exc))
    return Outcome(ScheduleResult.FAILED_UNKNOWN, str(exc))


__all__ = ["Dispatch", "Effects", "Outcome", "SchedulerCore", "outcome_for"]
