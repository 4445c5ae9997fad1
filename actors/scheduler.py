"""SchedulerActor: the thin shell around SchedulerCore.

Each method receives a message, calls the core, then performs the effects the core
returned: persist (one transaction), dispatch batches to executors, cancel runs,
publish events, wake waiters. It restarts (``max_restarts=-1``) and rebuilds from the
store; a reconcile loop re-runs work whose executor died.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ray

from kmpray.chain_coordination import ChainCoordinatorCore, Message, coordinator_index
from kmpray.clock import ManualClock, SystemClock
from kmpray.config import EngineConfig
from kmpray.device import DeviceState
from kmpray.driver import pump
from kmpray.engine import Dispatch, SchedulerCore
from kmpray.errors import StoreRefused
from kmpray.placement import assign, heavy_demand, placeable
from kmpray.platforms import profile
from kmpray.protocol import Began, Done, Fence, Progress, Run, RunKey
from kmpray.results import Failure, from_wire
from kmpray.store import SqliteTaskStore
from kmpray.timing import ANSWER_RETENTION_S, PING_TIMEOUT_S, PRUNE_S, RECONCILE_S
from kmpray.validation import check_output
from kmpray.watch import FileWatcher

from .adoption import adopt_held_runs
from .blocked_loops import BlockedLoops
from .event_broker import encode_event
from .executor_pool import ExecutorPool, executors_for
from .heavy_pool import HeavyPool
from .names import BROKER, CHAIN, ORACLE, REGISTRY, lookup
from .outbox import Outbox
from .retry import call_with_retry
from .scheduler_intake import SchedulerIntake
from .scheduler_reads import SchedulerReads
from .virtual_time import VirtualTime
from .waiters import Waiters

log = logging.getLogger("kmpray.scheduler")

@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=10_000)
class SchedulerActor(SchedulerIntake, SchedulerReads, VirtualTime):
    def __init__(self, namespace: str, state_dir: str, virtual_time: bool, platform: str, config: dict[str, Any]):
        self._born = time.monotonic()
        self.serving_in_s: float | None = None  # from process start to serving (restore included)
        self.namespace = namespace
        self.state_dir = state_dir
        self.config = EngineConfig.model_validate(config)
        try:
            self._restore(state_dir, virtual_time, platform)
        except StoreRefused as exc:
            # Stay up to say why: every call (connect's first) raises this one line.
            log.error("%s", exc)
            self._ready = asyncio.get_running_loop().create_future()
            self._ready.set_exception(exc)
            return
        self.rejections: deque[tuple[str, str, str]] = deque(maxlen=1000)
        self._answers: list[tuple[str, bytes, int]] = []  # (request token, answer, ms) to store
        self._acked: int | None = None  # outbox events up to here are in the event log
        self._free: list[tuple[int, int]] = []  # (room, executor) and idle heavy slots, as _room saw them
        self._idle_heavy: list[int] = []
        self.waiters = Waiters(self.core)
        self._reconciling = asyncio.Lock()
        self._watcher = FileWatcher()
        self._blocked = BlockedLoops()  # executors and heavy workers whose loop a worker blocks
        self.pool = ExecutorPool(namespace, self.config, self.core, self._blocked, self._kick)
        self.heavy = HeavyPool(self, namespace, self.config, self._blocked)
        self._wake = asyncio.Event()
        self._wake_at: int | None = None  # the due time the loop is sleeping towards
        self._idle = asyncio.Event()
        self._broker: Any = None
        # Events to the broker, batched: (outbox number, body). A completion event is stored
        # with its result (the store's outbox) and forgotten once the broker acknowledges
        # it; after a crash the next scheduler sends the rest again, and the broker appends
        # each outbox number once. Progress events (no number) are best-effort.
        self._events: Outbox[tuple[int | None, bytes]] = Outbox(
            lambda batch: self._broker.publish.remote([b for _o, b in batch], [o for o, _b in batch]),
            "events to the broker",
            lambda _last, batch: self._events_acked(batch),
            timeout_s=60,
            eager=False,
            linger_s=self.config.event_linger_ms / 1000,
        )
        self._coordinators: list[Any] = []
        self._chain_outboxes: list[Outbox[Message]] = []
        self._local_chains: ChainCoordinatorCore | None = None  # chain_coordinators=0
        self._ready = asyncio.ensure_future(self._start())

    # ------------------------------------------------------------- lifecycle
    def _restore(self, state_dir: str, virtual_time: bool, platform: str) -> None:
        """Open the store and rebuild the core from it. A store refused at open, or found
        damaged below its rows while restoring, raises StoreRefused (one line)."""
        self.store = SqliteTaskStore(Path(state_dir) / "tasks.db")
        if virtual_time:
            saved = self.store.get_meta("virtual_now")
            self.clock: ManualClock | SystemClock = ManualClock(saved if isinstance(saved, int) else None)
            self.store.put_meta("virtual_now", self.clock.now_ms())
        else:
            self.clock = SystemClock()
        self.virtual_time = virtual_time
        # Timed runs go to executors this early (real time only: see EngineConfig).
        self._lead_ms = 0 if virtual_time else self.config.timer_lead_ms
        self.platform = platform
        self._blobs: dict[str, tuple[int, bytes]] = {}  # registered worker -> (version, class blob)
        known = self.store.get_meta("known_workers")
        self.known: set[str] = set(known) if isinstance(known, list) else set()
        self.core = SchedulerCore(
            self.clock, profile(platform), self.config, self._blobs.__contains__, self.known.__contains__
        )
        started = time.monotonic()
        records, chains = self.store.load(), self.store.load_chains()
        damaged = [(q.table, q.key, q.reason) for q in self.store.take_fresh_quarantine()]
        self.core.restore(records, chains, damaged)
        self.restored_in_s = time.monotonic() - started

    async def _start(self) -> None:
        registry = lookup(REGISTRY, self.namespace)
        # Restarted while the registry lived on: take its copies back (see actors/registry.py).
        self._blobs.update(await call_with_retry(lambda: registry.dump.remote()))
        self._broker = lookup(BROKER, self.namespace)
        unsent = self.store.pending_events()  # completion events a crash kept from the broker
        if unsent:
            log.warning("restarted: sending %d completion events again (the broker appends each once)",
                        len(unsent))
            self._events.add(unsent)
        oracle = lookup(ORACLE, self.namespace)
        states = await oracle.ready.remote()
        self.core.set_devices({n: DeviceState.model_validate(s) for n, s in states.items()})
        for node in self._executor_nodes():
            self.pool.add(node)
        await self.pool.start()
        await adopt_held_runs(self.core, self.pool, self.heavy, self.namespace)
        pool = self.config.chain_coordinators
        self._coordinators = [lookup(CHAIN.format(i), self.namespace) for i in range(pool)]
        self._chain_outboxes = [
            Outbox(
                lambda batch, h=handle: h.handle.remote(batch),
                f"chain coordinator {i}",
                lambda actions, _batch: self._chain_actions(actions),
            )
            for i, handle in enumerate(self._coordinators)
        ]
        if pool == 0:
            self._local_chains = ChainCoordinatorCore()
            local = self._local_chains
            self.core.chain_actions(local.resync(self.core.chain_snapshot(0, 1), local.mark()))
        self._flush()
        # Messages to the coordinators that were in flight when this scheduler (re)started
        # are gone: each rebuilds its plans from this scheduler's rows (harmless at first start).
        for handle in self._coordinators:
            asyncio.ensure_future(call_with_retry(lambda h=handle: h.resync.remote(), timeout_s=120))
        asyncio.ensure_future(self._loop())
        asyncio.ensure_future(self._housekeeping())
        self.serving_in_s = time.monotonic() - self._born

    def _executor_nodes(self) -> list[str]:
        """One executor per CPU on every alive node, or ``executors`` spread over the nodes."""
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if self.config.executors:
            return [nodes[i % len(nodes)]["NodeID"] for i in range(self.config.executors)]
        return [n["NodeID"] for n in nodes for _ in range(executors_for(n))]

    async def device_states(self, payload: dict[str, dict[str, Any]]) -> list[str]:
        """Pushed by the oracle on every change: re-gate tasks, fire device triggers, dispatch."""
        await self._ready
        fired = self.core.set_devices({n: DeviceState.model_validate(s) for n, s in payload.items()})
        self._pump()
        return fired

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                self._pump()
            except Exception:
                log.exception("scheduler pump failed; continuing")
            timeout = None
            due = self.core.next_due_ms(self._lead_ms)
            self._wake_at = due
            if due is not None and not self.virtual_time:
                timeout = max(0.0, (due - self.clock.now_ms()) / 1000)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _housekeeping(self) -> None:
        last_prune = time.monotonic()
        while True:
            await asyncio.sleep(RECONCILE_S)
            try:
                await self._reconcile()
                changed = self._watcher.poll(self.core.watched_uris())
                if changed and sum(self.core.fire("content_uri", uri) for uri in changed):
                    self._kick()
                self.core.warn_long_waits()
                if self._acked is not None:  # nothing else wrote since the broker's last ack
                    acked, self._acked = self._acked, None
                    self.store.ack_events(acked)
                if time.monotonic() - last_prune > PRUNE_S:
                    last_prune = time.monotonic()
                    self.core.prune()
                    self._flush()
                    self.store.forget_answers(int((time.time() - ANSWER_RETENTION_S) * 1000))
            except Exception:
                log.exception("housekeeping failed; will retry")

    async def _reconcile(self) -> None:
        async with self._reconciling:
            nodes = {n["NodeID"]: n for n in await asyncio.to_thread(ray.nodes) if n.get("Alive")}
            if nodes:
                demand = heavy_demand(self.config.heavy_num_cpus, self.config.heavy_resources)
                self.heavy.capacity = placeable([n.get("Resources", {}) for n in nodes.values()], demand)
            if await self.pool.reconcile(nodes):
                self._pump()
            await self.heavy.reconcile(PING_TIMEOUT_S)

    def _kick(self) -> None:
        self._wake.set()

    # -------------------------------------------------------------- effects
    def _pump(self) -> None:
        pump(self.core, self._room, self._hand_over, self._lead_ms)  # kmpray/driver.py
        self._flush()

    def _room(self) -> tuple[int, int]:
        """How many light and heavy runs may go out now (the pools' free room, seen once per
        batch and kept for ``_hand_over``); heavy workers grow when heavy runs wait."""
        self._free, self._idle_heavy = self.pool.free(), self.heavy.idle()
        if self.core.heavy_ready_count() > len(self._idle_heavy):
            self.heavy.grow()
        room = sum(n for n, _ in self._free)
        return min(room, self.config.max_batch * len(self._free)), len(self._idle_heavy)

    def _hand_over(self, batch: list[Dispatch]) -> bool:
        light = [d for d in batch if not d.heavy]
        for d, i in zip((d for d in batch if d.heavy), self._idle_heavy, strict=False):
            self.heavy.send(i, d)
        plan, unplaced, over = assign(light, self._free, self.pool.nodes())
        for i, part in plan.items():
            self._send(i, part)
        for d in unplaced:  # no room on the nodes that satisfy it: waits for capacity there
            self.core.unplaced(d.key, d.run_id)
        for d in over:  # never expected (take_ready takes no more than the room): run later
            self.core.run_lost(d.key, d.run_id)
        return not unplaced

    def _wire(self, d: Dispatch) -> Run:
        return Run(d.key, d.run_id, d.worker, self._blobs.get(d.worker, (0, b""))[0], d.input, d.upstream,
                d.previous_attempts, d.timeout_ms, d.start_at_ms)

    def _send(self, i: int, part: list[Dispatch]) -> None:
        keys = [(d.key, d.run_id) for d in part]
        ref = self.pool.send(i, keys, [self._wire(d) for d in part])
        if self.core.decisions.maxlen:
            now, node, log_ = self.clock.now_ms(), self.pool.slots[i].node, self.core.decisions
            for d in part:
                log_.append((now, d.key, ("handed", d.run_id, f"executor {i}", node)))
        asyncio.ensure_future(self._confirm(i, ref, keys))

    async def _confirm(self, i: int, ref: Any, keys: list[tuple[str, int]]) -> None:
        try:
            incarnation = await ref
        except Exception as exc:
            # The batch may or may not have arrived: run it again elsewhere (a copy that did
            # arrive reports under its old run id, which is ignored). At-least-once.
            log.warning("executor %d: submit failed (%s)", i, type(exc).__name__)
            self.pool.slots[i].reachable = False
            self.pool.lose(i, "did not take its batch", keys)
            self._flush()
            await self._reconcile()
            return
        if incarnation != self.pool.slots[i].incarnation:
            await self._reconcile()

    def _flush(self) -> None:
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
        bodies = [encode_event(e) for e in fx.events]
        numbers = iter(self.store.write(
            fx.persist.values(), fx.delete, fx.chains.values(), fx.delete_chains,
            events=[b for e, b in zip(fx.events, bodies, strict=True) if e.kind == "completion"],
            answers=answers, acked=acked,
        ))
        if fx.cancel_runs:
            self.pool.cancel(fx.cancel_runs)
            for key in fx.cancel_runs:
                self.heavy.cancel(key)
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

    def _events_acked(self, batch: list[tuple[int | None, bytes]]) -> None:
        """The broker has these: they leave the outbox with the next store write (no
        transaction of their own; housekeeping does it when nothing else writes)."""
        upto = max((n for n, _b in batch if n is not None), default=None)
        if upto is not None:
            self._acked = max(upto, self._acked or 0)

    def _to_coordinators(self, msgs: list[Message]) -> None:
        pool = len(self._coordinators)
        if not pool:
            return  # not started yet: the coordinators resync from the rows at start
        for msg in msgs:
            self._chain_outboxes[coordinator_index(msg.chain_id, pool)].add((msg,))

    def _chain_actions(self, actions: list[Message]) -> None:
        """What chain messages imply: a coordinator's reply, or the in-process rules' answer.
        (A coordinator down for good resyncs from this scheduler when it restarts.)"""
        if actions:
            self.core.chain_actions(actions)
            self._pump()

    # ------------------------------------------------------------- messages
    async def chain_actions(self, actions: list[Message]) -> None:
        """From a chain coordinator: promote a step (with its merged data) or cascade."""
        await self._ready
        self.core.chain_actions(actions)
        self._pump()

    async def chain_snapshot(self, index: int, pool: int) -> dict[str, Any]:
        await self._ready
        return self.core.chain_snapshot(index, pool)

    async def wait_chain(self, chain_id: str, timeout_s: float | None) -> dict[str, Any] | None:
        await self._ready
        if chain_id not in self.core.chains:
            return None
        if not self.core.is_settled(chain_id) and timeout_s != 0:
            await self.waiters.wait(chain_id, 0, timeout_s)
        info = self.core.chain_info(chain_id)
        return info.model_dump(mode="json") if info is not None else None

    async def loop_blocked(
        self, kind: str, index: int, incarnation: str, lag_s: float, worker: str | None,
        run: RunKey | None, begun: list[RunKey],
    ) -> Fence | None:
        """From an executor's watch thread: a worker blocks its event loop. It gets nothing
        more until it runs again; its runs that had not begun are withdrawn and re-queued
        (not counted as attempts). Returns the fence: every batch up to it is withdrawn."""
        await self._ready
        task = run[0] if run else None
        self._blocked.block(kind, index, worker, task, lag_s)
        if kind != "light" or index >= len(self.pool.slots):
            log.warning("heavy worker %d: %s (task %s) blocks its event loop", index, worker, task)
            return None
        held = {(k, r) for k, r in begun}
        for key in held:  # their own "began" notices wait behind the blocked loop
            self.core.started(*key)
        withdrawn = self.pool.withdraw(index, held)
        log.warning("executor %d: %s (task %s) blocks its event loop (%.2f s so far); %d queued runs go to "
                    "other executors", index, worker, task, lag_s, len(withdrawn))
        if reason := self._blocked.reason(self._serving(), self.core.ready_count()):
            log.warning("%s", reason)
        self._pump()
        return Fence(self.pool.epoch, self.pool.slots[index].batch_seq)

    async def loop_unblocked(
        self, kind: str, index: int, incarnation: str, blocked_s: float, worker: str | None,
        run: tuple[str, int] | None, threaded: bool,
    ) -> None:
        """The loop runs again: it takes runs again; the blocking worker is named (log, event)."""
        await self._ready
        notice = self._blocked.unblock(kind, index, worker, blocked_s, threaded)
        log.warning("%s %d: %s (task %s)", "executor" if kind == "light" else "heavy worker", index, notice,
                    run[0] if run else None)
        if run is not None:
            self.core.notice(run[0], worker or "?", notice)
        if kind == "light" and index < len(self.pool.slots):
            self.pool.slots[index].reachable = True  # it just spoke: a ping that timed out meanwhile is stale
        self._pump()

    async def report(self, done: list[Done], progress: list[Progress], began: Iterable[Began] = ()) -> None:
        """From an executor or heavy worker: results, progress and "began" notices, batched."""
        await self._ready
        for key, run_id in began:
            self.core.started(key, run_id)
        for key, run_id, pct, message in progress:
            self.core.progress(key, run_id, pct, message)
        for key, run_id, raw in done:
            self.pool.reported((key, run_id))
            self.heavy.free((key, run_id))
            self.core.release_unplaced()
            try:
                result = from_wire(raw)
                if result.kind == "success" and result.data is not None:
                    check_output(result.data, self.config)
            except Exception as exc:
                result = Failure(f"invalid worker result: {exc}")
            self.core.complete(key, run_id, result)
        self._pump()

    async def cancel(self, name: str) -> int:
        await self._ready
        n = self.core.cancel(name)
        self._flush()
        self._kick()
        return n

    async def cancel_all(self) -> int:
        await self._ready
        n = self.core.cancel_all()
        self._flush()
        return n

    async def wait(self, name: str, timeout_s: float | None, runs_before: int | None = None) -> dict[str, Any] | None:
        """Until the work under ``name`` is finished (a recurring task: a run after ``runs_before`` ends)."""
        await self._ready
        rec = self.core.latest(name)
        if rec is None:
            return None
        before = rec.run_count if runs_before is None else runs_before
        if rec.state.is_finished or (self.core.recurs(rec) and rec.run_count > before) or timeout_s == 0:
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

