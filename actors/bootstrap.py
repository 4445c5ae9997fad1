"""Start or find one namespace's engine actors (named, detached), and stop them."""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kmpray.config import EngineConfig
from kmpray.timing import CALL_TIMEOUT_S, STOP_WAIT_S

from .chain_coordinator import ChainCoordinator
from .constraint_oracle import ConstraintOracle
from .event_broker import EventBroker
from .names import BROKER, CHAIN, ORACLE, REGISTRY, SCHEDULER, base_namespace, shard_namespace
from .registry import WorkerRegistry
from .scheduler import SchedulerActor

log = logging.getLogger("kmpray")


def ensure_engine(
    namespace: str, state_dir: str, virtual_time: bool, platform: str, config: EngineConfig
) -> dict[str, Any]:
    """Handles to the engine's singletons, creating any that are missing.

    Singletons are pinned hard to the head node: the SQLite store lives on its disk, and
    a worker node leaving the cluster must not take the scheduler with it (the head
    leaving ends the cluster anyway). ``get_if_exists`` makes two concurrent connects
    converge on one engine.
    """
    running = _running_shards(namespace)
    if running is not None and running != config.scheduler_shards:
        # Attach to the engine as it runs (as for virtual_time): its shard count is its state dir's.
        log.warning("engine %r runs with scheduler_shards=%d; attaching with that (asked: %d)",
                    namespace, running, config.scheduler_shards)
        config = config.model_copy(update={"scheduler_shards": running})
    head = head_node_id()
    here = NodeAffinitySchedulingStrategy(node_id=head or ray.get_runtime_context().get_node_id(), soft=head is None)
    common = {"namespace": namespace, "lifetime": "detached", "get_if_exists": True, "scheduling_strategy": here}
    broker = EventBroker.options(name=BROKER, **common).remote(
        state_dir, config.event_retention, config.durability, namespace
    )
    oracle = ConstraintOracle.options(name=ORACLE, **common).remote(namespace, state_dir, config.model_dump())
    shards = []
    clock_start_ms = int(time.time() * 1000)  # a new virtual-time engine's shards start their clocks here
    for k in range(config.scheduler_shards):  # each shard's own actors, in its own namespace (names.py)
        ns = shard_namespace(namespace, k)
        mine = {**common, "namespace": ns}
        registry = WorkerRegistry.options(name=REGISTRY, **mine).remote(ns)
        pool = config.chain_coordinators
        coordinators = [
            ChainCoordinator.options(name=CHAIN.format(i), **mine).remote(ns, i, pool) for i in range(pool)
        ]
        scheduler = SchedulerActor.options(name=SCHEDULER, **mine).remote(
            ns, state_dir, virtual_time, platform, config.model_dump(), clock_start_ms
        )
        shards.append({"registry": registry, "scheduler": scheduler, "coordinators": coordinators})
    return {**shards[0], "broker": broker, "oracle": oracle, "schedulers": [s["scheduler"] for s in shards]}


def _running_shards(namespace: str) -> int | None:
    """The shard count of the engine running in ``namespace``, if one is."""
    try:
        scheduler = ray.get_actor(SCHEDULER, namespace=namespace)
    except ValueError:
        return None
    try:
        return int(ray.get(scheduler.shard_count.remote(), timeout=CALL_TIMEOUT_S))  # after its restore
    except Exception:  # dying or restarting: start as asked; a store that disagrees refuses
        return None


def head_node_id() -> str | None:
    """The alive node carrying Ray's head marker resource, if Ray reports one."""
    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return str(node["NodeID"])
    return None


def stop_engine(namespace: str) -> list[str]:
    """Kill every engine actor of ``namespace`` (no restart). The store keeps the state.

    Executors and heavy workers are first told to stop (``ExecutorBase.stop``): ray.kill
    returns at once and a process ends a moment later, and meanwhile it could begin a
    successor handed to it (one hop per step) after shutdown() returned."""
    entries = [(e["namespace"], e["name"]) for e in ray.util.list_named_actors(all_namespaces=True)
               if base_namespace(e["namespace"]) == namespace and e["name"].startswith("kmpray.")]
    handles = {}
    for ns, name in entries:  # the engine's actors and every shard's
        try:
            handles[(ns, name)] = ray.get_actor(name, namespace=ns)
        except ValueError:
            continue  # gone meanwhile
    workers = [h.stop.remote() for (_ns, n), h in handles.items()
               if n.startswith(("kmpray.executor.", "kmpray.heavy."))]
    if workers:
        try:
            ray.wait(workers, num_returns=len(workers), timeout=STOP_WAIT_S)  # a blocked loop may not answer
        except Exception:
            pass  # dead or dying already: killed below either way
    for handle in handles.values():
        ray.kill(handle, no_restart=True)
    return [name if ns == namespace else f"{ns}/{name}" for ns, name in handles]
