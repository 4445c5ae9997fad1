"""Start or find one namespace's engine actors (named, detached), and stop them."""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kmpray.config import EngineConfig
from kmpray.timing import CALL_TIMEOUT_S, STOP_WAIT_S

from .constraint_oracle import ConstraintOracle
from .event_broker import EventBroker
from .names import BROKER, ORACLE, SCHEDULER, base_namespace, shard_namespace
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
        # Said only to a caller who asked for another count (not to every `kmpray status`).
        asked = "scheduler_shards" in config.model_fields_set
        log.log(logging.WARNING if asked else logging.DEBUG,
                "engine %r runs with scheduler_shards=%d; attaching with that (asked: %d)",
                namespace, running, config.scheduler_shards)
        config = config.model_copy(update={"scheduler_shards": running})
    head = head_node_id()
    node = head or ray.get_runtime_context().get_node_id()
    here = NodeAffinitySchedulingStrategy(node_id=node, soft=head is None)
    common: dict[str, Any] = {"lifetime": "detached", "get_if_exists": True, "scheduling_strategy": here}
    # Ray starts at most one worker process per CPU at a time (worker_maximum_startup_concurrency),
    # so the order of creation is the order of start: each shard's scheduler first, then what
    # its start waits for; it creates its executors, then its chain coordinators, itself.
    clock_start_ms = int(time.time() * 1000)  # a new virtual-time engine's shards start their clocks here
    namespaces = [shard_namespace(namespace, k) for k in range(config.scheduler_shards)]  # names.py
    schedulers = [
        SchedulerActor.options(name=SCHEDULER, namespace=ns, **common).remote(
            ns, state_dir, virtual_time, platform, config.model_dump(), clock_start_ms)
        for ns in namespaces
    ]
    oracle = ConstraintOracle.options(name=ORACLE, namespace=namespace, **common).remote(
        namespace, state_dir, config.model_dump())
    broker = EventBroker.options(name=BROKER, namespace=namespace, **common).remote(
        state_dir, config.event_retention, config.durability, namespace, config.progress_retention,
        config.store_lock_wait_s,
    )
    return _handles(schedulers, oracle, broker)


def _handles(schedulers: list[Any], oracle: Any, broker: Any) -> dict[str, Any]:
    return {"scheduler": schedulers[0], "schedulers": schedulers, "broker": broker,
            "oracle": oracle}


def _running_shards(namespace: str) -> int | None:
    """The shard count of the engine running in ``namespace``, if one is."""
    try:
        scheduler = ray.get_actor(SCHEDULER, namespace=namespace)
    except ValueError:
        return None
    try:
        # After its restore. Not ray.get: in an async actor (worker code's connect(), made
        # ahead in a thread: kmpray/client/here.py) that makes Ray warn of a blocked loop.
        return int(scheduler.shard_count.remote().future().result(timeout=CALL_TIMEOUT_S))
    except Exception:  # dying or restarting: start as asked; a store that disagrees refuses
        return None


def engine_handles(namespace: str) -> dict[str, Any] | None:
    """The running engine's singletons, as ensure_engine returns them, found by name; None
    if one is missing (stopped). Never creates one."""
    shards = _running_shards(namespace)
    if shards is None:
        return None
    try:
        namespaces = [shard_namespace(namespace, k) for k in range(shards)]
        schedulers = [ray.get_actor(SCHEDULER, namespace=ns) for ns in namespaces]
        oracle = ray.get_actor(ORACLE, namespace=namespace)
        broker = ray.get_actor(BROKER, namespace=namespace)
    except ValueError:
        return None
    return _handles(schedulers, oracle, broker)


def running_engines() -> list[str]:
    """The namespaces whose engine runs on this cluster (the ones users connect to)."""
    return sorted(e["namespace"] for e in ray.util.list_named_actors(all_namespaces=True)
                  if e["name"] == SCHEDULER and base_namespace(e["namespace"]) == e["namespace"])


def not_running(namespace: str) -> str | None:
    """Why ``namespace``'s engine cannot be attached to (none runs; naming those that do),
    or None when it runs: what the CLI and the load generator say instead of starting one."""
    running = running_engines()
    if namespace in running:
        return None
    others = f" (running: {', '.join(running)})" if running else ""
    return f"no engine {namespace!r} is running{others}"


def head_node_id() -> str | None:
    """The alive node carrying Ray's head marker resource, if Ray reports one."""
    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return str(node["NodeID"])
    return None


def stop_engine(namespace: str) -> list[str]:
    """Kill every engine actor of ``namespace`` (no restart). The store keeps the state.

    Executors, heavy workers and schedulers are first told to stop (``ExecutorBase.stop``,
    ``SchedulerActor.stop``): ray.kill returns at once and a process ends a moment later,
    and meanwhile an executor could begin a successor handed to it (one hop per step), and
    a scheduler answer a call, after shutdown() returned."""
    entries = [(e["namespace"], e["name"]) for e in ray.util.list_named_actors(all_namespaces=True)
               if base_namespace(e["namespace"]) == namespace and e["name"].startswith("kmpray.")]
    handles = {}
    for ns, name in entries:  # the engine's actors and every shard's
        try:
            handles[(ns, name)] = ray.get_actor(name, namespace=ns)
        except ValueError:
            continue  # gone meanwhile
    workers = [h.stop.remote() for (_ns, n), h in handles.items()
               if n.startswith(("kmpray.executor.", "kmpray.heavy.")) or n == SCHEDULER]
    if workers:
        try:
            ray.wait(workers, num_returns=len(workers), timeout=STOP_WAIT_S)  # a blocked loop may not answer
        except Exception:
            pass  # dead or dying already: killed below either way
    for handle in handles.values():
        ray.kill(handle, no_restart=True)
    return [name if ns == namespace else f"{ns}/{name}" for ns, name in handles]
