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
import uuid
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ray
from pydantic import TypeAdapter

from kmpray.chain import ChainCoordinatorCore, Message, coordinator_index
from kmpray.clock import ManualClock, SystemClock
from kmpray.config import EngineConfig
from kmpray.constraints import DEFAULT_CONSTRAINTS, Constraints
from kmpray.engine import Dispatch, Outcome, SchedulerCore
from kmpray.enums import ExistingPolicy, ScheduleResult, TaskState
from kmpray.errors import InvalidParameters, StoreRefused, VirtualTimeOnly
from kmpray.placement import heavy_demand, placeable
from kmpray.platforms import profile
from kmpray.results import Failure, from_wire
from kmpray.store import SqliteTaskStore
from kmpray.triggers import Trigger
from kmpray.device import DeviceState
from kmpray.validation import check_output
from kmpray.watch import FileWatcher

from .blocked_loops import BlockedLoops
from .event_broker import encode_event
from .executor import LightExecutor
from .heavy_pool import HeavyPool
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from .names import BROKER, CHAIN, EXECUTOR, HEAVY, ORACLE, REGISTRY, lookup
from .outbox import Outbox
from .retry import call_with_retry

log = logging.getLogger("kmpray.scheduler")

_TRIGGER = TypeAdapter(Trigger)
_TRIGGERS: dict[tuple[tuple[str, Any], ...], Any] = {}


def _trigger(raw: Any) -> Any:
    """Validate a trigger payload; the flat dicts of a burst repeat, so cache them."""
    if not isinstance(raw, dict):
        return _TRIGGER.validate_python(raw)
    try:
        key = tuple(sorted(raw.items()))
        cached = _TRIGGERS.get(key)
    except TypeError:
        return _TRIGGER.validate_python(raw)
    if cached is None:
        cached = _TRIGGER.validate_python(raw)
        if len(_TRIGGERS) < 4096:
            _TRIGGERS[key] = cached
    return cached


def _executors_for(node: dict[str, Any]) -> int:
    """Light executors a node gets (``executors=0``): one per CPU, at least one."""
    return max(1, int(node["Resources"].get("CPU", 1)))


RECONCILE_S = 1.0
PING_TIMEOUT_S = 10.0
PRUNE_S = 60.0


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=10_000)
class SchedulerActor:
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
        self._waiters: dict[str, list[tuple[asyncio.Future[None], int]]] = {}
        self._executors: list[Any] = []
        self._incarnations: list[str | None] = []
        self._inflight: list[dict[tuple[str, int], None]] = []
        self._exec_nodes: list[str | None] = []
        self._retired: set[int] = set()
        self._reachable: list[bool] = []  # answered its last ping: may be sent runs
        self._reconciling = asyncio.Lock()
        self._watcher = FileWatcher()
        self._where: dict[tuple[str, int], int] = {}
        # Executors whose loop a worker blocks; batches are numbered per executor under this
        # scheduler's epoch, so a blocked executor never begins a run withdrawn from it.
        self._blocked = BlockedLoops()
        self.heavy = HeavyPool(self, namespace, self.config, self._blocked)
        self._epoch = uuid.uuid4().hex
        self._batch_seq: list[int] = []
        self._lag_ms: list[float] = []  # each executor's event-loop lag at its last ping
        self._wake = asyncio.Event()
        self._wake_at: int | None = None  # the due time the loop is sleeping towards
        self._idle = asyncio.Event()
        self._broker: Any = None
        self._events: Outbox[bytes] = Outbox(
            lambda batch: self._broker.publish.remote(batch),
            "events to the broker",
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
        oracle = lookup(ORACLE, self.namespace)
        states = await oracle.ready.remote()
        self.core.set_devices({n: DeviceState.model_validate(s) for n, s in states.items()})
        for node in self._executor_nodes():
            self._add_executor(node)
        for i, handle in enumerate(self._executors):
            self._incarnations[i], _running, self._exec_nodes[i], self._lag_ms[i] = await handle.ping.remote()
            self._reachable[i] = True
        await self._adopt()
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

    async def _adopt(self) -> None:
        """Restarted: runs the previous scheduler left on executors and heavy workers
        stay theirs (their reports count) instead of running a second time."""
        holders: list[tuple[int | None, int, Any]] = [(i, -1, h) for i, h in enumerate(self._executors)]
        for slot_index in range(len(self.heavy.slots)):
            try:
                handle = await asyncio.to_thread(ray.get_actor, HEAVY.format(slot_index), self.namespace)
            except ValueError:
                continue  # never started, or retired
            holders.append((None, slot_index, handle))
        answers = await asyncio.gather(*(self._holding(h) for *_, h in holders))
        where: dict[tuple[str, int], tuple[int | None, int]] = {}
        waiting: set[tuple[str, int]] = set()
        for (i, slot_index, handle), answer in zip(holders, answers, strict=True):
            if i is None:
                self.heavy.found(slot_index, handle, answer)  # found again: its warm state kept
            for key in answer[1] if answer else ():
                where[(key[0], key[1])] = (i, slot_index)
            for key in answer[2] if answer else ():
                waiting.add((key[0], key[1]))
        adopted = self.core.adopt(where, waiting)
        for key in adopted:
            i, slot_index = where[key]
            if i is not None:
                self._inflight[i][key] = None
                self._where[key] = i
            else:
                self.heavy.adopted(slot_index, key)
        if adopted:
            log.warning("restarted: %d runs still on executors are kept, not run again", len(adopted))

    async def _holding(self, handle: Any) -> tuple[str, list[Any], list[Any]] | None:
        try:
            return await asyncio.wait_for(handle.holding.remote(), PING_TIMEOUT_S)  # type: ignore[no-any-return]
        except Exception:
            return None  # unreachable: what it holds runs again

    def _add_executor(self, node: str) -> int:
        i = len(self._executors)
        handle = LightExecutor.options(
            name=EXECUTOR.format(i),
            namespace=self.namespace,
            lifetime="detached",
            get_if_exists=True,
            # Hard: a soft affinity may land elsewhere and leave a node with no executor,
            # so runs gated to that node would have nowhere to go.
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        ).remote(self.namespace, i, self.config.model_dump())
        self._executors.append(handle)
        self._batch_seq.append(0)
        self._lag_ms.append(0.0)
        self._inflight.append({})
        self._incarnations.append(None)
        self._reachable.append(False)
        self._exec_nodes.append(node)  # until its ping says (an existing one may be elsewhere)
        return i

    def _executor_nodes(self) -> list[str]:
        """One executor per CPU on every alive node, or ``executors`` spread over the nodes."""
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if self.config.executors:
            return [nodes[i % len(nodes)]["NodeID"] for i in range(self.config.executors)]
        return [n["NodeID"] for n in nodes for _ in range(_executors_for(n))]

    async def device_states(self, payload: dict[str, dict[str, Any]]) -> list[str]:
        """Pushed by the oracle on every change: re-gate tasks, fire device triggers, dispatch."""
        await self._ready
        fired = self.core.set_devices({n: DeviceState.model_validate(s) for n, s in payload.items()})
        self._pump()
        return fired

    async def ready(self) -> dict[str, Any]:
        await self._ready
        return self.describe()

    def describe(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "state_dir": self.state_dir,
            "virtual_time": self.virtual_time,
            "platform": self.platform,
            "now_ms": self.clock.now_ms(),
            "node": ray.get_runtime_context().get_node_id(),
            "executors": len(self._executors) - len(self._retired),
            "executor_nodes": [n for i, n in enumerate(self._exec_nodes) if i not in self._retired],
            "inflight": len(self._where) + len(self.heavy.where),
            "inflight_by_node": self._inflight_by_node(),
            "heavy_workers": [i for i, slot in enumerate(self.heavy.slots) if slot.handle is not None],
            "heavy": self.heavy.status(),
            "gated": self.core.gated_count(),
            "nodes": {n: s.model_dump(mode="json") for n, s in self.core.devices.items()},
            "ready": self.core.ready_count(),
            "pending": self.core.pending,
            "counts": self.core.counts(),
            "restored_in_s": self.restored_in_s,
            "serving_in_s": self.serving_in_s,
            "workers": sorted(self._blobs),
            "waiting_for_registration": self.core.parked(),
            "quarantined": len(self.store.quarantined()),
            "blocked_executors": self._blocked.describe(),
            "executor_lag_ms": [lag for i, lag in enumerate(self._lag_ms) if i not in self._retired],
            "loop_blocks": dict(self._blocked.counts),
            "waiting_for": self._blocked.reason(self._serving(), self.core.ready_count()),
        }

    def _serving(self) -> list[int]:
        return [i for i in range(len(self._executors)) if i not in self._retired]

    def _inflight_by_node(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, runs in enumerate(self._inflight):
            node = self._exec_nodes[i]
            if runs and node is not None:
                out[node] = out.get(node, 0) + len(runs)
        return out

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
                if time.monotonic() - last_prune > PRUNE_S:
                    last_prune = time.monotonic()
                    self.core.prune()
                    self._flush()
            except Exception:
                log.exception("housekeeping failed; will retry")

    async def _reconcile(self) -> None:
        async with self._reconciling:
            await self._reconcile_executors()
            await self.heavy.reconcile(PING_TIMEOUT_S)

    async def _ping(self, handle: Any, timeout_s: float = PING_TIMEOUT_S) -> tuple[str, int, str, float] | None:
        try:
            return tuple(await asyncio.wait_for(handle.ping.remote(), timeout_s))  # type: ignore[return-value]
        except Exception:
            return None

    async def _reconcile_executors(self) -> None:
        """Runs on an executor that died or restarted are lost: run them again. Executors of
        a node that left the cluster are retired; a node that joined gets its own."""
        nodes = {n["NodeID"]: n for n in await asyncio.to_thread(ray.nodes) if n.get("Alive")}
        if nodes:
            demand = heavy_demand(self.config.heavy_num_cpus, self.config.heavy_resources)
            self.heavy.capacity = placeable([n.get("Resources", {}) for n in nodes.values()], demand)
        live = [i for i in range(len(self._executors)) if i not in self._retired]
        # A blocked loop cannot answer (its watch thread said so): a short ping still sees a
        # restart or death, without holding up the whole round for the full timeout.
        answers = await asyncio.gather(
            *(self._ping(self._executors[i], 0.5 if i in self._blocked.light else PING_TIMEOUT_S) for i in live)
        )
        for i, answer in zip(live, answers, strict=True):
            if answer is not None:
                incarnation, _running, self._exec_nodes[i], self._lag_ms[i] = answer
                if incarnation != self._incarnations[i]:
                    self._lose_runs(i, "restarted")  # a new process: what it had is gone
                    self._incarnations[i] = incarnation
                self._reachable[i] = True
                if i in self._blocked.light and self._lag_ms[i] < self.config.loop_block_ms:
                    # A ping runs on the executor's loop: an answer proves it runs again, even
                    # if its "unblocked" notice was lost (a one-way message from its thread).
                    self._blocked.light.pop(i, None)
                    log.warning("executor %d answers again: no longer treated as blocked", i)
                    self._pump()
                continue
            # No answer is not proof of loss (a busy, blocked or restarting executor answers
            # later, and its runs' results still arrive): stop sending to it, keep its runs, and
            # re-run them only on proof (a new incarnation, or its node gone).
            self._reachable[i] = False
            if nodes and self._exec_nodes[i] not in nodes:
                # Pinned hard to a node that is gone: it would stay pending forever.
                log.warning("executor %d: its node left the cluster; retired", i)
                self._blocked.light.pop(i, None)
                self._lose_runs(i, "lost with its node")
                self._retired.add(i)
                try:
                    ray.kill(self._executors[i], no_restart=True)
                except Exception:
                    pass
        if not nodes:
            return
        serving = [i for i in range(len(self._executors)) if i not in self._retired]
        covered = {self._exec_nodes[i] for i in serving}
        if self.config.executors:
            # A fixed number: replace the retired ones on the alive nodes, fewest first.
            for _ in range(self.config.executors - len(serving)):
                load = {n: sum(1 for i in serving if self._exec_nodes[i] == n) for n in nodes}
                serving.append(self._add_executor(min(load, key=load.__getitem__)))
        else:
            for node, info in nodes.items():
                if node not in covered:
                    log.info("node %s joined: starting its executors", node)
                    for _ in range(_executors_for(info)):
                        self._add_executor(node)

    def _lose_runs(self, i: int, why: str, keys: list[tuple[str, int]] | None = None) -> None:
        """Re-queue executor ``i``'s runs (only ``keys`` of them, if given) still unreported."""
        inflight = self._inflight[i]
        lost = list(inflight) if keys is None else [k for k in keys if k in inflight]
        for key in lost:
            del inflight[key]
            self._where.pop(key, None)
            self.core.run_lost(*key)
        if lost:
            log.warning("executor %d %s: re-running %d runs", i, why, len(lost))
            self._kick()

    def _kick(self) -> None:
        self._wake.set()

    # -------------------------------------------------------------- effects
    def _pump(self) -> None:
        self.core.tick(self._lead_ms)
        self._dispatch()
        self._flush()

    def _dispatch(self) -> None:
        limit = self.config.executor_window
        while self.core.ready_count():
            # Only executors that answered their last ping: one whose node died is pending
            # forever, and runs sent there would never come back (reconcile re-queued its old
            # ones and marks it usable again when it answers).
            free = [
                (limit - len(q), i)
                for i, q in enumerate(self._inflight)
                if len(q) < limit and self._reachable[i] and i not in self._blocked.light
            ]
            room = sum(n for n, _ in free)
            idle_heavy = self.heavy.idle()
            if self.core.heavy_ready_count() > len(idle_heavy):
                self.heavy.grow()
            batch = self.core.take_ready(min(room, self.config.max_batch * len(free)), len(idle_heavy))
            if not batch:
                return
            heavy = [d for d in batch if d.heavy]
            if heavy:
                batch = [d for d in batch if not d.heavy]
                for d, i in zip(heavy, idle_heavy, strict=False):
                    self.heavy.send(i, d)
                if not batch:
                    continue
            if any(d.nodes is not None for d in batch):
                batch, placed_all = self._place(batch, free)
                if not placed_all:
                    self._dispatch_rest(batch, free)
                    return
            self._dispatch_rest(batch, free)

    def _place(self, batch: list[Dispatch], free: list[tuple[int, int]]) -> tuple[list[Dispatch], bool]:
        """Send runs that must land on given nodes to an executor there; returns the rest.
        A run with no room on its nodes goes back to the queue (not counted as an attempt)."""
        room = dict((i, n) for n, i in free)
        rest: list[Dispatch] = []
        placed: dict[int, list[Dispatch]] = {}
        all_placed = True
        for d in batch:
            if d.nodes is None:
                rest.append(d)
                continue
            options = [i for i, n in room.items() if n > 0 and self._exec_nodes[i] in d.nodes]
            if not options:
                self.core.unplaced(d.key, d.run_id)
                all_placed = False
                continue
            i = max(options, key=room.__getitem__)
            room[i] -= 1
            placed.setdefault(i, []).append(d)
        for i, part in placed.items():
            self._send(i, part)
        free[:] = [(n, i) for i, n in room.items() if n > 0]
        return rest, all_placed

    def _dispatch_rest(self, batch: list[Dispatch], free: list[tuple[int, int]]) -> None:
        if not batch:
            return
        # Spread evenly over the executors with room (so over nodes too): water-filling from
        # the least room up places every run, since take_ready took no more than the total room.
        free.sort()
        pos = 0
        for k, (n, i) in enumerate(free):
            share = -(-(len(batch) - pos) // (len(free) - k))
            part = batch[pos : pos + min(n, share)]
            pos += len(part)
            if part:
                self._send(i, part)

    def _wire(self, d: Dispatch) -> tuple[Any, ...]:
        return (d.key, d.run_id, d.worker, self._blobs.get(d.worker, (0, b""))[0], d.input, d.upstream,
                d.previous_attempts, d.timeout_ms, d.start_at_ms)

    def _send(self, i: int, part: list[Dispatch]) -> None:
        runs = []
        for d in part:
            key = (d.key, d.run_id)
            self._inflight[i][key] = None
            self._where[key] = i
            runs.append(self._wire(d))
        self._batch_seq[i] += 1
        ref = self._executors[i].submit.remote(runs, (self._epoch, self._batch_seq[i]))
        if self.core.decisions.maxlen:
            now, node, log_ = self.clock.now_ms(), self._exec_nodes[i], self.core.decisions
            for d in part:
                log_.append((now, d.key, ("handed", d.run_id, f"executor {i}", node)))
        asyncio.ensure_future(self._confirm(i, ref, [(r[0], r[1]) for r in runs]))

    async def _confirm(self, i: int, ref: Any, keys: list[tuple[str, int]]) -> None:
        try:
            incarnation = await ref
        except Exception as exc:
            # The batch may or may not have arrived: run it again elsewhere (a copy that did
            # arrive reports under its old run id, which is ignored). At-least-once.
            log.warning("executor %d: submit failed (%s)", i, type(exc).__name__)
            self._reachable[i] = False
            self._lose_runs(i, "did not take its batch", keys)
            self._flush()
            await self._reconcile()
            return
        if incarnation != self._incarnations[i]:
            await self._reconcile()

    def _flush(self) -> None:
        # Work handled outside the loop (a report, a push) may have set an earlier timer
        # (a retry's backoff): wake the loop so it sleeps towards that instead.
        due = self.core.next_due_ms(self._lead_ms)
        if due is not None and (self._wake_at is None or due < self._wake_at):
            self._wake_at = due
            self._wake.set()
        fx = self.core.drain()
        if not fx:
            return
        self.store.write(fx.persist.values(), fx.delete, fx.chains.values(), fx.delete_chains)
        if fx.cancel_runs:
            by_executor: dict[int, list[tuple[str, int]]] = {}
            for key in fx.cancel_runs:
                i = self._where.pop(key, None)
                if i is not None:
                    self._inflight[i].pop(key, None)
                    by_executor.setdefault(i, []).append(key)
                self.heavy.cancel(key)
            for i, keys in by_executor.items():
                self._executors[i].cancel.remote(keys)
        local = self._local_chains
        if fx.chain_msgs and local is None:
            self._to_coordinators(fx.chain_msgs)  # first: a chain's next step waits for the answer
        if fx.events:
            self._events.add(encode_event(e) for e in fx.events)
        for name in fx.settled:
            self._wake_waiters(name)
        if not self._where and not self.heavy.where and not self.core.ready_count():
            self._idle.set()
        if fx.chain_msgs and local is not None:
            # In-process coordination: promote now (after this batch's events, which happened
            # first), and send what became ready at once.
            self._chain_actions(local.apply(fx.chain_msgs))

    def _to_coordinators(self, msgs: list[Message]) -> None:
        pool = len(self._coordinators)
        if not pool:
            return  # not started yet: the coordinators resync from the rows at start
        for msg in msgs:
            self._chain_outboxes[coordinator_index(msg[1], pool)].add((msg,))

    def _chain_actions(self, actions: list[Message]) -> None:
        """What chain messages imply: a coordinator's reply, or the in-process rules' answer.
        (A coordinator down for good resyncs from this scheduler when it restarts.)"""
        if actions:
            self.core.chain_actions(actions)
            self._pump()

    def _wake_waiters(self, name: str) -> None:
        waiters = self._waiters.get(name)
        if not waiters:
            return
        is_chain = name in self.core.chains
        chain_done = is_chain and self.core.is_settled(name)
        rec = None if is_chain else self.core.latest(name)
        keep = []
        for fut, runs_before in waiters:
            if fut.done():
                continue
            if chain_done or (not is_chain and (rec is None or rec.state.is_finished)) or (
                rec is not None and self.core.recurs(rec) and rec.run_count > runs_before
            ):
                fut.set_result(None)
            else:
                keep.append((fut, runs_before))
        if keep:
            self._waiters[name] = keep
        else:
            self._waiters.pop(name, None)

    # ------------------------------------------------------------- messages
    async def register_worker(self, name: str, blob: bytes) -> int:
        await self._ready
        current = self._blobs.get(name)
        if current is not None and current[1] == blob:
            version = current[0]
        else:
            # Versions only grow, across restarts too: an executor caches classes by
            # (name, version), so a number must never name two different classes.
            last = self.store.get_meta("worker_version")
            version = max([last if isinstance(last, int) else 0, *(v for v, _b in self._blobs.values())]) + 1
            self.store.put_meta("worker_version", version)
            self._blobs[name] = (version, blob)
        registry = lookup(REGISTRY, self.namespace)
        await call_with_retry(lambda: registry.put.remote(name, version, blob))
        if name not in self.known:
            self.known.add(name)
            self.store.put_meta("known_workers", sorted(self.known))
        if self.core.unpark(name):
            self._kick()
        return version

    async def chain_actions(self, actions: list[Message]) -> None:
        """From a chain coordinator: promote a step (with its merged data) or cascade."""
        await self._ready
        self.core.chain_actions(actions)
        self._pump()

    async def chain_snapshot(self, index: int, pool: int) -> dict[str, Any]:
        await self._ready
        return self.core.chain_snapshot(index, pool)

    def worker_blob(self, name: str) -> tuple[int, bytes] | None:
        """The registry's fallback after it restarted (it asks here for what it lost)."""
        return self._blobs.get(name)

    def worker_blobs(self) -> dict[str, tuple[int, bytes]]:
        return dict(self._blobs)

    async def enqueue_many(self, items: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
        await self._ready
        out = []
        for item in items:
            outcome = self._submit_one(item)
            if outcome.result is not ScheduleResult.SUCCESS:
                self.rejections.append((str(item.get("id")), outcome.result.value, outcome.reason or ""))
                log.warning("enqueue %r: %s: %s", item.get("id"), outcome.result.value, outcome.reason)
            out.append((outcome.result.value, outcome.reason))
        try:
            self._flush()
        except Exception as exc:  # nothing is acknowledged that is not stored
            log.exception("store write failed")
            return [(ScheduleResult.FAILED_UNKNOWN.value, f"store write failed: {exc}") for _ in items]
        self._kick()
        return out

    def _submit_one(self, item: dict[str, Any]) -> Outcome:
        try:
            trigger = _trigger(item["trigger"])
            raw = item.get("constraints")
            constraints = Constraints.model_validate(raw) if raw else DEFAULT_CONSTRAINTS
            return self.core.submit(item["id"], trigger, item["worker"], item.get("input"), constraints)
        except (InvalidParameters, ValueError, KeyError, TypeError) as exc:
            return Outcome(ScheduleResult.REJECTED_INVALID_PARAMS, f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            log.exception("enqueue failed")
            return Outcome(ScheduleResult.FAILED_UNKNOWN, f"{type(exc).__name__}: {exc}")

    async def enqueue_chain(self, payload: dict[str, Any]) -> tuple[str, str | None]:
        await self._ready
        chain_id = payload.get("id")
        try:
            if payload.get("error"):
                raise InvalidParameters(payload["error"])
            steps = [
                [
                    {
                        **task,
                        "constraints": Constraints.model_validate(task["constraints"])
                        if task.get("constraints")
                        else DEFAULT_CONSTRAINTS,
                    }
                    for task in step
                ]
                for step in payload["steps"]
            ]
            outcome = self.core.submit_chain(chain_id, ExistingPolicy(payload.get("policy", "REPLACE")), steps)
        except (InvalidParameters, ValueError, KeyError, TypeError) as exc:
            outcome = Outcome(ScheduleResult.REJECTED_INVALID_PARAMS, f"{type(exc).__name__}: {exc}")
        if outcome.result is not ScheduleResult.SUCCESS:
            self.rejections.append((str(chain_id), outcome.result.value, outcome.reason or ""))
            log.warning("chain %r: %s: %s", chain_id, outcome.result.value, outcome.reason)
        try:
            self._flush()
        except Exception as exc:
            log.exception("store write failed")
            return ScheduleResult.FAILED_UNKNOWN.value, f"store write failed: {exc}"
        self._kick()
        return outcome.result.value, outcome.reason

    async def get_chain_info(self, chain_id: str) -> dict[str, Any] | None:
        await self._ready
        info = self.core.chain_info(chain_id)
        return info.model_dump(mode="json") if info is not None else None

    async def wait_chain(self, chain_id: str, timeout_s: float | None) -> dict[str, Any] | None:
        await self._ready
        if chain_id not in self.core.chains:
            return None
        if not self.core.is_settled(chain_id) and timeout_s != 0:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(chain_id, []).append((fut, 0))
            try:
                await asyncio.wait_for(fut, timeout_s)
            except TimeoutError:
                pass
        info = self.core.chain_info(chain_id)
        return info.model_dump(mode="json") if info is not None else None

    async def quarantined(self) -> list[dict[str, Any]]:
        """Stored rows that did not decode at restore (never decoded again; see kmpray/store.py)."""
        await self._ready
        return [q.as_dict() for q in self.store.quarantined()]

    async def drop_quarantined(self, key: str) -> int:
        await self._ready
        return self.store.drop_quarantined(key)

    async def loop_blocked(
        self, kind: str, index: int, incarnation: str, lag_s: float, worker: str | None,
        run: tuple[str, int] | None, begun: list[tuple[str, int]],
    ) -> tuple[str, int] | None:
        """From an executor's watch thread: a worker blocks its event loop. It gets nothing
        more until it runs again; its runs that had not begun are withdrawn and re-queued
        (not counted as attempts). Returns the fence: every batch up to it is withdrawn."""
        await self._ready
        task = run[0] if run else None
        self._blocked.block(kind, index, worker, task, lag_s)
        if kind != "light" or index >= len(self._executors):
            log.warning("heavy worker %d: %s (task %s) blocks its event loop", index, worker, task)
            return None
        held = {(k, r) for k, r in begun}
        for key in held:  # their own "began" notices wait behind the blocked loop
            self.core.started(*key)
        withdrawn = [key for key in self._inflight[index] if key not in held]
        for key in withdrawn:
            del self._inflight[index][key]
            self._where.pop(key, None)
            self.core.run_lost(*key)
        log.warning("executor %d: %s (task %s) blocks its event loop (%.2f s so far); %d queued runs go to "
                    "other executors", index, worker, task, lag_s, len(withdrawn))
        if reason := self._blocked.reason(self._serving(), self.core.ready_count()):
            log.warning("%s", reason)
        self._pump()
        return self._epoch, self._batch_seq[index]

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
        if kind == "light" and index < len(self._reachable):
            self._reachable[index] = True  # it just spoke: a ping that timed out meanwhile is stale
        self._pump()

    def last_rejections(self, limit: int = 100) -> list[tuple[str, str, str]]:
        return list(self.rejections)[-limit:]

    async def report(
        self, done: list[tuple[str, int, Any]], progress: list[Any], started: Iterable[tuple[str, int]] = ()
    ) -> None:
        await self._ready
        for key, run_id in started:
            self.core.started(key, run_id)
        for key, run_id, pct, message in progress:
            self.core.progress(key, run_id, pct, message)
        for key, run_id, raw in done:
            i = self._where.pop((key, run_id), None)
            if i is not None:
                self._inflight[i].pop((key, run_id), None)
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

    async def get_info(self, name: str) -> dict[str, Any] | None:
        await self._ready
        rec = self.core.latest(name)
        return self._info(rec) if rec is not None else None

    def _info(self, rec: Any, places: dict[str, int] | None = None) -> dict[str, Any]:
        """A task as users see it, with why it waits (what the pools add to the core's reason)."""
        info = self.core.info(rec, places)
        reason = info.waiting_for
        if reason is not None and reason.kind == "capacity" and self.core.is_queued(rec.key):
            why = (self.heavy.reason() if rec.constraints.is_heavy_task
                   else self._blocked.reason(self._serving(), self.core.ready_count()))
            if why is not None:
                info = info.model_copy(update={"waiting_for": reason.model_copy(
                    update={"message": why, "details": {**reason.details, "why": why}})})
        return info.model_dump(mode="json")

    async def explain(self, name: str) -> str | None:
        """``kmpray why``: state, why it waits, recent decisions."""
        await self._ready
        rec = self.core.latest(name)
        if rec is None:
            return None
        text = self.core.explain(name) or ""
        core_reason, shown = self.core.info(rec).waiting_for, self._info(rec).get("waiting_for")
        if core_reason is not None and shown is not None and shown["message"] != core_reason.message:
            text = text.replace(core_reason.message, shown["message"], 1)
        return text

    async def list_tasks(self, state: str | None = None) -> list[dict[str, Any]]:
        await self._ready
        wanted = TaskState(state) if state else None
        places = self.core.places_in_line()  # once, not a queue scan per task
        return [self._info(rec, places) for rec in self.core.tasks.values()
                if wanted is None or rec.shown_state is wanted]

    async def wait(self, name: str, timeout_s: float | None, runs_before: int | None = None) -> dict[str, Any] | None:
        """Until the work under ``name`` is finished (a recurring task: a run after ``runs_before`` ends)."""
        await self._ready
        rec = self.core.latest(name)
        if rec is None:
            return None
        before = rec.run_count if runs_before is None else runs_before
        if rec.state.is_finished or (self.core.recurs(rec) and rec.run_count > before) or timeout_s == 0:
            return self._info(rec)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, []).append((fut, before))
        try:
            await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            pass
        rec = self.core.latest(name)
        return self._info(rec) if rec is not None else None

    async def advance_time(self, ms: int) -> int:
        """Move virtual time forward, firing and settling every due run in order."""
        await self._ready
        if not isinstance(self.clock, ManualClock):
            raise VirtualTimeOnly("advance_time needs connect(virtual_time=True)")
        if ms < 0:
            raise ValueError(f"advance_time: ms must be >= 0, got {ms}")
        target = self.clock.now_ms() + ms
        deadline = time.monotonic() + self.config.settle_timeout_s
        while True:
            self._pump()
            await self._settle(deadline)
            due = self.core.next_due_ms()
            if due is None or due > target:
                break
            self.clock.set(due)
        self.clock.set(target)
        self._pump()
        await self._settle(deadline)
        self.core.warn_long_waits()
        self.store.put_meta("virtual_now", self.clock.now_ms())
        return self.clock.now_ms()

    async def _settle(self, deadline: float) -> None:
        while self._where or self.heavy.where or self.core.ready_count():
            self._idle.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("advance_time: %d runs still in flight after the settle timeout", len(self._where))
                return
            try:
                await asyncio.wait_for(self._idle.wait(), min(remaining, 0.5))
            except TimeoutError:
                self._pump()

    async def fire(self, kind: str, uri: str | None = None) -> int:
        await self._ready
        n = self.core.fire(kind, uri)
        self._flush()
        self._kick()
        return n

    async def now_ms(self) -> int:
        return self.clock.now_ms()
