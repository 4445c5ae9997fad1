"""What a run's executor says besides its result (``SchedulerCore.complete``): the worker
began, its progress, a notice about it, or the run was lost with its process (run again,
not counted as an attempt). A mixin of ``SchedulerCore`` (engine.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import lifecycle
from .enums import TaskState
from .events import TaskProgressEvent
from .results import Failure

if TYPE_CHECKING:
    from .core_protocol import Core


class RunReports:
    def run_lost(
        self: Core, key: str, run_id: int, crashed: bool = False, bounced: bool = False,
        cause: str | None = None,
    ) -> None:
        """The executor of a run died or gave it back: run it again, not counted as an attempt.

        ``crashed``: the process holding the run died (not a node leaving, not a hand-back).
        A light executor holds many runs, so the first death blames every run it held: each
        becomes a suspect and runs alone next time (``Dispatch.suspect``), where a death is
        its own. Past ``max_system_reruns`` such re-runs the task fails with the reason.
        ``bounced``: taken from the ready queue but not handed over (``unplaced``): nothing
        to record or store, the row is as it was. ``cause``: what is known of the death (a
        memory cap's figures), named in the FAILED reason if it is the last one."""
        rec = self.tasks.get(key)
        if rec is None or rec.state is not TaskState.RUNNING or rec.run_id != run_id:
            return
        if not bounced:
            rec.noted_wait = False  # it was handed over: a new spell of waiting is noted again
        if crashed:
            rec.crashes += 1
            if rec.crashes > self.config.max_system_reruns:
                deaths, rec.crashes = rec.crashes, 0
                self.note(key, f"run {run_id}: its process died again ({deaths} in a row): FAILED")
                known = f"; the last: {cause}" if cause else ""  # (until session 46: never said)
                self.complete(key, run_id, Failure(
                    f"system: the process running it died during {deaths} runs in a row (os._exit, a fatal "
                    f"signal or a memory cap{known}); not run again after max_system_reruns="
                    f"{self.config.max_system_reruns}"))
                return
        now = self.clock.now_ms()
        due = lifecycle.requeue(rec, now)
        if crashed:
            self.note(key, f"run {run_id} re-queued: the process running it died ({rec.crashes} in a row); "
                           "its next run goes alone to an executor (not counted as an attempt)")
        elif not bounced:
            self.note(key, f"run {run_id} re-queued: its executor lost it or gave it back "
                           "(not counted as an attempt)")
        self._set_timer(rec, due, now, store=not bounced)

    def started(self: Core, key: str, run_id: int) -> None:
        """The run's worker began (it was handed to an executor earlier): now RUNNING."""
        rec = self.tasks.get(key)
        if rec is not None:
            lifecycle.began(rec, run_id)

    def progress(self: Core, key: str, run_id: int, pct: int, message: str | None) -> None:
        rec = self.tasks.get(key)
        if rec is None or not lifecycle.began(rec, run_id):
            return
        rec.progress = pct
        now = self.clock.now_ms()
        self._touch(rec, now)
        self.fx.events.append(
            TaskProgressEvent.model_construct(
                kind="progress",
                task_id=rec.key, task_name=rec.worker, progress=pct, message=message, timestamp=now
            )
        )

    def notice(self: Core, key: str, worker: str, message: str) -> None:
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
