"""A chain taken in two phases, so that a large one need not hold the scheduler's loop in
one turn. A chain is accepted whole or refused whole, so it cannot be cut into calls as a
batch of tasks is (``enqueue_many``'s slices); but most of its intake needs nothing from
the engine's state, and only that part is done in slices:

- ``check(n)``, for the next ``n`` tasks, as often as it takes (the scheduler serves
  other work in between): each task's id, input, worker, merger and constraints, as
  they are; its row is built, nothing is inserted.
- ``admit()``, in one turn: the chain against the engine as it is then (its id, the
  policy towards a chain of that id, task ids in use, admission control), then every
  row inserted, or nothing.

``SchedulerCore.submit_chain`` does both at once (a small chain, the tests).
Until session 47 a 99,000-task chain was checked and inserted in one turn."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .chain import MAX_CHAIN_TASKS
from .chain_record import ChainRecord
from .effects import Outcome, outcome_for
from .enums import ExistingPolicy, InputMerger, ScheduleResult, TaskState
from .errors import InvalidParameters, KmprayError
from .protocol import Plan
from .records import TaskRecord
from .triggers import OneTime
from .validation import check_id, check_input, shown

if TYPE_CHECKING:
    from .core_protocol import Core

_ONE_TIME = OneTime()
_MERGERS = {m.value: m for m in InputMerger}

#: Parses one task's payload as it came over the wire (its constraints); raises
#: InvalidParameters naming the task. None: the tasks come parsed (the core's own API).
Parse = Callable[[dict[str, Any]], dict[str, Any]]


class ChainIntake:
    def __init__(self, core: Core, chain_id: Any, policy: Any, steps: Any,
                 parse: Parse | None = None) -> None:
        self.core, self.chain_id, self.parse = core, chain_id, parse
        self.policy = policy
        self.rows: list[TaskRecord] = []
        self.explicit: list[bool] = []
        self.failed: Outcome | None = None
        self._seen: set[str] = set()
        self._tasks: list[tuple[int, Any]] = []
        self._done = 0
        self._now = core.clock.now_ms()
        self._steps = 0
        self._guard(self._header, steps)

    def _header(self, steps: Any) -> None:
        check_id(self.chain_id, self.core.config, "chain id")
        self.policy = ExistingPolicy(self.policy)
        if not steps:
            raise InvalidParameters("chain: is empty (begin_with needs at least one TaskRequest)")
        total = sum(len(step) for step in steps)
        if total > MAX_CHAIN_TASKS:
            raise InvalidParameters(f"chain: {total} tasks, more than the limit of {MAX_CHAIN_TASKS}")
        for n, step in enumerate(steps, 1):
            if not step:
                raise InvalidParameters(f"chain step {n}: a parallel step needs at least one TaskRequest")
        self._tasks = [(n, task) for n, step in enumerate(steps) for task in step]
        self._steps = len(steps)

    def _guard(self, work: Callable[..., None], *args: Any) -> None:
        """``work``, its rejection kept as the intake's answer (every rejection says what
        and where; a payload of the wrong shape is named by its error's type)."""
        try:
            work(*args)
        except KmprayError as exc:
            self.failed = outcome_for(exc)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.failed = Outcome(ScheduleResult.REJECTED_INVALID_PARAMS, f"{type(exc).__name__}: {exc}")

    @property
    def remaining(self) -> int:
        """Tasks still to check (0 once refused)."""
        return 0 if self.failed is not None else len(self._tasks) - self._done

    def check(self, n: int) -> None:
        """The next ``n`` tasks, each on its own: a refusal ends the intake (``failed``)."""
        end = min(len(self._tasks), self._done + n)
        self._guard(self._check, end)
        self._done = end

    def _check(self, end: int) -> None:
        core, config, now, seen = self.core, self.core.config, self._now, self._seen
        known = core.is_registered
        for n, task in self._tasks[self._done:end]:
            if self.parse is not None:
                task = self.parse(task)
            tid = task["id"]
            step = n + 1
            check_id(tid, config, f"step {step} task id")
            explicit = task.get("id_explicit", True)
            if tid in seen:
                if explicit:
                    raise InvalidParameters(f"step {step} task id: {tid!r} is used twice or already in use")
                tid = str(uuid.uuid4())
            seen.add(tid)
            check_input(task.get("input"), config, f"step {step} input")
            worker = task["worker"]
            if not (known(worker) or core.is_known(worker)):
                raise InvalidParameters(
                    f"step {step} worker_class_name: {shown(worker)} is not a registered worker")
            merger = _MERGERS.get(task.get("input_merger", "OVERWRITE"))
            if merger is None:  # read while the rows went in until session 47: half a chain stored
                given = shown(task.get("input_merger"))
                raise InvalidParameters(f"step {step} task {shown(tid)}: input_merger: {given} is not one of "
                                        f"{', '.join(_MERGERS)}")
            self.rows.append(TaskRecord(
                key=tid,
                name=tid,
                worker=worker,
                trigger=_ONE_TIME,
                constraints=core._platform_constraints(tid, task["constraints"]),
                state=TaskState.ENQUEUED if n == 0 else TaskState.BLOCKED,
                created_at_ms=now,
                updated_at_ms=now,
                input=task.get("input"),
                chain_id=self.chain_id,
                input_merger=merger,
                step=n,
            ))
            self.explicit.append(explicit)

    def admit(self) -> Outcome:
        """The checked chain against the engine as it is now, inserted whole; or the
        refusal. Call once every task is checked (``remaining == 0``)."""
        if self.failed is not None:
            return self.failed
        assert self._done == len(self._tasks), "admit() before every task was checked"
        core, chain_id = self.core, self.chain_id
        now = core.clock.now_ms()
        try:
            if core._name_taken(chain_id):
                raise InvalidParameters(f"chain id: {chain_id!r} is already the id of a task")
            existing = core.chains.get(chain_id)
            unfinished = existing is not None and not core._chain_finished(existing)
            if unfinished and self.policy is ExistingPolicy.KEEP:
                return Outcome(ScheduleResult.SUCCESS, f"kept existing unfinished chain {chain_id!r}")
            replaced = set() if existing is None else {k for st in existing.steps for k in st}
            tasks, taken = core.tasks, core._name_taken
            for rec, explicit in zip(self.rows, self.explicit, strict=True):
                tid = rec.key
                if (tid in tasks or taken(tid)) and tid not in replaced:
                    if explicit:
                        raise InvalidParameters(
                            f"step {rec.step + 1} task id: {tid!r} is used twice or already in use")
                    rec.key = rec.name = str(uuid.uuid4())
            core._admit(len(self.rows))
        except KmprayError as exc:
            return outcome_for(exc)
        last_run_ids = core._remove_chain(chain_id, now) if existing is not None else {}
        steps: list[list[str]] = [[] for _ in range(self._steps)]
        for rec in self.rows:
            steps[rec.step].append(rec.key)
        chain = ChainRecord(chain_id, steps, now)
        chain.unfinished = len(self.rows)
        core.chains[chain_id] = chain
        core.fx.chains[chain_id] = chain
        mergers = {rec.key: rec.input_merger.value for rec in self.rows
                   if rec.input_merger is not InputMerger.OVERWRITE}
        core.fx.chain_msgs.append(Plan(chain_id, chain.gen, chain.steps, mergers))
        floor, table, names = core.run_floor, core.tasks, core.names
        persist, stats = core.fx.persist, core.stats
        for rec in self.rows:
            rec.created_at_ms = rec.updated_at_ms = now
            rec.run_id = max(last_run_ids.get(rec.key, 0), floor)
        table.add_new(self.rows)
        names.update({rec.key: [rec.key] for rec in self.rows})
        persist.update({rec.key: rec for rec in self.rows})
        for worker, n in Counter(rec.worker for rec in self.rows).items():
            stats.enqueued(worker, n)
        _ready_now(core, [rec for rec in self.rows if rec.step == 0], now)
        core.pending += len(self.rows)
        return Outcome(ScheduleResult.SUCCESS)


def _ready_now(core: Core, recs: list[TaskRecord], now: int) -> None:
    """The first step is ready at once, as an enqueue's run is (the intake's commit pumps
    next): ``core._schedule_first(rec, now, ready_now=True)`` for each (run-now one-time
    rows, stored as of ``now``), the ready queues filled in one go. A row no node
    satisfies now goes straight to the gated set, where the dispatch turns would put it
    on their first look: 49,500 gated rows were looked at 2,000 a turn, ~0.75 s of turns
    during which every timer due after them waited (the ready queue is in due order)."""
    light: list[TaskRecord] = []
    heavy: list[TaskRecord] = []
    places: dict[tuple[int, str], tuple[str, ...] | None] = {}  # the rows of a chain share a few
    for rec in recs:
        rec.next_run_at_ms = now
        if not core.gated_on_falling_due(rec, places):  # (conditions.py)
            (heavy if rec.constraints.is_heavy_task else light).append(rec)
    core.stats.timer_fired(now, now, len(recs))
    core._ready.push_many(light)
    core._ready_heavy.push_many(heavy)
