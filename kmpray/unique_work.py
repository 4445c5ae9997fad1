"""Unique work: a task enqueued under a name (``task_id``), what happens to work already
under that name (KEEP, REPLACE, APPEND, APPEND_OR_REPLACE, as in WorkManager), admission
control, constraints a platform ignores, and forgetting finished rows. A mixin of
``SchedulerCore`` (engine.py)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from . import lifecycle
from .artifacts import has_descriptors
from .constraints import Constraints
from .effects import Outcome, outcome_for
from .enums import FINISHED, ScheduleResult, TaskState
from .errors import InvalidParameters, KmprayError, RejectedByPolicy
from .policies import Action, decide
from .records import TaskRecord
from .results import Success
from .triggers import DEVICE_TRIGGER_KINDS, Periodic, Trigger
from .validation import check_id, check_input, check_trigger, shown

if TYPE_CHECKING:
    from .core_protocol import Core

log = logging.getLogger("kmpray.engine")
_RAISED_BACKOFFS: set[int] = set()  # backoff values said raised to a platform minimum
_IGNORED_SAID: set[str] = set()  # sets of constraint fields said ignored by the platform

ACCEPTED = Outcome(ScheduleResult.SUCCESS)  # frozen: one for every accepted task


class UniqueWork:
    def submit(
        self: Core,
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
                raise InvalidParameters(f"worker_class_name: {shown(worker)} is not a registered worker")
            self._admit(1)
        except KmprayError as exc:
            return outcome_for(exc)
        constraints = self._platform_constraints(task_id, constraints)

        if task_id in self.chains:
            return Outcome(ScheduleResult.REJECTED_INVALID_PARAMS, f"id: {task_id!r} is the id of a chain")
        keys = self._name_keys(task_id)
        if keys is None:  # a new name, the common case: nothing to decide
            existing: list[TaskRecord] = []
            action = Action.INSERT
        else:
            self._warm(keys)  # rows of the name only in the store: decided on as the others
            existing = [self.tasks[k] for k in keys]
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
            # A replacement reuses the key: its runs must not be mistaken for the old ones' (nor
            # for a run an earlier scheduler handed out that this one never saw: run_floor).
            run_id=max(last_run_id, self.run_floor),
        )
        self._insert(rec, now)
        return ACCEPTED

    def _admit(self: Core, n: int) -> None:
        """Admission control: too many unfinished tasks is the OS policy's 'no'."""
        if self.pending + n > self.config.max_pending_tasks:
            raise RejectedByPolicy(
                f"admission: {self.pending} tasks pending, the limit is {self.config.max_pending_tasks}"
            )

    def _platform_constraints(self: Core, task_id: str, c: Constraints) -> Constraints:
        """Constraints the platform cannot honour are dropped, with a warning (iOS); a
        backoff shorter than the platform's minimum is raised to it, with a warning
        (Android's 10 s, as its WorkRequest builder does)."""
        least = self.platform.min_backoff_ms
        if c.backoff_delay_ms < least:
            if c.backoff_delay_ms not in _RAISED_BACKOFFS:  # once per value: a bulk of 100,000 is one line
                _RAISED_BACKOFFS.add(c.backoff_delay_ms)
                log.warning("%s: backoff_delay_ms %d is below platform %r's minimum: %d ms used (said once "
                            "for this value)", task_id, c.backoff_delay_ms, self.platform.name, least)
            c = c.model_copy(update={"backoff_delay_ms": least})
        if not self.platform.ignored_constraints:
            return c
        dropped = [f for f in self.platform.ignored_constraints if getattr(c, f)]
        if not dropped:
            return c
        said = ", ".join(sorted(dropped))
        if said not in _IGNORED_SAID:  # once per set of fields, as for the backoff above
            _IGNORED_SAID.add(said)
            log.warning("%s: platform %r ignores %s (said once for these)", task_id, self.platform.name, said)
        return c.model_copy(update=dict.fromkeys(dropped, False))

    def _insert(self: Core, rec: TaskRecord, now: int) -> None:
        self.tasks[rec.key] = rec
        self.names.setdefault(rec.name, []).append(rec.key)
        self.pending += 1
        self.stats.enqueued(rec.worker)
        for pre in rec.prereqs:
            self.dependents.setdefault(pre, []).append(rec.key)
        if rec.prereqs and lifecycle.arrive(rec, [self.tasks[p].state for p in rec.prereqs]).is_finished:
            self.pending -= 1
            self.fx.settled.add(rec.name)
        self._touch(rec, now)
        if rec.state is TaskState.ENQUEUED:
            self._schedule_first(rec, now, ready_now=True)

    def _remove_name(self: Core, name: str, now: int) -> int:
        """Cancel and forget every work under ``name``; returns the highest run id it used."""
        last_run_id = 0
        self._warm(self._name_keys(name) or [])  # their run ids carry over
        for key in self.names.pop(name, []):
            rec = self.tasks.get(key)
            if rec is None:
                continue
            if not rec.state.is_finished:
                self._finish(rec, TaskState.CANCELLED, None, now)
            last_run_id = max(last_run_id, rec.run_id)
            self._drop(key)
        return last_run_id

    def _drop(self: Core, key: str) -> None:
        rec = self.tasks.pop(key, None)
        if rec is None:
            if self.tasks.drop_cold(key):  # a finished row kept in the store only
                self.fx.persist.pop(key, None)
                self.fx.delete.add(key)
                self.dependents.pop(key, None)
            return
        self.fx.persist.pop(key, None)
        self.fx.delete.add(key)
        for pre in rec.prereqs:
            deps = self.dependents.get(pre)
            if deps and key in deps:
                deps.remove(key)
        self.dependents.pop(key, None)

    def prune(self: Core) -> int:
        """Forget finished rows older than ``retain_finished_ms`` (their dependents too).
        Only those rows are looked at (``TaskTable.finished_before``): a pass over every
        name held the scheduler's loop ~170 ms per 200,000 rows, once a minute."""
        now = self.clock.now_ms()
        horizon = now - self.config.retain_finished_ms
        def old(key: str, chain: bool = True) -> bool:
            brief = self.tasks.brief(key)  # (finished, updated, chain id), in memory or cold
            return brief is None or (brief[0] and brief[1] < horizon and (chain or brief[2] is None))

        candidates = self.tasks.finished_before(horizon)  # (key, name, chain id)
        stale = [
            name
            for name in dict.fromkeys(name for _key, name, chain_id in candidates if chain_id is None)
            if all(old(k, chain=False) for k in self._name_keys(name) or ())
        ]
        for name in stale:
            for key in self.names.pop(name, ()):
                self._drop(key)
            # Its APPEND numbering goes too, as a restart (which counts from the rows) forgets it.
            self._append_seq.pop(name, None)
        chains = dict.fromkeys(chain_id for _key, _name, chain_id in candidates if chain_id is not None)
        stale_chains = [cid for cid in chains
                        if cid in self.chains and all(old(k) for s in self.chains[cid].steps for k in s)]
        for cid in stale_chains:
            self._remove_chain(cid, now)
        return len(stale) + len(stale_chains)

    # ------------------------------------------------------------------ cold rows
    def evict_finished(self: Core, before_ms: int, limit: int = 1_000_000) -> int:
        """Finished rows last updated before ``before_ms`` leave memory; they stay in the
        store, counted, listed and read from there (task_table.py). Rows that others still
        need stay: a chain's, a prerequisite's or a dependent's, appended work, one whose
        output holds large values (the artifact sweep keeps what rows in memory refer to).
        Only rows already stored as they are go (each round comes after a flush; one
        changed since waits for the next). A cold row's name is its key: its entry in
        ``names`` goes with it (~120 B) and ``_name_keys`` brings it back. Returns how
        many went; ``limit`` bounds the rows looked at (the actor goes a chunk at a time,
        ``cold_due`` says whether more are due)."""
        table = self.tasks
        if table.loader is None:
            return 0
        queue, went, looked = table.finishing, 0, 0
        persist, dependents, names = self.fx.persist, self.dependents, self.names
        while queue and looked < limit:
            looked += 1
            key = queue[0]
            rec = table.get(key)
            if _waits(rec, before_ms, persist):
                break
            if rec is not None and rec.state in FINISHED:
                if _may_go_cold(rec) and not dependents.get(key) and table.evict(rec):
                    went += 1
                    entry = names.get(key)
                    if entry is not None and len(entry) == 1:  # [key]: a cold row's name is its key
                        del names[key]
            queue.popleft()
        return went

    def cold_due(self: Core, before_ms: int) -> bool:
        """Is the next row in line to go cold due (and stored as it is)?"""
        queue = self.tasks.finishing
        return self.tasks.loader is not None and bool(queue) and not _waits(
            self.tasks.get(queue[0]), before_ms, self.fx.persist)

    def restore_cold(self: Core, rec: TaskRecord) -> bool:
        """At a restart, as the store decodes each row (``TaskStore.load(cold=...)``): a
        finished row that would go cold by now is kept cold at once, never held in memory.
        A prerequisite of other work is read back after (``restore``)."""
        if (self.tasks.loader is None or not rec.state.is_finished or not _may_go_cold(rec)
                or rec.updated_at_ms >= self.clock.now_ms() - self.config.finished_in_memory_ms):
            return False
        return self.tasks.add_cold(rec)

    def _name_taken(self: Core, name: str) -> bool:
        """Is ``name`` a task's name, in memory or cold (a cold row's name is its key)?"""
        return name in self.names or name in self.tasks.cold

    def _name_keys(self: Core, name: str) -> list[str] | None:
        """The row keys under ``name`` (None: a new name). A cold row's name entry was let go
        with it (its name is its key): it comes back here, for what changes the name."""
        keys = self.names.get(name)
        if keys is None and name in self.tasks.cold:
            keys = self.names[name] = [name]
        return keys

    def _warm(self: Core, keys: list[str]) -> None:
        """Cold rows among ``keys`` back in memory, to be decided on or changed. A row the
        store no longer has (never expected) is forgotten, with a warning."""
        cold = [k for k in keys if k in self.tasks.cold]
        if not cold:
            return
        found = self.tasks.load(cold)
        for key in cold:
            rec = found.get(key)
            if rec is not None:
                self.tasks.warm(rec)
                continue
            log.warning("row %r was kept in the store only, and the store does not have it: forgotten", key)
            self.tasks.drop_cold(key)
            keys.remove(key)



def _waits(rec: TaskRecord | None, before_ms: int, persist: Mapping[str, object]) -> bool:
    """Must the sweep stop at this row, the next in line (``TaskTable.finishing``)? Yes if
    it is finished but not due yet, or changed since the last write (those behind it finished
    later). A row gone or no longer finished is passed over."""
    return rec is not None and rec.state in FINISHED and (
        rec.updated_at_ms >= before_ms or rec.key in persist)


def _may_go_cold(rec: TaskRecord) -> bool:
    """A finished row nothing in memory needs whole (dependents aside: the caller's): not a
    chain's, not appended work, its name its key, no large values in its output."""
    return rec.chain_id is None and rec.name == rec.key and not rec.prereqs and not _large(rec.result)


def _large(result: object) -> bool:
    """Does this result's data hold large values (descriptors)?"""
    return isinstance(result, Success) and has_descriptors(result.data)
