"""Reads of the scheduler core that answer "why isn't my task running?": what users see of
a task (``info``), its place in line, the bounded log of recent decisions and ``explain``,
and the warning for tasks that wait on the same reason too long. The reasons themselves
are ``waiting.py``'s. A mixin of ``SchedulerCore`` (engine.py): it writes nothing but
the decision log."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .enums import TaskState
from .millis import utc_text
from .models import TaskInfo
from .queues import is_queued
from .records import TaskRecord
from .waiting import reason_kind, waiting_for

if TYPE_CHECKING:
    from .core_protocol import Core

log = logging.getLogger("kmpray.engine")

#: ``places_of`` counts places in a ready queue of at most this many entries (~15 ms here).
PLACES_SCAN_MAX = 20_000


class Explaining:
    def is_gated(self: Core, key: str) -> bool:
        return key in self._gated

    def is_unplaced(self: Core, key: str) -> bool:
        return key in self._unplaced

    def is_parked(self: Core, key: str) -> bool:
        rec = self.tasks.get(key)  # O(1): a listing asks this of every row it shows
        return rec is not None and key in self._parked.get(rec.worker, ())

    def is_queued(self: Core, key: str, seq: int | None = None) -> bool:
        """Is this task in a ready queue now (due, waiting only for capacity)?"""
        return is_queued(self.tasks.get(key), seq)

    def gated_count(self: Core) -> int:
        return len(self._gated)

    def places_in_line(self: Core) -> dict[str, int]:
        """Every queued task's place in its ready queue (how many come before it), in one
        pass: what a listing uses instead of ``ahead_of`` per task."""
        out: dict[str, int] = {}
        for queue in (self._ready, self._ready_heavy):
            out.update((entry[4], n) for n, entry in enumerate(queue.live(self.tasks)))
        return out

    def places_of(self: Core, recs: Iterable[TaskRecord]) -> dict[str, int | None]:
        """The places in line of these tasks (those queued): what a listing of a few rows
        uses. One pass over a ready queue while it holds at most ``PLACES_SCAN_MAX``
        entries; past that a place is None (the listing says how many are due instead),
        so a dashboard refreshing every second never walks a million-task queue;
        ``kmpray why`` still counts exactly (``ahead_of``)."""
        out: dict[str, int | None] = {}
        for queue, heavy in ((self._ready, False), (self._ready_heavy, True)):
            mine = sorted(queue.entry(r, r.ready_seq) for r in recs
                          if r.constraints.is_heavy_task is heavy and is_queued(r))
            if not mine:
                continue
            if len(queue) > PLACES_SCAN_MAX:
                out.update((entry[4], None) for entry in mine)
            else:
                ahead = queue.ahead_of_each(mine, self.tasks)
                out.update((entry[4], n) for entry, n in zip(mine, ahead, strict=True))
        return out

    def ahead_of(self: Core, key: str) -> int:
        """How many live entries of its ready queue come before this task's (O(queue))."""
        rec = self.tasks[key]
        return (self._ready_heavy if rec.constraints.is_heavy_task else self._ready).ahead_of(rec, self.tasks)

    def prerequisites(self: Core, rec: TaskRecord) -> list[TaskRecord]:
        """The tasks ``rec`` waits for: the previous step of its chain, or the work it was appended to."""
        if rec.chain_id is not None and rec.chain_id in self.chains and rec.step > 0:
            keys: Iterable[str] = self.chains[rec.chain_id].steps[rec.step - 1]
        else:
            keys = rec.prereqs
        return [self.tasks[k] for k in keys if k in self.tasks]

    def info(self: Core, rec: TaskRecord, places: Mapping[str, int | None] | None = None) -> TaskInfo:
        """What users see of a task: its row, why it waits, and a ``next_run_at_ms`` that
        means what it says (None, not a passed instant, while it waits for something else
        than time). ``places``: from ``places_in_line`` or ``places_of``, when listing many."""
        reason = waiting_for(self, rec, places=places)
        if reason is None:
            return rec.info()
        return rec.info(reason, reason.kind in ("due_at", "window") or rec.state is TaskState.RUNNING)

    def note(self: Core, key: str, text: str | tuple[Any, ...]) -> None:
        """Record a decision about a task, for ``explain`` (a bounded log of recent ones).
        A tuple is formatted only when read (the dispatch path records one per run)."""
        self.decisions.append((self.clock.now_ms(), key, text))

    def explain(self: Core, name_or_key: str) -> str | None:
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
        recent = [(at, text) for at, key, text in self.decisions if key == rec.key]
        if recent:
            lines.append("recent decisions:")
            lines += [f"  {_stamp(at)}  {_decision(text)}" for at, text in recent[-20:]]
        return "\n".join(lines)

    def warn_long_waits(self: Core) -> list[tuple[str, str]]:
        """Tasks that have waited on the same reason (not on time) longer than
        ``wait_warning_ms``: logged once each at WARNING, and returned. Called every
        second: each candidate costs a few lookups (``reason_kind``); the reason itself is
        made only for a task being warned about (100,000 gated tasks took 0.72 s per call
        when every one's reason was made)."""
        now = self.clock.now_ms()
        parked = {k for keys in self._parked.values() for k in keys}
        candidates = self._gated | self._unplaced | parked
        for key in [k for k in self._waits if k not in candidates]:
            del self._waits[key]
        gates: dict[tuple[int, str], str] = {}
        warned = []
        limit = self.config.wait_warning_ms
        for key in candidates:
            rec = self.tasks.get(key)
            kind_now = reason_kind(self, rec, gates) if rec is not None else None
            if kind_now is None:
                continue
            kind, since, done = self._waits.get(key, (kind_now, now, False))
            if kind != kind_now:
                kind, since, done = kind_now, now, False
            if not done and now - since >= limit and rec is not None:
                reason = waiting_for(self, rec)
                if reason is not None:
                    log.warning("task %s has waited %.0f s: %s", key, (now - since) / 1000, reason.message)
                    warned.append((key, reason.message))
                done = True
            self._waits[key] = (kind, since, done)
        return warned


def _decision(text: str | tuple[Any, ...]) -> str:
    if isinstance(text, str):
        return text
    _kind, run_id, where, node = text  # ("handed", run id, executor, node)
    return f"run {run_id} handed to {where}" + (f" on node {node[:12]}" if node else "")


def _stamp(ms: int) -> str:
    return utc_text(ms, "%H:%M:%S") + f".{ms % 1000:03d}"
