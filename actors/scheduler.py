"""SchedulerActor: the thin shell around SchedulerCore.

Each method receives a message, calls the core, then performs the effects the core
returned: persist (one transaction), dispatch batches to executors, cancel runs,
publish events, wake waiters. It restarts (``max_restarts=-1``) and rebuilds from the
store; a reconcile loop re-runs work whose executor died.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
import time
import warnings
from collections import Counter, deque
from pathlib import Path
from typing import Any

import ray

from kmpray.chain_coordination import ChainCoordinatorCore, Message
from kmpray.clock import ManualClock, SystemClock
from kmpray.config import EngineConfig
from kmpray.driver import sleep_s
from kmpray.engine import SchedulerCore
from kmpray.errors import EngineUnavailable, StoreRefused, StoreWriteFailed
from kmpray.event_codec import encode_event
from kmpray.lane import EXECUTOR, LANE_METHODS, LANE_READS, REPORT, TAKEN
from kmpray.placement import heavy_demand, placeable
from kmpray.platforms import profile
from kmpray.restore import RUN_IDS_PER_START
from kmpray.shards import share
from kmpray.store import SqliteTaskStore
from kmpray.timing import STORE_FAILED_RETRY_S
from kmpray.watch import FileWatcher

from .adoption import adopt_held_runs
from .background import background
from .blocked_loops import BlockedLoops
from .class_recovery import take_classes_back
from .executor_pool import ExecutorPool, executors_for
from .heavy_pool import HeavyPool
from .lane import Conn, LaneServer
from .metrics import Metrics
from .names import BROKER, ORACLE, base_namespace, engine_identity, lookup, shard_index
from .outbox import Outbox
from .retry import call_with_retry
from .scheduler_artifacts import ArtifactKeeper, SchedulerArtifacts
from .scheduler_chains import SchedulerChains
from .scheduler_devices import SchedulerDevices
from .scheduler_dispatch import SchedulerDispatch
from .scheduler_events import SchedulerEvents
from .scheduler_housekeeping import SchedulerHousekeeping
from .scheduler_intake import SchedulerIntake
from .scheduler_reads import SchedulerReads
from .scheduler_refusal import SchedulerRefusal
from .scheduler_reports import SchedulerReports
from .spool import take
from .stealing import Stealer
from .submit_lane import SubmitLanes
from .subscriber_copies import SubscriberCopies
from .untraced import untrace
from .virtual_time import VirtualTime
from .waiters import Waiters

#: Tasks ``cancel_all`` cancels and stores between two turns of the loop (~30 µs each).
CANCEL_CHUNK = 500
CANCEL_PAUSE_S = 0.002

log = logging.getLogger("kmpray.scheduler")


def _reconstructed() -> bool:
    """Whether Ray restarted this actor. Ray's property reads its own deprecated
    ``actor_id`` (a RayDeprecationWarning on the user's console at every start): quieted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=10_000)
class SchedulerActor(
    SchedulerIntake, SchedulerReports, SchedulerDispatch, SchedulerChains, SchedulerReads, SchedulerArtifacts,
    SchedulerEvents, SchedulerHousekeeping, SchedulerDevices, VirtualTime, SubscriberCopies, SchedulerRefusal,
):
    """The shell; what it does lives in its mixins, one concern each: intake (enqueue,
    register), reports (executor results, blocked loops), dispatch (pump turn, placement,
    sending), chains (coordinators), reads (status, explain), virtual time; shard 0 also
    keeps a copy of the broker's actor subscriptions (actors/subscriber_copies.py)."""

    def __init__(
        self, namespace: str, state_dir: str, virtual_time: bool, platform: str, config: dict[str, Any],
        clock_start_ms: int | None = None,
    ):
        untrace(self)  # its own calls without Ray's tracing shim (actors/untraced.py)
        self._born = time.monotonic()
        self.serving_in_s: float | None = None  # from process start to serving (restore included)
        self.namespace = namespace
        self.state_dir = state_dir
        self.config = EngineConfig.model_validate(config)
        self.engine_config = config  # as started (the engine's, before a shard's share): ready()
        # Shard k of the engine: its own store, artifacts and timers (names.py), and its
        # share of admission control and of the heavy workers (each shard's pool: at least
        # one, so its heavy work never waits for a pool another shard's workers fill);
        # shard 0 keeps the files of an unsharded engine.
        self.shard = shard_index(namespace)
        self._start_subscriber_copies(namespace, ORACLE if self.shard == 0 else None)
        shards, cfg = self.config.scheduler_shards, self.config
        if shards > 1:
            self.config = cfg.model_copy(update={
                "max_pending_tasks": -(-cfg.max_pending_tasks // shards),  # rounded up
                "heavy_pool_size": share(cfg.heavy_pool_size, shards, self.shard, min(1, cfg.heavy_pool_size)),
            })
        self.home = str(Path(state_dir) / f"shard-{self.shard}") if self.shard else state_dir
        self._store_failed: StoreWriteFailed | None = None
        try:
            self._restore(self.home, virtual_time, platform, clock_start_ms)
        except StoreRefused as exc:
            self._refuse(exc)
            return
        except (sqlite3.Error, OSError) as exc:  # a write at start (a full disk): try again later
            self._refuse(self._store_write_failed(exc, STORE_FAILED_RETRY_S))
            return
        self.rejections: deque[tuple[float, str, str, str]] = deque(maxlen=1000)
        self._answers: list[tuple[str, bytes, int]] = []  # (request token, answer, ms) to store
        self._taking_in: dict[str, asyncio.Future[Any]] = {}  # enqueue_many calls taken in slice by slice
        self._commit_due: asyncio.Future[None] | None = None  # see SchedulerIntake._commit
        self.stopped = False  # stop() was called: the engine is shutting down
        self._acked: int | None = None  # outbox events up to here are in the event log
        # Executors' answers to the cancels sent, until each is in (pruned at each flush):
        # cancel() and a commit that cancelled runs (a REPLACE) answer once they are.
        self._cancel_acks: list[asyncio.Future[None]] = []
        self.metrics = Metrics(namespace)
        self._write_ms: deque[float] = deque(maxlen=4096)  # store transactions since the last publish
        self.waiters = Waiters(self.core)
        self._reconciling = asyncio.Lock()
        self._watcher = FileWatcher()
        self._blocked = BlockedLoops()  # executors and heavy workers whose loop a worker blocks
        self.artifacts = ArtifactKeeper(self.home, self.config)  # large step data
        self.pool = ExecutorPool(namespace, self.config, self.core, self._blocked, self._kick, self.artifacts.where,
                                 self._started)
        self.heavy = HeavyPool(self, namespace, self.config, self._blocked, self.artifacts.where)
        self.stealer = Stealer(self.pool, self.core, self._kick, self.clock.now_ms)  # stealing.py
        self.pool.heard = lambda done: self._hear(done, (), ())  # results a dead process spooled
        self._wake = asyncio.Event()
        self._wake_at: int | None = None  # the due time the loop is sleeping towards
        self._idle = asyncio.Event()
        self._advancing = asyncio.Lock()  # advance_time calls, one after another (virtual_time.py)
        self._broker: Any = None
        # Events to the broker, batched: (outbox number, body). A completion event is stored
        # with its result (the store's outbox) and forgotten once the broker acknowledges
        # it; after a crash the next scheduler sends the rest again, and the broker appends
        # each outbox number once. Progress events (no number) are best-effort.
        # Messages and commits, counted (status()["messages"]): what a task costs the scheduler.
        self.messages: Counter[str] = Counter()
        self._events: Outbox[tuple[int | None, bytes]] = Outbox(
            lambda batch: self._publish(batch),
            "events to the broker",
            lambda _last, batch: self._events_acked(batch),
            timeout_s=60,
            eager=False,
            linger_s=self.config.event_linger_ms / 1000,
        )
        self._coordinators: list[Any] = []
        self._chain_outboxes: list[Outbox[Message]] = []
        self._resyncing: dict[int, float] = {}  # coordinator -> when its snapshot was answered
        self._local_chains: ChainCoordinatorCore | None = None  # chain_coordinators=0
        self._lane: LaneServer | None = None  # see _open_lane
        self._ready = asyncio.ensure_future(self._start_or_refuse())

    # ------------------------------------------------------------- lifecycle
    def _restore(self, state_dir: str, virtual_time: bool, platform: str, clock_start_ms: int | None) -> None:
        """Open the store and rebuild the core from it. A store refused at open, or found
        damaged below its rows while restoring, raises StoreRefused (one line)."""
        self.store = SqliteTaskStore(Path(state_dir) / "tasks.db", self.config.durability,
                                     self.config.store_lock_wait_s, engine_identity(self.namespace))
        if virtual_time:
            saved = self.store.get_meta("virtual_now")
            # A new engine's shards start their virtual clocks at one instant (bootstrap's), and
            # advance_time moves them together, so they agree on "now".
            start = saved if isinstance(saved, int) else clock_start_ms
            self.clock: ManualClock | SystemClock = ManualClock(start)
            self.store.put_meta("virtual_now", self.clock.now_ms())
        else:
            self.clock = SystemClock()
        self.virtual_time = virtual_time
        # Timed runs go to executors this early (real time only: see EngineConfig).
        self._lead_ms = 0 if virtual_time else self.config.timer_lead_ms
        self.platform = platform
        self._blobs: dict[str, tuple[int, bytes]] = {}  # registered worker -> (version, class blob)
        self._device_overrides: dict[str, dict[str, Any]] | None = None  # the oracle's (constraint_oracle.py)
        self._seen_devices: dict[str, dict[str, Any]] | None = None  # in the store (scheduler_devices.py)
        if _reconstructed():  # the oracle may have died with the process before (scheduler_devices.py)
            self._device_overrides = self._saved_overrides()
        known = self.store.get_meta("known_workers")
        self.known: set[str] = set(known) if isinstance(known, list) else set()
        self.core = SchedulerCore(
            self.clock, profile(platform), self.config, self._blobs.__contains__, self.known.__contains__
        )
        self.core.tasks.loader = self.store.read_tasks  # finished rows kept in the store only
        started = time.monotonic()
        # Restoring allocates a few objects per row and frees almost none: each full
        # collection the allocations trigger meanwhile walks the whole heap for nothing
        # (~0.4 of 1.2 s for 100,000 rows here). Off until the rows are in, then frozen.
        gc.disable()
        try:
            records, chains = self.store.load(self.core.restore_cold), self.store.load_chains()
            self._check_shards(bool(records or chains))
            damaged = [(q.table, q.key, q.reason) for q in self.store.take_fresh_quarantine()]
            self.core.restore(records, chains, damaged)
        finally:
            gc.enable()
        gc.freeze()  # the restored rows live on: kept out of the collector's scans (timing.py)
        self.restored_in_s = time.monotonic() - started
        # This is the store's ``_started``-th scheduler: the first part of its epoch (actors/fencing.py).
        starts = self.store.get_meta("scheduler_starts")
        self._started = (starts if isinstance(starts, int) else 0) + 1
        self.store.put_meta("scheduler_starts", self._started)
        self.core.run_floor = self._started * RUN_IDS_PER_START  # before any dispatch (kmpray/restore.py)

    def _check_shards(self, has_rows: bool) -> None:
        """A state dir serves the shard count it was written with: tasks are found by a hash
        of their id modulo that count, so another count would look for them in the wrong
        store and could admit a second task under a unique name. Refused, never guessed."""
        want = self.config.scheduler_shards
        had = self.store.get_meta("scheduler_shards")
        if had is None and has_rows:
            had = 1  # written before shards existed: one scheduler
        if had is not None and had != want:
            raise StoreRefused(
                f"{self.state_dir} holds an engine written with scheduler_shards={had}; it was started "
                f"with scheduler_shards={want}. Start it with {had} (changing the count on a state dir with "
                "tasks is not supported: the tasks would be looked for on the wrong shards), or use a new "
                "state_dir")
        if had is None:
            self.store.put_meta("scheduler_shards", want)

    async def _start(self) -> None:
        # Executors first: their processes take longest to start (Ray starts few at once).
        for node in self._executor_nodes():
            self.pool.add(node)
        oracle = lookup(ORACLE, base_namespace(self.namespace))  # the engine's, shared
        # Restarted while the registry (in the oracle) lived on: take its copies back (actors/registry.py).
        self._blobs.update(await call_with_retry(lambda: oracle.dump_classes.remote(self.namespace)))
        self._broker = lookup(BROKER, base_namespace(self.namespace))  # the engine's, shared
        await self._resend_events()
        states, overrides = await call_with_retry(lambda: oracle.ready_with_overrides.remote())
        self._keep_overrides(overrides)
        self._first_device_states(states)  # (scheduler_devices.py: with those it saw before a restart)
        await self.pool.start()
        restarted = _reconstructed()
        # Results processes spooled while no scheduler took them (actors/spool.py): their
        # runs are adopted like held ones, then the results applied as late reports.
        spooled = await asyncio.to_thread(take, self.pool.spool) if self.pool.spool is not None else []
        await adopt_held_runs(self.core, self.pool, self.heavy, self.namespace, restarted, spooled)
        if restarted and (missing := sorted(self.known - set(self._blobs))):  # actors/class_recovery.py
            held_by = [s.handle for s in self.pool.live()] + [s.handle for s in self.heavy.slots if s.handle]
            background(take_classes_back(self._blobs, missing, held_by, self.config.ping_timeout_s,
                                         self._classes_held, self.register_workers),
                       "taking worker classes back")
        if spooled:
            log.warning("restarted: %d results spooled while no scheduler served are applied", len(spooled))
            await self._hear(spooled, (), ())
        self._start_chains()
        self._flush()
        self._resync_coordinators()
        await self._open_lane()
        background(self._loop(), "the scheduler's dispatch loop")
        background(self._housekeeping(), "the scheduler's housekeeping loop")
        background(self._reconciler(), "the scheduler's reconcile loop")
        self.serving_in_s = time.monotonic() - self._born

    async def _open_lane(self) -> None:
        """The local lane (kmpray/lane.py) for enqueue calls from this node's clients, and
        reports from and runs to its executors and heavy workers; if it cannot open, Ray's
        calls carry them all (said once in the log)."""
        if not self.config.local_lane:
            return
        methods = {name: getattr(self, name) for name in LANE_METHODS | LANE_READS}
        methods[REPORT] = self.report_from_lane  # executors' and heavy workers' (actors/report_lane.py)
        attached = {EXECUTOR: self._executor_lane, TAKEN: self._taken}  # runs down the lane (actors/submit_lane.py)
        lane = LaneServer(methods, attached)
        try:
            await lane.start()
        except OSError as exc:
            log.warning("local lane not opened (%s): clients use Ray's calls only", exc)
            return
        self._lane = lane

    async def _executor_lane(self, conn: Conn, kind: str, index: int, incarnation: str) -> None:
        """An executor's (or heavy worker's) lane says which process it is: its runs go down
        it from now on."""
        if kind == "light" and isinstance(index, int) and 0 <= index < len(self.pool.slots):
            self.pool.lanes.opened(index, incarnation, conn)
        elif kind == "heavy" and isinstance(index, int) and 0 <= index < len(self.heavy.slots):
            self.heavy.lanes.opened(index, incarnation, conn)

    async def _taken(self, conn: Conn, call_id: int, incarnation: str, done: list[Any]) -> None:
        SubmitLanes.taken(conn, call_id, incarnation, done)

    async def stop(self) -> None:
        """The engine is shutting down (bootstrap.stop_engine; the process is killed right
        after). A process ends a moment after ray.kill and, till then, answered calls: a
        client still attached read a task after shutdown() returned (6 calls in 40 here).
        From now on every call raises what a client is told once the actor is gone (as a
        refused store's does, see __init__), and the local lane closes."""
        self.stopped = True
        stopped = asyncio.get_running_loop().create_future()
        stopped.set_exception(EngineUnavailable.stopped(base_namespace(self.namespace)))
        stopped.exception()  # retrieved: the calls that await it raise it, none need to
        self._ready = stopped
        if self._lane is not None:
            self._lane.close()
            self._lane = None

    async def lane(self) -> dict[str, Any] | None:
        """Where and how this node's clients reach the local lane (None: there is none)."""
        await self._ready
        if self._lane is None:
            return None
        return {"address": self._lane.address, "secret": self._lane.secret,
                "node": ray.get_runtime_context().get_node_id()}

    def _executor_nodes(self) -> list[str]:
        """One executor per CPU on every alive node, or ``executors`` spread over the nodes."""
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if self.config.executors:
            return [nodes[i % len(nodes)]["NodeID"] for i in range(self.config.executors)]
        return [n["NodeID"] for n in nodes for _ in range(executors_for(n))]

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                self._pump()
            except StoreWriteFailed:
                return  # nothing more goes out of this process: it is ending (_store_write_failed)
            except Exception:
                log.exception("scheduler pump failed; continuing")
            due = self.core.next_due_ms(self._lead_ms)
            self._wake_at = due
            timeout = None if self.virtual_time else sleep_s(due, self.clock.now_ms())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _reconcile(self) -> None:
        async with self._reconciling:
            nodes = {n["NodeID"]: n for n in await asyncio.to_thread(ray.nodes) if n.get("Alive")}
            if nodes:
                demand = heavy_demand(self.config.heavy_num_cpus, self.config.heavy_resources)
                self.heavy.capacity = placeable([n.get("Resources", {}) for n in nodes.values()], demand)
            resumed = await self.pool.reconcile(nodes)
            if self.core.suspects_waiting():
                # Suspect runs wait for an executor to run alone on: try again (the one being
                # emptied for them may have restarted, with no report to release them).
                self.core.release_unplaced()
                resumed = True
            else:
                self.pool.end_isolation()  # nobody waits to run alone (cancelled meanwhile)
            if resumed:
                self._pump()
            await self.heavy.reconcile(self.config.ping_timeout_s)

    def _kick(self) -> None:
        self._wake.set()

    # -------------------------------------------------------------- effects
    def _flush(self) -> None:
        if self._store_failed is not None:
            raise self._store_failed
        # Work handled outside the loop (a report, a push) may have set an earlier timer
        # (a retry's backoff): wake the loop so it sleeps towards that instead.
        due = self.core.next_due_ms(self._lead_ms)
        if due is not None and (self._wake_at is None or due < self._wake_at):
            self._wake_at = due
            self._wake.set()
        fx = self.core.drain()
        answers, self._answers = self._answers, []  # enqueue answers: stored with what they did
        if not fx and not answers:
            return
        acked, self._acked = self._acked, None  # events the broker has: forgotten in this write
        self.messages["commits"] += 1
        began = time.perf_counter()
        try:
            bodies = [encode_event(e) for e in fx.events]
            numbers = iter(self.store.write(
                fx.persist.values(), fx.delete, fx.chains.values(), fx.delete_chains,
                events=[b for e, b in zip(fx.events, bodies, strict=True) if e.kind == "completion"],
                answers=answers, acked=acked,
            ))
        except Exception as exc:  # a full disk, or a row that would not encode: memory is ahead of the store
            raise self._store_write_failed(exc) from exc
        self._write_ms.append((time.perf_counter() - began) * 1000)
        if fx.cancel_runs:
            self._cancel_acks = self._cancels_pending()
            sent = self.pool.cancel(fx.cancel_runs)
            sent += [told for key in fx.cancel_runs if (told := self.heavy.cancel(key)) is not None]
            self._cancel_acks += [asyncio.ensure_future(_answered(a)) for a in sent]
        local = self._local_chains
        if fx.chain_msgs and local is None:
            self._to_coordinators(fx.chain_msgs)  # first: a chain's next step waits for the answer
        if bodies:
            self._events.add((next(numbers) if e.kind == "completion" else None, b)
                             for e, b in zip(fx.events, bodies, strict=True))
        for name in fx.settled:
            self.waiters.wake(name)
        if not self.pool.where and not self.heavy.where and not self.core.ready_count():
            self._idle.set()
        if fx.chain_msgs and local is not None:
            # In-process coordination: promote now (after this batch's events, which happened
            # first), and send what became ready at once.
            self._chain_actions(local.apply(fx.chain_msgs))

    # ------------------------------------------------------------- messages
    async def cancel(self, name: str) -> int:
        await self._ready
        n = self.core.cancel(name)
        self._flush()
        self._kick()
        await self._cancels_delivered()
        return n

    async def cancel_all(self) -> int:
        """Every task unfinished at the call, CANCEL_CHUNK at a time, each chunk stored
        before this loop serves other calls: in one pass, 200,000 tasks held every enqueue
        5.8 s. A task enqueued meanwhile came after the call and is not cancelled."""
        await self._ready
        rows = [rec for rec in self.core.tasks.values() if not rec.state.is_finished]
        n = 0
        for i in range(0, len(rows), CANCEL_CHUNK):
            if i:  # a few ms: an enqueue waiting is answered after its own commit, a pump turn away
                await asyncio.sleep(CANCEL_PAUSE_S)
            n += self.core.cancel_rows(rows[i:i + CANCEL_CHUNK])  # (those finished meanwhile: skipped)
            self._flush()
        await self._cancels_delivered()
        return n

    async def wait(self, name: str, timeout_s: float | None, runs_before: int | None = None) -> dict[str, Any] | None:
        """Until the work under ``name`` is finished (a recurring task: a run after ``runs_before`` ends)."""
        await self._ready
        rec = self.core.latest(name)
        if rec is None:
            return None
        before = rec.run_count if runs_before is None else runs_before
        if self.core.waited_out(rec, before) or timeout_s == 0:
            return self._info(rec)
        await self.waiters.wait(name, before, timeout_s)
        rec = self.core.latest(name)
        return self._info(rec) if rec is not None else None

    async def fire(self, kind: str, uri: str | None = None) -> int:
        await self._ready
        n = self.core.fire(kind, uri)
        self._flush()
        self._kick()
        return n


async def _answered(ref: Any) -> None:
    with contextlib.suppress(Exception):  # an executor that died: it begins nothing either
        await ref
