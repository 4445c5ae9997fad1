"""The task state machine: every change of a task's state is one function here.

======================  =====================  ==========  ===============================
from                    event                  to          counters
======================  =====================  ==========  ===============================
(new)                   ``arrive``             ENQUEUED    -
(new, after unfinished  ``arrive``             BLOCKED     -
work or a chain step)
(new, after failed or   ``arrive``             FAILED /    -
cancelled work)                                CANCELLED
ENQUEUED                ``dispatch``           RUNNING     run id +1, attempts +1, not begun
RUNNING (not begun)     ``began``              RUNNING     begun: users see RUNNING now
RUNNING                 ``requeue``            ENQUEUED    attempts -1: a run lost with its
                                                           executor, or interrupted by a
                                                           restart, is never counted
ENQUEUED (restored)     ``adopt``              RUNNING     run id = the held run's, attempts +1
RUNNING                 ``retry``              ENQUEUED    - (the attempt counts)
RUNNING                 ``recur``              ENQUEUED    runs +1, attempts = 0 (a new period)
BLOCKED                 ``promote``            ENQUEUED    -
ENQUEUED/BLOCKED/       ``finish``             SUCCEEDED   runs +1 if it ran; cancelled
RUNNING                                        FAILED      before its worker began:
                                               CANCELLED   attempts -1
======================  =====================  ==========  ===============================

A RUNNING task whose run was handed to an executor but has not begun (it waits for one
of the executor's slots, or for its due time there) is shown ENQUEUED, as in
WorkManager (``shown_state``). These functions change one record and nothing else:
the timer and ready queues, events, cascades and persistence are the core's
(``engine.py``). Nothing outside this module assigns a task's state (a test checks).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .enums import TaskState, shown_state
from .policies import appended_state
from .results import Failure, Retry, Success

if TYPE_CHECKING:
    from .records import TaskRecord

Result = Success | Failure | Retry
F = TypeVar("F", bound=Callable[..., Any])


def _counted(transition: F) -> F:
    """The record's table (task_table.TaskTable) is told when what users see changes, or
    when the row was updated. (Twice per task on the dispatch path: positional arguments
    only.)"""

    @functools.wraps(transition)
    def change(rec: TaskRecord, *args: Any) -> Any:
        before, at = shown_state(rec.state, rec.started), rec.updated_at_ms
        out = transition(rec, *args)
        table = rec.table
        if table is not None:
            if (after := shown_state(rec.state, rec.started)) is not before:
                table.moved(rec, before, after)
            elif rec.updated_at_ms != at:
                table.touched(rec)
        return out

    return change  # type: ignore[return-value]


@_counted
def arrive(rec: TaskRecord, prerequisites: list[TaskState]) -> TaskState:
    """A new row's first state, from the states of the work it waits for (none: ENQUEUED).
    A failed or cancelled prerequisite ends it at once, the way APPEND work ends in
    WorkManager; returns the state."""
    worst = next((s for s in (TaskState.FAILED, TaskState.CANCELLED) if s in prerequisites), None)
    if worst is not None:
        rec.state = appended_state(worst)  # after failed work FAILED, after cancelled CANCELLED
        rec.result = Failure(f"prerequisite {rec.prereqs[0]!r} is {worst.value}")
    elif all(s is TaskState.SUCCEEDED for s in prerequisites):
        rec.state = TaskState.ENQUEUED
    else:
        rec.state = TaskState.BLOCKED
    return rec.state


@_counted
def dispatch(rec: TaskRecord, start_at_ms: int | None, now: int) -> None:
    """ENQUEUED -> RUNNING: handed to an executor as a new run (not begun yet)."""
    assert rec.state is TaskState.ENQUEUED, rec.state
    rec.state = TaskState.RUNNING
    rec.started = False
    rec.run_id += 1
    rec.run_attempt_count += 1
    rec.progress = None
    rec.next_run_at_ms = start_at_ms  # kept: a lost run is due again then, not earlier
    rec.updated_at_ms = now


@_counted
def began(rec: TaskRecord, run_id: int) -> bool:
    """The run's worker began; False for a report about another (stale) run."""
    if rec.state is not TaskState.RUNNING or rec.run_id != run_id:
        return False
    rec.started = True
    return True


@_counted
def requeue(rec: TaskRecord, now: int) -> int:
    """RUNNING -> ENQUEUED: the run was lost (its executor died or gave it back) or a restart
    interrupted it. Not counted as an attempt. Returns when it is due again (a run handed
    over ahead of its due time is due then still)."""
    assert rec.state is TaskState.RUNNING, rec.state
    rec.state = TaskState.ENQUEUED
    rec.run_attempt_count = max(0, rec.run_attempt_count - 1)
    return max(now, rec.next_run_at_ms or now)


@_counted
def adopt(rec: TaskRecord, run_id: int, began_: bool, now: int) -> None:
    """ENQUEUED -> RUNNING right after a restart: an executor still holds this run."""
    assert rec.state is TaskState.ENQUEUED, rec.state
    rec.state = TaskState.RUNNING
    rec.run_id = run_id
    if rec.next_run_at_ms is not None and rec.next_run_at_ms <= now:
        rec.next_run_at_ms = None  # else handed over early: if lost, due then still
    rec.progress = None
    rec.started = began_
    rec.run_attempt_count += 1


@_counted
def retry(rec: TaskRecord, result: Failure | Retry) -> None:
    """RUNNING -> ENQUEUED: the run asked to be retried (the attempt counts)."""
    assert rec.state is TaskState.RUNNING, rec.state
    rec.state = TaskState.ENQUEUED
    rec.result = result


@_counted
def recur(rec: TaskRecord, result: Result) -> None:
    """RUNNING -> ENQUEUED: periodic or event-triggered work ran; it waits for its next turn."""
    assert rec.state is TaskState.RUNNING, rec.state
    rec.run_count += 1
    rec.result = result
    rec.state = TaskState.ENQUEUED
    rec.run_attempt_count = 0


@_counted
def promote(rec: TaskRecord) -> None:
    """BLOCKED -> ENQUEUED: every prerequisite SUCCEEDED."""
    assert rec.state is TaskState.BLOCKED, rec.state
    rec.state = TaskState.ENQUEUED


@_counted
def finish(rec: TaskRecord, state: TaskState, result: Result | None, ran: bool = False) -> bool:
    """Unfinished -> SUCCEEDED, FAILED or CANCELLED. ``ran``: a run's own result ended it.
    Returns whether a run was out (RUNNING) when it ended."""
    assert state.is_finished and not rec.state.is_finished, (rec.state, state)
    was_running = rec.state is TaskState.RUNNING
    rec.state = state
    if ran:
        rec.run_count += 1
    if result is not None:
        rec.result = result
    rec.next_run_at_ms = None
    rec.timer_seq = rec.ready_seq = -1
    if was_running and state is TaskState.CANCELLED and not rec.started:
        rec.run_attempt_count = max(0, rec.run_attempt_count - 1)  # that attempt never began
    return was_running


__all__ = [
    "adopt", "arrive", "began", "dispatch", "finish", "promote", "recur", "requeue", "retry", "shown_state",
]
