"""Start or find one namespace's engine actors (named, detached), and stop them."""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kmpray.config import EngineConfig
from kmpray.timing import STOP_WAIT_S

from .chain_coordinator import ChainCoordinator
from .constraint_oracle import ConstraintOracle
from .event_broker import EventBroker
from .names import BROKER, CHAIN, ORACLE, REGISTRY, SCHEDULER
from .registry import WorkerRegistry
from .scheduler import SchedulerActor


def ensure_engine(
    namespace: str, state_dir: str, virtual_time: bool, platform: str, config: EngineConfig
) -> dict[str, Any]:
    """Handles to the engine's singletons, creating any that are missing.

    Singletons are pinned hard to the head node: the SQLite store lives on its disk, and
    a worker node leaving the cluster must not take the scheduler with it (the head
    leaving ends the cluster anyway). ``get_if_exists`` makes two concurrent connects
    converge on one engine.
    """
    head = head_node_id()
    here = NodeAffinitySchedulingStrategy(node_id=head or ray.get_runtime_context().get_node_id(), soft=head is None)
    common = {"namespace": namespace, "lifetime": "detached", "get_if_exists": True, "scheduling_strategy": here}
    registry = WorkerRegistry.options(name=REGISTRY, **common).remote(namespace)
    broker = EventBroker.options(name=BROKER, **common).remote(
        state_dir, config.event_retention, config.durability, namespace
    )
    oracle = ConstraintOracle.options(name=ORACLE, **common).remote(namespace, state_dir, config.model_dump())
    pool = config.chain_coordinators
    coordinators = [
        ChainCoordinator.options(name=CHAIN.format(i), **common).remote(namespace, i, pool) for i in range(pool)
    ]
    scheduler = SchedulerActor.options(name=SCHEDULER, **common).remote(
        namespace, state_dir, virtual_time, platform, config.model_dump()
    )
    return {
        "registry": registry, "broker": broker, "scheduler": scheduler, "oracle": oracle, "coordinators": coordinators
    }


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
    entries = [e["name"] for e in ray.util.list_named_actors(all_namespaces=True)
               if e["namespace"] == namespace and e["name"].startswith("kmpray.")]
    handles = {}
    for name in entries:
        try:
            handles[name] = ray.get_actor(name, namespace=namespace)
        except ValueError:
            continue  # gone meanwhile
    workers = [h.stop.remote() for n, h in handles.items() if n.startswith(("kmpray.executor.", "kmpray.heavy."))]
    if workers:
        try:
            ray.wait(workers, num_returns=len(workers), timeout=STOP_WAIT_S)  # a blocked loop may not answer
        except Exception:
            pass  # dead or dying already: killed below either way
    for handle in handles.values():
        ray.kill(handle, no_restart=True)
    return list(handles)
