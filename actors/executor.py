"""LightExecutor: a long-lived actor that light tasks are batched onto.

The scheduler submits batches of runs; each run executes as a coroutine here (sync
``do_work`` in a thread), and results flow back in batches: while one report call
is in flight, the next results accumulate, so report size grows with load. Batching
both ways is how the engine beats one Ray task per run.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import ray
from ray import cloudpickle

from kmpray.config import EngineConfig
from kmpray.errors import InvalidParameters
import kmpray.events
from kmpray.results import Failure, Success, to_wire
from kmpray.validation import check_output
from kmpray.worker import CommonWorker, WorkerContext, run_worker

from .event_broker import BrokerBackend
from .names import REGISTRY, SCHEDULER, Outbox, call_with_retry, lookup

log = logging.getLogger("kmpray.executor")

# A run on the wire: (key, run_id, worker, version, input, upstream, previous_attempts,
# timeout_ms, start_at_ms): a timed run handed over early begins at start_at_ms (epoch ms,
# the scheduler's real clock) on this node's clock.
Run = tuple[str, int, str, int, "str | None", "dict[str, Any] | None", int, "int | None", "int | None"]
# To the scheduler: ("done", key, run_id, wire result), ("progress", key, run_id, pct,
# message) or ("started", key, run_id)
Report = tuple[Any, ...]
# A run still going this long after its worker began is reported RUNNING on its own.
STARTED_NOTICE_S = 0.02


class ExecutorBase:
    """What light executors and heavy workers share: running, cancelling, reporting."""

    #: Keep one instance per worker class between runs (heavy workers' warm state).
    keep_instances = False

    def __init__(self, namespace: str, index: int, config: dict[str, Any]) -> None:
        self.namespace = namespace
        self.index = index
        self.config = EngineConfig.model_validate(config)
        self.incarnation = uuid.uuid4().hex
        self.node_id = ray.get_runtime_context().get_node_id()
        self._classes: dict[tuple[str, int], type] = {}
        self._instances: dict[tuple[str, int], CommonWorker] = {}
        self._tasks: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._cancelled: set[tuple[str, int]] = set()
        # Every run taken and not yet reported (running, queued, finished): what a
        # restarted scheduler adopts instead of running it again (see ``holding``).
        self._unreported: dict[tuple[str, int], None] = {}
        self._begun: set[tuple[str, int]] = set()  # runs whose worker is running now
        # Results and progress to the scheduler, batched; kept until a report arrives.
        # At once when nothing else runs here (a chain's next step waits for it), batched
        # with what finishes in the same turn when busy.
        self._reports: Outbox[Report] = Outbox(
            self._report, "results to the scheduler", self._reported, eager=lambda: not self._tasks
        )
        self._scheduler: Any = None
        self._slots = asyncio.Semaphore(self._concurrency())
        # Through the module, not a name imported here: Ray ships actor classes by value,
        # and a global captured that way would be a copy, not the process's singleton.
        kmpray.events.TaskEventBus._bind(BrokerBackend(namespace))

    def _concurrency(self) -> int:
        return self.config.executor_concurrency

    def ping(self) -> tuple[str, int, str]:
        return self.incarnation, len(self._tasks), self.node_id

    def submit(self, runs: list[Run]) -> str:
        for run in runs:
            key = (run[0], run[1])
            if key not in self._unreported:  # a retried submit must not start a run twice
                self._unreported[key] = None
                self._tasks[key] = asyncio.ensure_future(self._run(run))
        return self.incarnation

    def holding(self) -> tuple[str, list[tuple[str, int]], list[tuple[str, int]]]:
        """For a restarted scheduler: the runs this process took and has not reported yet,
        and which of them still wait for a slot."""
        waiting = [key for key in self._tasks if key not in self._begun]
        return self.incarnation, list(self._unreported), waiting

    def cancel_cooperative(self, runs: list[tuple[str, int]]) -> None:
        """Only ask: ``ctx.is_cancelled()`` turns true; the run ends when the worker returns."""
        for key in runs:
            self._cancelled.add(tuple(key))  # type: ignore[arg-type]

    def busy(self, key: tuple[str, int]) -> bool:
        return tuple(key) in self._tasks

    def cancel(self, runs: list[tuple[str, int]]) -> int:
        n = 0
        for key in runs:
            self._cancelled.add(key)
            task = self._tasks.get(key)
            if task is not None:
                task.cancel()
                n += 1
        return n

    async def _worker_class(self, name: str, version: int) -> type:
        cached = self._classes.get((name, version))
        if cached is not None:
            return cached
        registry = lookup(REGISTRY, self.namespace)
        entry = await call_with_retry(lambda: registry.get.remote(name))
        if entry is None:
            raise LookupError(f"worker {name!r} is not registered")
        cls = cloudpickle.loads(entry[1])
        self._classes[(name, entry[0])] = cls
        return cls

    async def _run(self, run: Run) -> None:
        key_, run_id, worker, version, inp, upstream, previous, timeout_ms, start_at_ms = run
        key = (key_, run_id)
        try:
            if start_at_ms is not None:  # its due time, on this node's clock; no slot held meanwhile
                await asyncio.sleep(max(0.0, start_at_ms / 1000 - time.time()))
            async with self._slots:
                if key in self._cancelled:
                    raise asyncio.CancelledError
                # "Began" goes to the scheduler only for a run still going after a moment:
                # a short run's result says it, with no message of its own.
                self._begun.add(key)
                notice = asyncio.get_running_loop().call_later(
                    STARTED_NOTICE_S, self._reports.add, (("started", key_, run_id),)
                )
                try:
                    result = await self._execute(key, worker, version, inp, upstream, previous, timeout_ms)
                finally:
                    notice.cancel()
        except asyncio.CancelledError:
            self._unreported.pop(key, None)
            return  # cancelled by the scheduler: it already recorded CANCELLED
        finally:
            self._tasks.pop(key, None)
            self._begun.discard(key)
        if key in self._cancelled:
            self._cancelled.discard(key)
            self._unreported.pop(key, None)
            return
        self._reports.add((("done", key_, run_id, to_wire(result)),))

    async def _execute(
        self,
        key: tuple[str, int],
        worker: str,
        version: int,
        inp: str | None,
        upstream: dict[str, Any] | None,
        previous: int,
        timeout_ms: int | None,
    ) -> Success | Failure:
        try:
            instance = self._instances.get((worker, version)) if self.keep_instances else None
            if instance is None:
                cls = await self._worker_class(worker, version)
                instance = cls()
                if self.keep_instances:
                    self._instances[(worker, version)] = instance
        except Exception as exc:
            return Failure(f"worker {worker!r} could not be constructed: {type(exc).__name__}: {exc}")

        def progress(pct: int, message: str | None) -> None:
            self._reports.add((("progress", key[0], key[1], pct, message),))

        ctx = WorkerContext(key[0], previous, upstream, progress, lambda: key in self._cancelled, self.config)
        try:
            call = run_worker(instance, inp, ctx)
            result = await (asyncio.wait_for(call, timeout_ms / 1000) if timeout_ms else call)
        except TimeoutError:
            return Failure(f"timed out after {timeout_ms} ms", should_retry=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return Failure(f"{type(exc).__name__}: {exc}", should_retry=True)
        if isinstance(result, Success):
            try:
                check_output(result.data, self.config)
            except InvalidParameters as exc:
                return Failure(str(exc))
        return result  # type: ignore[return-value]

    def _report(self, items: list[Report]) -> Any:
        if self._scheduler is None:
            self._scheduler = lookup(SCHEDULER, self.namespace)
        done = [item[1:] for item in items if item[0] == "done"]
        progress = [item[1:] for item in items if item[0] == "progress"]
        started = [item[1:] for item in items if item[0] == "started"]
        return self._scheduler.report.remote(done, progress, started)

    def _reported(self, _answer: Any, items: list[Report]) -> None:
        for item in items:
            if item[0] == "done":
                self._unreported.pop((item[1], item[2]), None)


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=10_000)
class LightExecutor(ExecutorBase):
    """Light tasks, batched: many runs at once (``executor_concurrency``)."""


class HeavyWorkerBase(ExecutorBase):
    """Heavy tasks: one at a time; the worker instance (a loaded model, say) stays warm."""

    keep_instances = True

    def _concurrency(self) -> int:
        return 1

    def pid(self) -> int:
        import os

        return os.getpid()
