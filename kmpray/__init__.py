"""kmpray: the KMP WorkManager programming model as an actor engine on Ray.

``import kmpray`` loads no Ray; Ray is imported by ``kmpray.connect()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .chain import TaskChain
from .clock import FIFTEEN_MINUTES, ONE_DAY, ONE_HOUR, ONE_MINUTE, ONE_SECOND
from .config import EngineConfig
from .constraints import Constraints
from .enums import (
    BackoffPolicy,
    ExistingPolicy,
    ExistingWorkPolicy,
    InputMerger,
    NetworkType,
    QualityOfService,
    ScheduleResult,
    TaskState,
)
from .errors import (
    EngineUnavailable,
    InvalidParameters,
    KmprayError,
    RejectedByPolicy,
    StoreRefused,
    StoreWriteFailed,
    VirtualTimeOnly,
    WorkerNotRegistered,
)
from .events import DEFAULT_NAMESPACE, TaskCompletionEvent, TaskEventBus, TaskProgressEvent
from .models import ChainInfo, TaskInfo, TaskRequest
from .results import WorkerResult
from .triggers import TaskTrigger
from .worker import CommonWorker, WorkerContext, worker

if TYPE_CHECKING:
    from .client import BackgroundTaskScheduler


def connect(
    address: str | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    state_dir: str | None = None,
    virtual_time: bool = False,
    platform: str = "cluster",
    config: EngineConfig | None = None,
) -> BackgroundTaskScheduler:
    """Attach to (or start) the engine of ``namespace`` and return its scheduler facade.
    Inside worker code, with no namespace, address or state_dir: the engine running it."""
    from . import events
    from .client import connect as _connect

    here = events.engine_here
    if here is not None and namespace is DEFAULT_NAMESPACE and address is None and state_dir is None:
        # Worker code connecting (a task that enqueues tasks): the engine running it, as
        # kmpray.TaskEventBus is there, not a new engine under the default namespace.
        from .client.here import engine_running_this
        from .platforms import profile

        profile(platform)  # a bad platform name fails here too, naming the field
        return engine_running_this(here)
    return _connect(
        address=address,
        namespace=namespace,
        state_dir=state_dir,
        virtual_time=virtual_time,
        platform=platform,
        config=config,
    )


def __getattr__(name: str) -> Any:
    if name == "BackgroundTaskScheduler":
        from .client import BackgroundTaskScheduler

        return BackgroundTaskScheduler
    raise AttributeError(f"module 'kmpray' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "FIFTEEN_MINUTES",
    "ONE_DAY",
    "ONE_HOUR",
    "ONE_MINUTE",
    "ONE_SECOND",
    "BackgroundTaskScheduler",
    "BackoffPolicy",
    "ChainInfo",
    "CommonWorker",
    "Constraints",
    "EngineConfig",
    "EngineUnavailable",
    "ExistingPolicy",
    "ExistingWorkPolicy",
    "InputMerger",
    "InvalidParameters",
    "KmprayError",
    "NetworkType",
    "QualityOfService",
    "RejectedByPolicy",
    "ScheduleResult",
    "StoreRefused",
    "StoreWriteFailed",
    "TaskChain",
    "TaskCompletionEvent",
    "TaskEventBus",
    "TaskInfo",
    "TaskProgressEvent",
    "TaskRequest",
    "TaskState",
    "TaskTrigger",
    "VirtualTimeOnly",
    "WorkerContext",
    "WorkerNotRegistered",
    "WorkerResult",
    "connect",
    "worker",
]
