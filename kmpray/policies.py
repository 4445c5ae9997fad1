"""Unique work: what an enqueue does to existing work of the same name (Android's table)."""

from __future__ import annotations

from enum import Enum

from .enums import ExistingWorkPolicy, TaskState


class Action(str, Enum):
    INSERT = "INSERT"  # nothing under the name: insert the new work
    IGNORE = "IGNORE"  # keep the existing work, drop the new request
    REPLACE = "REPLACE"  # cancel unfinished existing work, delete it, insert the new work
    APPEND = "APPEND"  # run the new work after the existing leaf


def decide(policy: ExistingWorkPolicy, existing: list[TaskState]) -> Action:
    """``existing``: the states of the works under the name, oldest first (the last is the leaf)."""
    if not existing:
        return Action.INSERT
    unfinished = any(not s.is_finished for s in existing)
    if policy is ExistingWorkPolicy.KEEP:
        return Action.IGNORE if unfinished else Action.REPLACE
    if policy is ExistingWorkPolicy.REPLACE:
        return Action.REPLACE
    leaf = existing[-1]
    if policy is ExistingWorkPolicy.APPEND_OR_REPLACE and leaf in (
        TaskState.FAILED,
        TaskState.CANCELLED,
    ):
        return Action.REPLACE
    return Action.APPEND


def appended_state(leaf: TaskState) -> TaskState:
    """The state of work appended after ``leaf``: failure and cancellation propagate."""
    if leaf in (TaskState.FAILED, TaskState.CANCELLED):
        return leaf
    return TaskState.ENQUEUED if leaf is TaskState.SUCCEEDED else TaskState.BLOCKED
