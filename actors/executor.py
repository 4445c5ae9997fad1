"""LightExecutor: a long-lived actor that light tasks are batched onto.

The scheduler submits batches of runs; each run executes as a coroutine here (sync
``do_work`` in a thread), and results flow back in batches: while one report call
is in flight, the next results accumulate, so report size grows with load. Batching
both ways is how the engine beats one Ray task per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import threading
import time
import uuid
from collections import deque
from typing import Any

import ray

import kmpray.events
from kmpray.artifacts import ArtifactDir, has_descriptors
from kmpray.client.here import warm
from kmpray.clock import sleep_until
from kmpray.config import EngineConfig
from kmpray.progress import LazyThrottle, ProgressThrottle
from kmpray.protocol import Began, Done, Fence, Holding, Misaddressed, Ping, Progress, Run, RunKey, Stored, Taken
from kmpray.results import Failure, GivenBack, Success, clip, raised, to_wire
from kmpray.timing import (
    BLOCK_REPORT_RETRY_S,
    BLOCK_REPORT_TIMEOUT_S,
    BLOCK_REPORT_TRIES,
    FENCE_POLL_S,
    METRICS_S,
    REPLY_WINDOW_S,
    STARTED_NOTICE_S,
)
from kmpray.worker import CommonWorker, NotConstructed, WorkerContext, run_worker

from .event_broker import BrokerBackend
from .executor_cancel import CONTROL, Cancelling
from .executor_data import StepData
from .executor_reports import Report, Reporting
from .fencing import Fencing
from .loop_watch import Blocker, LoopWatch
from .memory_cap import MemoryCap
from .metrics import RunMeter
from .names import SCHEDULER, base_namespace, lookup
from .outbox import Outbox
from .replies import Replies
from .report_lane import LaneReports
from .slots import Slots
from .spool import Spool, beside
from .stray_threads import HeavySlot, RunThreads
from .untraced import untrace
from .worker_classes import ClassMissing, WorkerClasses


log = logging.getLogger("kmpray.executor")


class ExecutorBase(StepData, Reporting, Cancelling, WorkerClasses):
    """What light executors and heavy workers share: running, cancelling, reporting."""

    #: Keep one instance per worker class between runs (heavy workers' warm state).
    keep_instances = False

    def __init__(
        self, namespace: str, index: int, config: dict[str, Any], artifacts: tuple[str, str] | None = None
    ) -> None:
        untrace(self)  # its own calls without Ray's tracing shim (actors/untraced.py)
        self.namespace = namespace
        self.index = index
        self.config = EngineConfig.model_validate(config)
        # PID-HEX: the process, so a stop the engine notes can name it (actors/stops.py)
        self.incarnation = f"{os.getpid()}-{uuid.uuid4().hex}"
        self.node_id = ray.get_runtime_context().get_node_id()
        # Large step data (kmpray/artifacts.py): (the artifact folder, the node it is on).
        # On that node this process writes the files itself; elsewhere the scheduler does.
        self._artifacts = ArtifactDir(artifacts[0], self.config.durability) if artifacts else None
        self._local_artifacts = artifacts is not None and artifacts[1] == self.node_id
        # Results that wait for a scheduler (down, restarting) also go to a file on its
        # node, so they outlive this process (actors/spool.py).
        self._spool = Spool(beside(artifacts) if self._local_artifacts else None, self.incarnation)
        # Per worker name, the newest class loaded here and (heavy workers) its warm
        # instance, each with its version: a newer registration replaces both.
        self._classes: dict[str, tuple[int, type]] = {}
        self._class_blobs: dict[str, tuple[int, bytes]] = {}
        self._instances: dict[str, tuple[int, CommonWorker]] = {}
        self._loading: dict[str, asyncio.Future[tuple[int, type]]] = {}  # (worker_classes.py)
        self._tasks: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._cancelled: set[tuple[str, int]] = set()  # told to stop: marked until the run ends here
        self._cancelled_early: dict[tuple[str, int], None] = {}  # of those, not here when told
        self._handed_here: set[RunKey] = set()  # chain tasks begun here by their predecessor (_follow)
        # Every run taken and not yet reported (running, queued, finished): what a
        # restarted scheduler adopts instead of running it again (see ``holding``).
        self._unreported: dict[tuple[str, int], None] = {}
        self._begun: set[tuple[str, int]] = set()  # runs whose worker is running now
        # (due, task key, run id) of runs begun, oldest first: each still running when due
        # gets its "began" notice. One timer for all (``_notice_due``), not one per run.
        self._notices: deque[tuple[float, str, int]] = deque()
        self._notice_timer: asyncio.TimerHandle | None = None
        # Results and progress to the scheduler, batched; kept until a report arrives.
        # At once when nothing else runs here (a chain's next step waits for it), batched
        # with what finishes in the same turn when busy.
        self._reports: Outbox[Report] = Outbox(
            self._report, "results to the scheduler", self._reported, eager=lambda: not self._tasks
        )
        # The scheduler's handle now, not at the first report: ray.get_actor loads the actor's
        # class into this process (~0.4 s of imports here), which held this loop under its
        # first runs (timers due then began up to 0.4 s late). Looked up again if it fails.
        self._scheduler: Any = None
        with contextlib.suppress(Exception):
            self._scheduler = lookup(SCHEDULER, namespace, timeout_s=5)
        # On the scheduler's node, reports go over its local lane, written the moment they
        # exist (actors/report_lane.py); the Outbox above carries what the lane cannot.
        # Light executors are also sent their runs down it (actors/submit_lane.py).
        self._lane_reports = LaneReports(self._lane_info, self.node_id, self._reported, self._to_ray,
                                         [self._kind(), index, self.incarnation], self._pushed)
        self._lane_reports.connect_soon()
        self._meter = RunMeter(namespace, METRICS_S)  # runs begun and their durations (actors/metrics.py)
        self._slots = Slots(self._concurrency())
        # Threads for sync do_work (and async ones run in a thread): one per run at once,
        # not asyncio's default min(32, CPUs + 4), which held 64 sync runs per executor to
        # 6 at a time here. Twice that: a timed-out run's thread runs on (it cannot be
        # stopped) and must not take a later run's thread. Threads are made as needed.
        self._run_threads = RunThreads(2 * self._concurrency())  # counts calls still going
        # Through the module, not a name imported here: Ray ships actor classes by value,
        # and a global captured that way would be a copy, not the process's singleton.
        kmpray.events.TaskEventBus._bind(BrokerBackend(namespace))
        kmpray.events.engine_here = base_namespace(namespace)  # what connect() in worker code attaches to
        warm(base_namespace(namespace))  # that connection, made in a thread now (kmpray/client/here.py)
        # A blocked event loop (see loop_watch.py): the scheduler withdraws the runs queued
        # here that have not begun, and answers with a fence (scheduler epoch, batch number);
        # a run from a batch at or below it, or from an earlier scheduler's batch, never
        # begins here (actors/fencing.py). ``_begin_lock`` makes "has it
        # begun?" one answer for both threads.
        self._fencing = Fencing()
        self._fence_wait = False  # a block was reported; runs wait for the fence before beginning
        self._begin_lock = threading.Lock()
        self._blocks: dict[str, int] = {}  # worker class -> times it blocked this loop
        self._threaded: set[str] = set()  # async workers now run in a thread here
        self._stopping = False  # shutdown: nothing more begins (see stop)
        self._loop = asyncio.get_running_loop()
        # Results in the submit's answer (replies.py), unless a later scheduler adopted this process.
        self._replies = Replies(self._loop, self._send, self._fencing.refused)
        self.watch = LoopWatch(
            self._loop,
            self.config.loop_probe_ms / 1000,
            self.config.loop_block_ms / 1000,
            ExecutorBase._execute.__code__,
            self._loop_blocked,
            self._loop_unblocked,
        )

        if self.config.executor_memory_mb is not None and not self.keep_instances:
            MemoryCap(self.config.executor_memory_mb, f"light executor {index}", self._exiting)
        # What is alive now (Ray, numpy, pydantic, kmpray: ~400,000 objects) lives as long
        # as the process: kept out of the cyclic collector's scans, or each full collection
        # walks it all and holds this loop, and every run here, 80-90 ms. What runs create
        # later is collected as usual; a worker class loaded later is frozen the same way
        # (with whatever the runs hold at that moment: once per class).
        gc.freeze()

    def _concurrency(self) -> int:
        return self.config.executor_concurrency

    def ping(self, acked: list[RunKey] | None = None) -> Ping:
        self._lane_reports.connect_soon()  # a scheduler that restarted has a new lane
        if acked:
            self._acked(acked)
        self._meter.publish_if_due()  # the scheduler asks every second: metrics go out at that pace
        lag_ms = round(self.watch.lag_s() * 1000, 1)
        return Ping(self.incarnation, len(self._tasks), self.node_id, lag_ms, self._meter.take_start_waits())

    async def submit(
        self, runs: list[Any], batch: Fence | None = None, acked: list[Any] | None = None
    ) -> Taken:
        """Take a batch of runs (as lists of their fields, ``run_to_wire``: Ray packs those
        in C; Runs are taken too); ``batch``: its number under the scheduler's epoch
        (fencing). Answers with the results of the runs that end within ``REPLY_WINDOW_S``
        (replies.py), as lists (``done_to_wire``); ``acked``: results of earlier answers
        the scheduler has stored."""
        if acked:
            self._acked([tuple(key) for key in acked])
        if batch is not None and batch.to is not None and batch.to != self.incarnation:
            # For the process before this one, and sent before the scheduler knew it was gone:
            # that process's blocked loop may have had it withdrawn (its fence died with it).
            # (The local lane never does this: it sends only to the process it knows.)
            raise Misaddressed(f"{self._kind()} {self.index}: a batch for process {batch.to}, this is "
                               f"{self.incarnation}: not taken (it runs again)")
        taken = self._take(self._from_wire(runs), batch)
        epoch = batch.epoch if batch is not None else None
        done = await self._replies.collect(taken, REPLY_WINDOW_S, epoch) if taken and REPLY_WINDOW_S else []
        return self._taken(done)

    def _take(self, runs: list[Run], batch: Fence | None = None) -> list[RunKey]:
        # Under the lock ``holding`` answers under (from its own thread): a batch is refused,
        # or taken and in that answer, never taken just after it without being in it.
        with self._begin_lock:
            if batch is not None and self._fencing.refused(batch[0]):
                log.warning("%s %d: %d runs sent by a scheduler that has since restarted, arriving after "
                            "its successor adopted this process's runs: not taken (they run again there)",
                            self._kind(), self.index, len(runs))
                return []
            taken = []
            for run in runs:
                key = (run.key, run.run_id)
                if key not in self._unreported:  # a retried submit must not start a run twice
                    self._unreported[key] = None
                    if batch is not None:
                        self._fencing.took(key, batch[0], batch[1])
                    # the loop's own create_task: asyncio.ensure_future looks the loop up, and
                    # Python 3.11 asks the kernel for its pid at every look-up
                    self._tasks[key] = self._loop.create_task(self._run(run))
                    taken.append(key)
            return taken

    def _acked(self, keys: list[RunKey]) -> None:
        for key in self._replies.ack(keys):
            self._unreported.pop(key, None)

    @ray.method(concurrency_group=CONTROL)
    def holding(self, epoch: str | None = None) -> Holding:
        """For a restarted scheduler: the runs this process took and has not reported yet,
        and which of them still wait for a slot (a run withdrawn by the fence is not held).
        Results sent in answers and not acknowledged are reported again: the scheduler
        that was to read them may be the one that died. ``epoch``: the asking scheduler's;
        batches of an earlier one that arrive after this answer are refused (fencing.py).

        Answered on a thread of its own (the ``CONTROL`` concurrency group), not on the
        event loop: a worker blocking the loop must not make the question time out, or
        the new scheduler would run again what runs here (the blocker itself first), and
        take no fence against the dying scheduler's batches still queued behind it."""
        with self._begin_lock:  # against _take and _try_begin on the loop
            if epoch:
                self._fencing.adopted_by(epoch)
            unreported, tasks, begun = list(self._unreported), set(self._tasks), set(self._begun)
            held = [key for key in unreported if key in begun or not self._fencing.withdrawn(key)]
        self._loop.call_soon_threadsafe(self._send_kept)
        waiting = [key for key in held if key in tasks and key not in begun]
        return Holding(self.incarnation, held, waiting)

    def _send_kept(self) -> None:
        if kept := self._replies.take_kept():
            self._send(kept)

    def stop(self) -> int:
        """The engine is shutting down: nothing more begins here (queued runs, handed
        successors); running ones are cancelled. Returns how many were. The process is
        killed right after; what it held runs again after the next connect()."""
        self._stopping = True
        self._cancelled.update(self._tasks)
        for task in self._tasks.values():
            task.cancel()
        return len(self._tasks)

    def _try_begin(self, key: tuple[str, int]) -> bool | None:
        """Just before a run's worker begins: is it still this executor's? True (marked
        begun), False (withdrawn while this loop was blocked: it runs elsewhere; or
        cancelled: a heavy cancel only marks), None (a block was just reported and the
        fence is on its way: ask again)."""
        with self._begin_lock:
            if self._stopping:
                return False
            if self._fence_wait:
                return None
            if (key not in self._begun and self._fencing.withdrawn(key)) or key in self._cancelled:
                return False
            self._begun.add(key)
            return True

    async def _may_begin(self, key: tuple[str, int]) -> bool:
        while (answer := self._try_begin(key)) is None:
            await asyncio.sleep(FENCE_POLL_S)
        return answer

    def _exiting(self, why: str) -> None:
        """From the memory cap's thread, just before this process ends: the scheduler stops
        sending here and re-runs what this process took, without waiting to see it die."""
        try:
            ref = lookup(SCHEDULER, self.namespace, timeout_s=1).executor_exiting.remote(
                self.index, self.incarnation, why)
            ref.future().result(timeout=1.0)
        except Exception:
            pass  # the scheduler sees the death at its next ping anyway

    # ------------------------------------------------------ blocked event loop
    def _kind(self) -> str:
        return "light"

    def _loop_blocked(self, lag_s: float, blocker: Blocker) -> None:
        """From the watch thread: tell the scheduler what blocks this loop and which runs
        began; it withdraws the others and answers with the fence."""
        with self._begin_lock:
            self._fence_wait = True
            # Held here: runs whose worker began, and runs that ended but whose result is
            # still on its way (withdrawing those would run a finished run twice).
            begun = [key for key in self._unreported if key in self._begun or key not in self._tasks]
        try:
            key, worker = blocker if blocker is not None else (None, None)
            log.warning("executor %d: worker %s (task %s) is blocking the event loop (%.2f s so far)",
                        self.index, worker, key[0] if key else None, lag_s)
            self._count_block(worker)
            scheduler = lookup(SCHEDULER, self.namespace)
            for attempt in range(BLOCK_REPORT_TRIES):
                try:
                    ref = scheduler.loop_blocked.remote(self._kind(), self.index, self.incarnation, lag_s, worker,
                                                        key, begun)
                    fence = ref.future().result(timeout=BLOCK_REPORT_TIMEOUT_S)  # this thread, not the (blocked) loop
                    break
                except Exception:
                    if attempt == BLOCK_REPORT_TRIES - 1:
                        raise
                    time.sleep(BLOCK_REPORT_RETRY_S)
            if fence is not None:
                self._fencing.fence(fence[0], fence[1])
        finally:
            self._fence_wait = False

    def _count_block(self, worker: str | None) -> None:
        """After ``auto_thread_after_blocks`` blocks by one class, its async ``do_work`` runs
        in a thread here (said once). Counted when the block is seen, while the blocking run
        still runs: the class's next run, however soon it comes, already runs in a thread."""
        if worker is None:
            return
        self._blocks[worker] = n = self._blocks.get(worker, 0) + 1
        limit = self.config.auto_thread_after_blocks
        if limit and n >= limit and worker not in self._threaded:
            self._threaded.add(worker)
            log.warning("executor %d: %s blocked its event loop %d times; from now on its async do_work "
                        "runs in a thread here", self.index, worker, n)

    def _loop_unblocked(self, blocked_s: float, blocker: Blocker) -> None:
        """From the watch thread: the loop runs again; the scheduler names the blocker."""
        key, worker = blocker if blocker is not None else (None, None)
        lookup(SCHEDULER, self.namespace).loop_unblocked.remote(
            self._kind(), self.index, self.incarnation, blocked_s, worker, key, worker in self._threaded
        )

    async def _run(self, run: Run) -> None:
        key_, run_id, worker, version, inp, upstream, previous, timeout_ms = run[:8]
        start_at_ms, refs, then, merger, enq = run[8:]
        stored: list[Stored] | None = None
        key = (key_, run_id)
        try:
            if start_at_ms is not None:  # its due time, on this node's clock; no slot held meanwhile
                await sleep_until(start_at_ms / 1000)  # never before it
            if not self._slots.take():  # a free slot without awaiting (actors/slots.py)
                await self._slots.wait()
            try:
                if key in self._cancelled:
                    raise asyncio.CancelledError
                # (executor_cancel.py: cancelled or moved while this process stood still)
                gone = self._stood_still() and await self._gone_while_still(key)
                if gone or not (self._try_begin(key) or await self._may_begin(key)):
                    self._unmark(key)
                    self._unreported.pop(key, None)  # withdrawn or cancelled: never begins here
                    self._replies.detach(key)
                    return
                self._meter.began(worker, enq)
                began = time.monotonic()
                self._notice_later(began, key_, run_id)
                try:
                    result, stored = await self._execute(
                        key, worker, version, inp, upstream, previous, timeout_ms, refs)
                finally:
                    self._meter.ran(worker, (time.monotonic() - began) * 1000)
            finally:
                self._give_slot(key)
        except asyncio.CancelledError:
            if key in self._cancelled:  # every cancel of a run marks it first (cancel, stop)
                self._unmark(key)
                self._unreported.pop(key, None)
                self._replies.detach(key)
                return  # cancelled by the scheduler: it already recorded CANCELLED
            # No cancel of this run: code it called raised CancelledError (a library, say).
            # Taken for a cancel, the run went unreported and its task stayed RUNNING.
            stored = None
            result = raised(asyncio.CancelledError("raised while running; the task was not cancelled"))
        except Exception as exc:  # the engine's own code failed the run: reported, never left RUNNING
            log.exception("%s %d: run %s of %r failed outside its worker", self._kind(), self.index, run_id,
                          key_)
            stored, result = None, raised(exc)
        finally:
            self._tasks.pop(key, None)
            self._begun.discard(key)
            self._handed_here.discard(key)
            self._fencing.forget(key)
        if key in self._cancelled:
            self._unmark(key)
            self._unreported.pop(key, None)
            self._replies.detach(key)
            return
        followed = self._follow(then, merger, result, stored) if then is not None else None
        done = Done(key_, run_id, to_wire(result), stored, followed)
        # Its submit's answer takes it, unless a successor began here: that one's result goes
        # by report, and must not reach the scheduler before this one (which hands it on).
        if followed is not None or not self._replies.finished(done):
            self._replies.detach(key)
            self._send([done])

    def _give_slot(self, key: tuple[str, int]) -> None:
        self._slots.give()  # a heavy worker's waits for stray threads (stray_threads.py)

    def _notice_later(self, began: float, key_: str, run_id: int) -> None:
        """"Began" goes to the scheduler only for a run still going STARTED_NOTICE_S after it
        began: a short run's result says it, with no message of its own. A timer per run
        (made, cancelled, dropped by the loop: ~2.2 µs) cost more than the whole notice
        queue (~0.3 µs a run)."""
        self._notices.append((began + STARTED_NOTICE_S, key_, run_id))
        if self._notice_timer is None:
            self._notice_timer = self._loop.call_later(STARTED_NOTICE_S, self._notice_due)

    def _notice_due(self) -> None:
        """The notices now due, for the runs still running (``_begun``: a run leaves it as
        it ends, before its result is sent, so no notice ever follows a result)."""
        self._notice_timer = None
        now, notices = time.monotonic(), self._notices
        while notices and notices[0][0] <= now:
            _due, key_, run_id = notices.popleft()
            if (key_, run_id) in self._begun:
                self._say(Began(key_, run_id))
        if notices:
            self._notice_timer = self._loop.call_later(notices[0][0] - now, self._notice_due)

    def _say(self, item: Progress | Began) -> None:
        """Progress or a "began" notice, in order with the run's result: that goes the same way."""
        self._replies.detach((item.key, item.run_id))
        self._send([item])

    async def _execute(
        self,
        key: tuple[str, int],
        worker: str,
        version: int,
        inp: str | None,
        upstream: dict[str, Any] | None,
        previous: int,
        timeout_ms: int | None,
        refs: dict[str, Any] | None = None,
    ) -> tuple[Success | Failure | GivenBack, list[Stored] | None]:
        if upstream and has_descriptors(upstream):
            try:
                upstream = await self._upstream(upstream, refs or {})
            except Exception as exc:  # a missing artifact is for good; anything else may pass
                why = f"upstream data: {type(exc).__name__}: {exc}"
                return Failure(why, should_retry=not isinstance(exc, LookupError)), None
        threaded = worker in self._threaded
        # Reports (from the loop, or a sync worker's thread) come to this loop, a flood of
        # them as a few (kmpray/progress.py); the last always goes, before the result.
        say = lambda pct, msg: self._say(Progress(key[0], key[1], pct, msg))  # noqa: E731
        throttle = LazyThrottle(lambda: ProgressThrottle(say, self._loop, self.config.progress_burst,
                                                         self.config.progress_interval_ms))
        cancelled = lambda: key in self._cancelled  # noqa: E731
        ctx = WorkerContext(key[0], previous, upstream, throttle.offer, cancelled, self.config)
        try:
            instance = await self._instance(worker, version, threaded)
            if key in self._cancelled:  # while its class was had or its instance made: never called (a heavy
                raise asyncio.CancelledError  # cancel only marks; a light one cancels this await)
            call = run_worker(instance, inp, ctx, threaded, self._run_threads)
            result = await (asyncio.wait_for(call, timeout_ms / 1000) if timeout_ms else call)
        except (NotConstructed, ClassMissing) as exc:  # its class or constructor (sys.exit() in __init__ too)
            throttle.close()  # (a class in neither the registry nor the scheduler: given back, worker_classes.py)
            return (GivenBack(str(exc)) if isinstance(exc, ClassMissing)
                    else Failure(clip(f"worker {worker!r} could not be constructed: {exc}"))), None
        except TimeoutError:
            throttle.close()  # before the result: reports leave in order
            return Failure(f"timed out after {timeout_ms} ms", should_retry=True), None
        except asyncio.CancelledError:
            throttle.close(flush=False)
            raise
        except Exception as exc:  # (sys.exit() in do_work: run_worker makes it a Failure)
            throttle.close()
            return raised(exc), None
        throttle.close()
        return await self._output(result)  # type: ignore[arg-type]


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=10_000, concurrency_groups={CONTROL: 1})
class LightExecutor(ExecutorBase):
    """Light tasks, batched: many runs at once (``executor_concurrency``)."""


class HeavyWorkerBase(HeavySlot, ExecutorBase):
    """Heavy tasks: one at a time; the worker instance (a loaded model, say) stays warm."""

    keep_instances = True

    def _concurrency(self) -> int:
        return 1

    def _kind(self) -> str:
        return "heavy"

    def pid(self) -> int:
        return os.getpid()
