"""A scheduler core rebuilt from the store after a restart: every index from the stored
rows, runs still held by executors adopted (not run twice), and damaged rows (moved to
quarantine by the store) contained: a FAILED placeholder in place of each lost task, so
what depends on it ends by the ordinary rules. A mixin of ``SchedulerCore`` (engine.py)."""

from __future__ import annotations

from collections.abc import Container, Iterable
from typing import TYPE_CHECKING

from . import lifecycle
from .chain_record import ChainRecord
from .constraints import DEFAULT_CONSTRAINTS
from .enums import TaskState
from .protocol import Cascade
from .records import TaskRecord
from .results import Failure
from .triggers import OneTime

if TYPE_CHECKING:
    from .core_protocol import Core

_ONE_TIME = OneTime()

#: Run ids a scheduler hands out lie above ``started x RUN_IDS_PER_START`` (``started``: how
#: many schedulers its store has seen start; ``SchedulerCore.run_floor``). A dispatch is not
#: stored, and neither is a restore's skip of its id, so two restarts before a task's row is
#: written again used to hand out the id of a run still out there: its late report counted
#: for the new run, and after a REPLACE for the new work (found by the simulation). Above
#: every earlier scheduler's ids, none is handed out twice.
RUN_IDS_PER_START = 10**9


class Restoring:
    def restore(
        self: Core,
        records: Iterable[TaskRecord],
        chains: Iterable[ChainRecord] = (),
        damaged: Iterable[tuple[str, str, str]] = (),
    ) -> None:
        """Rebuild every index from stored rows. Runs that were in flight run again (or are
        adopted, see ``adopt``). ``damaged``: ``(table, key, reason)`` of rows the store
        just moved to quarantine (see ``_contain_damage``)."""
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
        # A prerequisite the store kept cold as it read it (restore_cold): back in memory.
        needed = sorted({p for rec in rows for p in rec.prereqs if p in self.tasks.cold})
        self._warm(needed)  # (one the store lost is forgotten, with a warning, and left out)
        for key in needed:
            self.names.setdefault(self.tasks[key].name, []).append(key)
        # A name's works in line by their append number, not by creation time: appends in one
        # millisecond (one enqueue_many) sort "n#10" before "n#9" by key, and a clock set back
        # would misplace them too; the next APPEND then followed the wrong leaf, and two
        # works of one name ran at once.
        for keys in self.names.values():
            if len(keys) > 1:
                keys.sort(key=append_number)
        self.tasks.unsorted = True  # in order of creation: by update once read (TaskTable.newest)
        for rec in rows:
            if rec.state.is_finished:
                continue
            self.pending += 1
            # A dispatch is not stored; a run's progress is. A run still out there carries
            # the stored id (stored RUNNING) or a later one (dispatched after the last write:
            # by the last scheduler, or by one before it that this row outlived unwritten).
            # A row stored BLOCKED too: a chain step or appended work promoted and handed
            # out in the turn before the crash, whose write (promotion and all) came after
            # the hand-over and never happened.
            if rec.state is TaskState.RUNNING:
                self._adoptable[rec.key] = rec.run_id
            elif rec.state in _ADOPTABLE:
                self._adoptable[rec.key] = rec.run_id + 1
            # Skip the id of that unstored dispatch: its late report is never taken for a new run.
            rec.run_id += 1
            if rec.state is TaskState.RUNNING:  # interrupted, not finished: not an attempt
                rec.next_run_at_ms = lifecycle.requeue(rec, now)
                self._touch(rec, now)
            if rec.state is TaskState.ENQUEUED:
                self._arm(rec, now)
            if rec.deadline_ms is not None:
                self._deadlines.add(rec.deadline_ms, rec.key)
        damaged = list(damaged)
        placeholders = self._placeholders(damaged, now) if damaged else []
        for chain in self.chains.values():
            chain.unfinished = sum(
                1 for step in chain.steps for k in step if k in self.tasks and not self.tasks[k].state.is_finished
            )
        if damaged:
            self._contain_damage(damaged, placeholders, now)

    def adopt(
        self: Core, runs: Iterable[tuple[str, int]], waiting: Container[tuple[str, int]] = ()
    ) -> list[tuple[str, int]]:
        """Right after ``restore``: runs the previous scheduler dispatched that executors
        still hold (running, queued, or finished but unreported) stay RUNNING under their
        run id, so their reports count and the tasks do not run a second time. Returns the
        runs adopted; every other held run is stale (its report will be ignored). Only
        the first call after a restore adopts anything. ``waiting``: held runs whose worker
        has not begun (queued for an executor slot)."""
        adoptable = self._adoptable
        self._adoptable = dict[str, int]()
        now = self.clock.now_ms()
        adopted: list[tuple[str, int]] = []
        for key, run_id in sorted(runs, key=lambda run: -run[1]):  # a task's latest run first
            rec = self.tasks.get(key)
            lowest = adoptable.get(key)
            if rec is None or rec.state not in _ADOPTABLE or lowest is None or run_id < lowest:
                continue
            del adoptable[key]  # held twice (re-sent to another executor, or a stale one): adopt one
            if rec.state is TaskState.BLOCKED:  # its promotion was not stored: the held run proves it
                lifecycle.promote(rec)
            lifecycle.adopt(rec, run_id, (key, run_id) not in waiting, now)
            rec.ready_seq = rec.timer_seq = -1  # its queue entries go stale
            adopted.append((key, run_id))
        return adopted

    def _placeholders(self: Core, damaged: list[tuple[str, str, str]], now: int) -> list[TaskRecord]:
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
            keys.sort(key=append_number)
            self._touch(rec, now)
            out.append(rec)
        return out

    def _contain_damage(
        self: Core, damaged: list[tuple[str, str, str]], placeholders: list[TaskRecord], now: int
    ) -> None:
        for rec in placeholders:
            assert isinstance(rec.result, Failure)
            self._emit_completion(rec, False, rec.result.message, None, now)
            self.fx.settled.add(rec.name)
            chain = self.chains.get(rec.chain_id) if rec.chain_id is not None else None
            if chain is not None:
                self.fx.settled.add(chain.id)
                reason = f"prerequisite {rec.key!r} failed (its stored row was damaged)"
                self.chain_actions([Cascade(chain.id, chain.gen, rec.step + 1, TaskState.FAILED.value, reason)])
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


_ADOPTABLE = (TaskState.ENQUEUED, TaskState.BLOCKED)


def append_number(key: str) -> int:
    """Work appended under a name is stored as name#2, name#3, ...: its place in line."""
    return int(key.rsplit("#", 1)[1]) if "#" in key and key.rsplit("#", 1)[1].isdigit() else 1
