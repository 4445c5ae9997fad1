"""The public enumerations of the contract."""

from __future__ import annotations

from enum import Enum


class TaskState(str, Enum):
    #: Accepted and waiting: for its time, its trigger, its constraints or an executor
    #: (``TaskInfo.waiting_for`` says which); also a run handed over that has not begun.
    ENQUEUED = "ENQUEUED"
    #: A chain step or appended work waiting until every prerequisite has SUCCEEDED.
    BLOCKED = "BLOCKED"
    #: Its worker's ``do_work`` is running (a retry or a new period goes back to ENQUEUED).
    RUNNING = "RUNNING"
    #: Finished: the last run returned ``Success`` (never for periodic or event-triggered work).
    SUCCEEDED = "SUCCEEDED"
    #: Finished: ``Failure`` without retry, retries spent, or a failed prerequisite.
    FAILED = "FAILED"
    #: Finished: cancelled, replaced (REPLACE), or a cancelled prerequisite.
    CANCELLED = "CANCELLED"

    @property
    def is_finished(self) -> bool:
        return self in FINISHED


#: The finished states (``TaskState.is_finished``), for a membership test on a hot path.
FINISHED = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


def shown_state(state: TaskState, began: bool) -> TaskState:
    """What users see: RUNNING means ``do_work`` runs; a run handed to an executor that has
    not begun (waiting for a slot there) is still ENQUEUED, as in WorkManager."""
    return TaskState.ENQUEUED if state is TaskState.RUNNING and not began else state


class ScheduleResult(str, Enum):
    SUCCESS = "SUCCESS"
    REJECTED_OS_POLICY = "REJECTED_OS_POLICY"
    REJECTED_INVALID_PARAMS = "REJECTED_INVALID_PARAMS"
    FAILED_UNKNOWN = "FAILED_UNKNOWN"

    def __str__(self) -> str:  # print(result) -> SUCCESS; repr() keeps the class name
        return self.value


class BackoffPolicy(str, Enum):
    EXPONENTIAL = "EXPONENTIAL"
    LINEAR = "LINEAR"


class ExistingWorkPolicy(str, Enum):
    REPLACE = "REPLACE"
    KEEP = "KEEP"
    APPEND = "APPEND"
    APPEND_OR_REPLACE = "APPEND_OR_REPLACE"


class ExistingPolicy(str, Enum):
    KEEP = "KEEP"
    REPLACE = "REPLACE"


class NetworkType(str, Enum):
    NOT_REQUIRED = "NOT_REQUIRED"
    CONNECTED = "CONNECTED"
    UNMETERED = "UNMETERED"
    NOT_ROAMING = "NOT_ROAMING"
    METERED = "METERED"
    TEMPORARILY_UNMETERED = "TEMPORARILY_UNMETERED"


class QualityOfService(str, Enum):
    HIGH = "HIGH"
    DEFAULT = "DEFAULT"
    LOW = "LOW"

    @property
    def rank(self) -> int:
        """Lower runs first."""
        return _QOS_RANK[self]


_QOS_RANK = {QualityOfService.HIGH: 0, QualityOfService.DEFAULT: 1, QualityOfService.LOW: 2}


class InputMerger(str, Enum):
    OVERWRITE = "OVERWRITE"
    ARRAY = "ARRAY"
