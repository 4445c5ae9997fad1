"""SchedulerCore: the scheduler's decisions over plain data, driven by an injected clock.

It owns the task table, unique-work names, the timer and ready queues (``queues.py``),
retries and backoff, dependency promotion and cascades; every state change goes
through the state machine (``lifecycle.py``). It performs no I/O: every call records
its effects (``effects.py``: rows to persist or delete, runs to cancel, events to
emit, names whose waiters may wake), which the SchedulerActor drains and performs.
One thread owns a core; nothing here is thread-safe on purpose.

Its other concerns are mixins, one file each: ``unique_work.py`` (enqueue under a name,
existing-work policies, admission), ``restore.py`` (rebuild after a restart,
adopt held runs, contain damaged rows), ``chain_rules.py`` (chains), ``conditions.py``
(device states, event triggers, parked workers, unplaced runs), ``explain.py``
(what users see of a task and why it waits) and ``run_reports.py`` (what a run's
executor says besides its result: began, progress, a notice, the run lost).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from . import lifecycle
from ._model import trusted
from .artifacts import public, to_json
from .backoff import backoff_delay_ms
from .chain_record import ChainRecord
from .chain_rules import ChainRules
from .clock import Clock, SystemClock
from .conditions import Conditions
from .config import EngineConfig
from .device import DeviceState
from .effects import Dispatch, Effects, Outcome, outcome_for
from .enums import TaskState
from .errors import InvalidParameters
from .events import TaskCompletionEvent
from .explain import Explaining
from .merging import merge
from .platforms import PlatformProfile
from .protocol import Step
from .queues import Deadlines, ReadyQueue, TimerQueue, sequence
from .records import TaskRecord
from .restore import Restoring
from .results import Failure, Retry, Success
from .run_reports import RunReports
from .run_stats import RunStats
from .task_table import TaskTable
from .timing import HAND_ON_DEPTH, TURN_BUDGET
from .triggers import (
    DEVICE_TRIGGER_KINDS,
    ContentUri,
    Exact,
    OneTime,
    Periodic,
    Windowed,
    periodic_next,
)
from .unique_work import UniqueWork

log = logging.getLogger("kmpray.engine")


class SchedulerCore(UniqueWork, Restoring, ChainRules, Conditions, Explaining, RunReports):
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
        self._parked: dict[str, dict[str, None]] = {}  # worker -> its parked keys, in order
        self.tasks: TaskTable = TaskTable()  # with its counts per shown state (records.py)
        self.names: dict[str, list[str]] = {}  # name -> row keys, oldest first
        self.dependents: dict[str, list[str]] = {}
        self.chains: dict[str, ChainRecord] = {}
        seq = sequence()
        self._timers = TimerQueue(seq)
        self._ready = ReadyQueue(seq, self.config.qos_aging_ms)
        self._ready_heavy = ReadyQueue(seq, self.config.qos_aging_ms)
        self._deadlines = Deadlines()
        self._armed: dict[str, set[str]] = {}  # event trigger kind -> keys waiting for it
        self._append_seq: dict[str, int] = {}
        self.devices: dict[str, DeviceState] = {}  # node id -> state, pushed by the oracle
        self._gated: set[str] = set()  # ready tasks that no node satisfies right now
        self._unplaced: set[str] = set()  # eligible, but no executor room on their nodes
        self.pending = 0  # unfinished tasks, for admission control
        # After a restore: the lowest run id a run dispatched before the restart can carry,
        # per task that may have one (see ``adopt``); ids handed out now are above run_floor.
        self._adoptable: dict[str, int] = {}
        self.run_floor = 0
        self.decisions: deque[tuple[int, str, Any]] = deque(maxlen=self.config.decision_log_size)
        self._waits: dict[str, tuple[str, int, bool]] = {}  # key -> (reason kind, since, warned)
        self.stats = RunStats()  # live figures: status() and the dashboard
        self.real_time = isinstance(clock, SystemClock)  # executors can time enqueue -> start
        # Records one pump turn may take off each queue without handing them out (see
        # TURN_BUDGET); None: no bound, as in virtual time, where a turn is a due instant
        # and must finish it. ``turn_cut``: the last turn stopped at it with work left.
        self.turn_budget: int | None = TURN_BUDGET if self.real_time else None
        self.turn_cut = False
        self._passed_left: int | None = None  # of this turn's budget (None: no bound)
        self.fx = Effects()

    # ----------------------------------------------------------------- effects
    def drain(self) -> Effects:
        fx, self.fx = self.fx, Effects()
        return fx

    def _touch(self, rec: TaskRecord, now: int) -> None:
        if rec.updated_at_ms != now:
            rec.updated_at_ms = now
            if rec.table is not None:
                rec.table.touched(rec)
        self.fx.persist[rec.key] = rec

    # ------------------------------------------------------------------ reads
    def latest(self, name_or_key: str) -> TaskRecord | None:
        """The newest row under a name (or the row of a key), to read: a finished row kept
        in the store only is read from there, not put back in memory (task_table.py)."""
        keys = self.names.get(name_or_key)
        key = keys[-1] if keys else name_or_key
        rec = self.tasks.get(key)
        if rec is None and key in self.tasks.cold:
            rec = self.tasks.load([key]).get(key)
        return rec

    def is_settled(self, name: str) -> bool:
        if name in self.chains:
            return self._chain_finished(self.chains[name])
        rec = self.latest(name)
        return rec is None or rec.state.is_finished

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in TaskState}
        out.update((s.value, n) for s, n in self.tasks.shown.items())
        return out

    def next_due_ms(self, lead_ms: int = 0) -> int | None:
        """When ``tick(lead_ms)`` next has work: half the lead before the next timer (so
        each tick hands over about half a lead's worth of timers), or a window's end."""
        due, end = self._timers.next_due(self.tasks), self._deadlines.next()
        candidates = ([] if due is None else [due - lead_ms // 2]) + ([] if end is None else [end])
        return min(candidates) if candidates else None

    def ready_count(self) -> int:
        return len(self._ready) + len(self._ready_heavy)

    def heavy_ready_count(self, exact: bool = False) -> int:
        """Heavy runs waiting for a heavy worker: an upper bound (the heap keeps entries of
        runs cancelled meanwhile), or ``exact``ly, counting only live entries."""
        return len(self._ready_heavy.live(self.tasks)) if exact else len(self._ready_heavy)

    # ------------------------------------------------------------------- time
    def _schedule_first(self, rec: TaskRecord, now: int, ready_now: bool = False) -> None:
        """``rec``'s first due time. ``ready_now``: the caller hands ready runs over next
        (an enqueue: the intake's commit wakes the dispatch loop), so a run-now task goes
        straight to its ready queue, where the next tick would put it, with no timer pushed
        and popped on the way."""
        trig = rec.trigger
        if isinstance(trig, OneTime):
            if ready_now and not trig.initial_delay_ms:
                rec.next_run_at_ms = now
                self.stats.timer_fired(now, now)
                self._make_ready(rec)
                self._touch(rec, now)
            else:
                self._set_timer(rec, now + trig.initial_delay_ms, now)
        elif isinstance(trig, Periodic):
            rec.anchor_ms = now
            rec.period = 0
            self._set_timer(rec, now, now)
        elif isinstance(trig, Exact):
            self._set_timer(rec, max(trig.at_epoch_millis, now), now)
        elif isinstance(trig, Windowed):
            rec.deadline_ms = trig.end_epoch_millis
            self._deadlines.add(trig.end_epoch_millis, rec.key)
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
        self._timers.set(rec, due)
        if store:
            self._touch(rec, now)

    def _make_ready(self, rec: TaskRecord) -> None:
        (self._ready_heavy if rec.constraints.is_heavy_task else self._ready).push(rec)

    def tick(self, lead_ms: int = 0) -> None:
        """Move due timers to the ready queue (work no node satisfies now: to its gate,
        ``gated_on_falling_due``) and expire passed windows. ``lead_ms``: also
        timers due that soon; their runs are handed over early and begin at their due
        time on the executor's clock (see ``Dispatch.start_at_ms``)."""
        now = self.clock.now_ms()
        budget = self.turn_budget
        self.turn_cut = False
        self._passed_left = budget
        places: dict[tuple[int, str], tuple[str, ...] | None] = {}
        for n, rec in enumerate(self._timers.pop_due(now + lead_ms, self.tasks), 1):
            self.stats.timer_fired(now, rec.next_run_at_ms)
            if not self.gated_on_falling_due(rec, places):  # (conditions.py)
                self._make_ready(rec)
            if n == budget:
                due = self._timers.next_due(self.tasks)
                self.turn_cut = due is not None and due <= now + lead_ms
                break
        for key in self._deadlines.passed(now):
            ends = self.tasks.get(key)
            if ends is not None and ends.state is TaskState.ENQUEUED and ends.deadline_ms is not None:
                self._finish(ends, TaskState.FAILED, Failure("window expired"), now)

    def take_ready(self, limit: int, heavy_limit: int = 0) -> list[Dispatch]:
        """Pop up to ``limit`` light and ``heavy_limit`` heavy runs, each in priority order,
        and hand them over (RUNNING, not begun)."""
        out = self._take(self._ready, limit)
        if heavy_limit:
            out += self._take(self._ready_heavy, heavy_limit)
        return out

    def _take(self, ready: ReadyQueue, limit: int) -> list[Dispatch]:
        now = self.clock.now_ms()
        out: list[Dispatch] = []
        while len(out) < limit and self._passed_left != 0 and (rec := ready.pop(self.tasks)) is not None:
            if not self.is_registered(rec.worker):
                if self.is_known(rec.worker):
                    self._parked.setdefault(rec.worker, {})[rec.key] = None
                    self.note(rec.key, f"parked: worker {rec.worker!r} is not registered (again) yet")
                else:
                    unknown = Failure(f"worker {rec.worker!r} is not registered")
                    self._finish(rec, TaskState.FAILED, unknown, now)
                if self._pass_over():
                    break
                continue
            nodes = self.eligible_nodes(rec)
            if nodes == ():  # no node satisfies it now: wait for a device state change
                self._wait_at_gate(rec)
                if self._pass_over():
                    break
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
            if run_input is None and upstream and not rec.input_stored:
                run_input = to_json(upstream)  # no input of its own: large values as descriptors
            due = rec.next_run_at_ms
            start_at = due if due is not None and due > now else None
            # Not persisted: a restarted scheduler adopts the run from its executor (or runs it
            # again), and the run's end is always written. Saves a store write per run.
            first = rec.run_count == 0 and rec.run_attempt_count == 0 and rec.chain_id is None and start_at is None
            at_once = first and isinstance(rec.trigger, OneTime) and not rec.trigger.initial_delay_ms
            rec.run_id = self._run_base(rec)
            lifecycle.dispatch(rec, start_at, now)
            self.stats.handed_over(now, rec.created_at_ms if at_once else None)
            out.append(
                Dispatch(
                    key=rec.key,
                    name=rec.name,
                    run_id=rec.run_id,
                    worker=rec.worker,
                    input=run_input,
                    upstream=upstream,
                    previous_attempts=rec.run_attempt_count - 1,
                    timeout_ms=rec.constraints.timeout_ms,
                    heavy=rec.constraints.is_heavy_task,
                    chain_id=rec.chain_id,
                    nodes=nodes,
                    start_at_ms=start_at,
                    crashes=rec.crashes,
                    input_stored=rec.input_stored > 0,
                    enqueued_ms=rec.created_at_ms if at_once and self.real_time else None,
                    then=None if rec.chain_id is None or rec.constraints.is_heavy_task or rec.crashes
                    else self._handed_with(rec, HAND_ON_DEPTH),
                )
            )
        return out

    def _pass_over(self) -> bool:
        """One ready run set aside rather than handed out, of this turn's budget. True when
        that was the last of it: the turn stops, cut short if runs are still ready (the
        caller comes back for them)."""
        if self._passed_left is None:
            return False
        self._passed_left -= 1
        if self._passed_left > 0:
            return False
        self.turn_cut = self.turn_cut or self.ready_count() > 0  # (or tick's timers left)
        return True

    def _run_base(self, rec: TaskRecord) -> int:
        """The id ``rec``'s next run counts up from: its last, or, if higher, the floor
        above every earlier scheduler's ids (``run_floor``, restore.py). A dispatch takes
        the id after it; so does a chain task handed along (``ChainRules.follow`` checks it)."""
        return max(rec.run_id, self.run_floor)

    def _handed_with(self, rec: TaskRecord, depth: int) -> Dispatch | None:
        """The successor that goes along with ``rec``'s run, and its own, ``depth`` steps
        deep: a sequential stretch of a chain runs on one executor with no round trip
        between steps (one hop per step; ChainRules.successor says when that is allowed)."""
        nxt = self.successor(rec) if depth > 0 else None
        if nxt is None:
            return None
        return Dispatch(
            key=nxt.key, name=nxt.name, run_id=self._run_base(nxt) + 1, worker=nxt.worker,
            input=nxt.input, upstream=None,
            previous_attempts=nxt.run_attempt_count, timeout_ms=nxt.constraints.timeout_ms, heavy=False,
            chain_id=nxt.chain_id, then=self._handed_with(nxt, depth - 1), input_merger=nxt.input_merger.value,
            input_stored=nxt.input_stored > 0,
        )

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
        rec.crashes = 0  # it reported: whatever killed runs before was not (only) this task
        rec.noted_wait = False
        if isinstance(result, Retry) or (isinstance(result, Failure) and result.should_retry):
            why = (result.reason if isinstance(result, Retry) else result.message) or "retry requested"
            attempts = rec.run_attempt_count
            if attempts > rec.constraints.max_retries:
                result = Failure(f"gave up after {attempts} attempt{'s' * (attempts != 1)}: {why}")
            else:
                if isinstance(result, Retry) and result.delay_ms is not None:
                    delay = result.delay_ms
                else:
                    c = rec.constraints
                    delay = backoff_delay_ms(c.backoff_policy, c.backoff_delay_ms, attempts)
                lifecycle.retry(rec, result)
                self.stats.ended(rec.worker, "retried")
                self.note(rec.key, f"run {rec.run_id} asked to retry ({why}): "
                                   f"retry {attempts} of {rec.constraints.max_retries} in {delay} ms")
                self._emit_completion(rec, False, f"retrying in {delay} ms: {why}", None, now)
                self._set_timer(rec, now + delay, now)
                self.fx.settled.add(rec.name)
                return True
        success = isinstance(result, Success)
        assert not isinstance(result, Retry)
        self.stats.ended(rec.worker, "succeeded" if success else "failed")
        if self.recurs(rec):
            lifecycle.recur(rec, result)
            self._emit_completion(rec, success, result.message, result.data if isinstance(result, Success) else None, now)
            self._schedule_recurrence(rec, now)
            self.fx.settled.add(rec.name)
            return True
        self._finish(rec, TaskState.SUCCEEDED if success else TaskState.FAILED, result, now, ran=True)
        return True

    def recurs(self, rec: TaskRecord) -> bool:
        """Periodic and event-triggered tasks never finish on their own."""
        return isinstance(rec.trigger, (Periodic, ContentUri)) or rec.trigger.kind in DEVICE_TRIGGER_KINDS

    def waited_out(self, rec: TaskRecord, runs_before: int) -> bool:
        """What ``wait`` waits for: the task finished or, one that recurs, a run after its
        ``runs_before``-th ended (the scheduler's wait, wait_many and its waiters' wake)."""
        return rec.state.is_finished or (self.recurs(rec) and rec.run_count > runs_before)

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

    def _emit_completion(
        self, rec: TaskRecord, success: bool, message: str | None, data: dict[str, Any] | None, now: int
    ) -> None:
        self.fx.events.append(
            trusted(TaskCompletionEvent, {  # the engine's own values: no re-validation
                "kind": "completion", "task_name": rec.worker, "success": success, "message": message,
                "timestamp": now, "task_id": rec.key, "chain_id": rec.chain_id,
                "output_data": public(data),  # descriptors without payload (kmpray/artifacts.py)
            })
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
        if rec.state.is_finished:
            return
        was_running = lifecycle.finish(rec, state, result, ran)
        self.pending -= 1
        if armed := self._armed.get(rec.trigger.kind):  # rarely any: no empty set built per task
            armed.discard(rec.key)
        # Its waits end with it: a REPLACE reuses the key, and the new work must not be
        # released by a gate, room or worker the old one was waiting for.
        self._gated.discard(rec.key)
        self._unplaced.discard(rec.key)
        if parked := self._parked.get(rec.worker):  # rarely any: no empty dict built per task
            parked.pop(rec.key, None)
        if was_running and state is TaskState.CANCELLED:
            self.fx.cancel_runs.append((rec.key, rec.run_id))
        self._touch(rec, now)
        self.fx.settled.add(rec.name)
        if rec.chain_id is not None:
            chain = self.chains.get(rec.chain_id)
            if chain is not None:
                chain.unfinished -= 1
                # Promotion, data passing and cascades are the chain coordinator's.
                data = result.data if isinstance(result, Success) else None
                self.fx.chain_msgs.append(Step(chain.id, chain.gen, rec.step, rec.key, state.value, data))
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
                lifecycle.promote(drec)
                self._schedule_first(drec, now)

    # ----------------------------------------------------------------- cancel
    def cancel(self, name_or_key: str) -> int:
        """Cancel every unfinished work under a name (or one row key). Returns how many."""
        keys = list(self.names.get(name_or_key, ()))
        if not keys and name_or_key in self.tasks:
            keys = [name_or_key]
        if not keys and name_or_key in self.chains:
            keys = [k for step in self.chains[name_or_key].steps for k in step if k in self.tasks]
        return self.cancel_rows(self.tasks[k] for k in keys if k in self.tasks)  # cold rows: finished

    def cancel_rows(self, rows: Iterable[TaskRecord]) -> int:
        """Cancel the unfinished rows (dependents cascade); count every row cancelled."""
        now = self.clock.now_ms()
        before = self.pending
        for rec in [r for r in rows if not r.state.is_finished]:
            self._finish(rec, TaskState.CANCELLED, None, now)
        return before - self.pending


__all__ = ["Dispatch", "Effects", "Outcome", "SchedulerCore", "outcome_for"]
