"""ConstraintOracle: device state per Ray node, from real probes plus overrides, pushed to the scheduler.

Every ``probe_interval_s`` it probes each alive node (its own in a thread, each other
one by a zero-CPU Ray task pinned there) and merges ``set_device_state`` overrides on
top; when a node's effective state changes it pushes the whole map to the scheduler,
which re-gates its tasks. Nothing polls per task. A node's network type comes from its
label ``kmpray.network_type`` (cluster.yaml), else UNMETERED.

Overrides are engine state, not this process's: each push carries them, every shard's
scheduler keeps a copy, and a restarted oracle takes them back before its first probe
round (until session 49 a restart put the probes back under the schedulers, opening the
gates a simulated state had closed). Only both dying together (a full restart) ends them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kmpray.config import EngineConfig
from kmpray.device import DeviceState, parse_overrides
from kmpray.probes import probe
from kmpray.timing import PROBE_TIMEOUT_S

from .names import SCHEDULER, lookup, shard_namespace
from .registry import ClassRegistry
from .retry import call_with_retry, said, taken_back
from .subscriber_copies import SubscriberCopies
from .untraced import untrace

log = logging.getLogger("kmpray.oracle")


@ray.remote(num_cpus=0)
def _probe_node(state_dir: str, threshold: int, storage: float, idle: float) -> dict[str, Any]:
    return probe(state_dir, threshold, storage, idle)


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1000)
class ConstraintOracle(ClassRegistry, SubscriberCopies):
    """Also the engine's registry of worker classes (actors/registry.py: one process fewer per
    shard) and the copy of the broker's actor subscriptions (actors/subscriber_copies.py)."""

    def __init__(self, namespace: str, state_dir: str, config: dict[str, Any]) -> None:
        untrace(self)  # its own calls without Ray's tracing shim (actors/untraced.py)
        self.namespace = namespace
        self.state_dir = state_dir
        self.config = EngineConfig.model_validate(config)
        self.probed: dict[str, dict[str, Any]] = {}
        self.overrides: dict[str, dict[str, Any]] = {}
        self.labels: dict[str, dict[str, Any]] = {}
        self.effective: dict[str, DeviceState] = {}
        self.rounds = 0  # probe rounds done (tests wait on it)
        self._pushed_overrides: dict[str, dict[str, Any]] | None = None  # what the schedulers hold
        self._lock = asyncio.Lock()
        self._start_registry(namespace, self.config.scheduler_shards)
        self._start_subscriber_copies(namespace, SCHEDULER)  # (shard 0's: this namespace)
        self._overrides_back = asyncio.ensure_future(self._take_overrides_back())
        self._loop = asyncio.ensure_future(self._probe_loop())

    def _schedulers(self) -> list[Any]:
        return [lookup(SCHEDULER, shard_namespace(self.namespace, k))  # every shard's
                for k in range(self.config.scheduler_shards)]

    async def _take_overrides_back(self) -> None:
        """After a restart, the overrides the schedulers were last sent (none at first start)."""
        for k in range(self.config.scheduler_shards):
            held = await taken_back(SCHEDULER, shard_namespace(self.namespace, k), "device_overrides")
            if held is not None:  # None: not created, or never sent any (it restarted too)
                self.overrides = {**held, **self.overrides}
                self._pushed_overrides = dict(held)
                return

    def _alive(self) -> list[dict[str, Any]]:
        return [n for n in ray.nodes() if n.get("Alive")]

    async def _probe_once(self) -> None:
        nodes = self._alive()
        args = (self.state_dir, self.config.battery_low_threshold, self.config.storage_low_free_fraction,
                self.config.idle_load_per_cpu)
        # This node (the head's, where the oracle is pinned) is probed here, in a thread: as a
        # Ray task its first probe needed a worker process of its own, started for it while
        # the engine started (1.3 of connect()'s 3.2 s on this machine), and kept one alive.
        here = ray.get_runtime_context().get_node_id()
        refs = {
            n["NodeID"]: _probe_node.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(*args)
            for n in nodes if n["NodeID"] != here
        }
        for n in nodes:
            self.labels[n["NodeID"]] = dict(n.get("Labels") or {})
        results: dict[str, dict[str, Any]] = {}
        for node in (n["NodeID"] for n in nodes):
            try:
                pending = refs[node] if node in refs else asyncio.to_thread(probe, *args)
                results[node] = await asyncio.wait_for(pending, PROBE_TIMEOUT_S)
            except Exception:
                log.warning("probe of node %s failed; keeping its last state", node[:8])
                if node in self.probed:
                    results[node] = self.probed[node]
        self.probed = results

    async def _probe_loop(self) -> None:
        await self._overrides_back
        while True:
            try:
                await self._probe_once()
                await self._publish()
                self.rounds += 1
            except Exception as exc:
                if (why := said(exc)) is not None:  # a scheduler saying why it does not serve
                    log.warning("probe round failed: %s", why)
                else:
                    log.exception("probe round failed")
            await asyncio.sleep(self.config.probe_interval_s)

    def _state(self, node: str) -> DeviceState:
        base = dict(self.probed.get(node, {}))
        network = self.labels.get(node, {}).get("kmpray.network_type")
        if network:
            base["network_type"] = network
        try:
            state = DeviceState.model_validate(base)
        except Exception:
            state = DeviceState()
        return parse_overrides(self.overrides.get(node, {}), state) if node in self.overrides else state

    async def _publish(self, force: bool = False) -> None:
        async with self._lock:
            states = {node: self._state(node) for node in self.probed}
            if states == self.effective and self.overrides == self._pushed_overrides and not force:
                return
            self.effective = states
            overrides = dict(self.overrides)
            payload = {node: s.model_dump(mode="json") for node, s in states.items()}
            await asyncio.gather(*(call_with_retry(lambda s=s: s.device_states.remote(payload, overrides),
                                                   timeout_s=60)
                                   for s in self._schedulers()))
            self._pushed_overrides = overrides

    async def ready(self) -> dict[str, dict[str, Any]]:
        await self._overrides_back
        if not self.probed:
            await self._probe_once()
            self.effective = {node: self._state(node) for node in self.probed}
        return {node: s.model_dump(mode="json") for node, s in self.effective.items()}

    async def set_device_state(self, node_id: str | None, state: dict[str, Any]) -> dict[str, Any]:
        """Override state on one node (or every node); validated before anything changes."""
        await self.ready()
        nodes = list(self.probed) if node_id is None else [node_id]
        if node_id is not None and node_id not in self.probed:
            raise ValueError(f"node_id: unknown node {node_id!r}; known: {sorted(self.probed)}")
        updated = {n: {**self.overrides.get(n, {}), **state} for n in nodes}
        for n, over in updated.items():
            parse_overrides(over, self._state_without_overrides(n))  # raises naming the field
        self.overrides.update(updated)
        await self._publish()
        return {n: self.effective[n].model_dump(mode="json") for n in nodes}

    def _state_without_overrides(self, node: str) -> DeviceState:
        saved = self.overrides.pop(node, None)
        try:
            return self._state(node)
        finally:
            if saved is not None:
                self.overrides[node] = saved

    async def clear_overrides(self) -> None:
        await self._overrides_back  # a restarted oracle's take-back must not bring them back after
        self.overrides.clear()
        await self._publish()

    async def states(self) -> dict[str, dict[str, Any]]:
        await self.ready()  # a restarted oracle: none yet until its first probe
        return {node: s.model_dump(mode="json") for node, s in self.effective.items()}

    async def ready_with_overrides(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """A starting scheduler's view: the states, and the overrides it keeps a copy of."""
        return await self.ready(), dict(self.overrides)
