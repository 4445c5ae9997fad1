"""Actor names within an engine's namespace, and finding an actor by name."""

from __future__ import annotations

import time
from typing import Any

import ray

from kmpray.shards import SHARD_SEP
from kmpray.timing import LOOKUP_POLL_S

SCHEDULER = "kmpray.scheduler"
BROKER = "kmpray.broker"
EXECUTOR = "kmpray.executor.{}"
PROBATION = "kmpray.executor.probation.{}"  # runs suspects alone (executor_pool.py)
HEAVY = "kmpray.heavy.{}"
ORACLE = "kmpray.oracle"
CHAIN = "kmpray.chain.{}"


# Scheduler shard k > 0 lives in its own Ray namespace, "<namespace>~shard<k>": its
# scheduler, executors, heavy workers and chain coordinators keep their usual names
# there, so every lookup among them finds its own shard's. The broker and the oracle
# (which also holds every shard's worker classes, actors/registry.py) are the engine's,
# shared, in the base namespace (shard 0's).


def shard_namespace(namespace: str, shard: int) -> str:
    return namespace if shard == 0 else f"{namespace}{SHARD_SEP}{shard}"


def base_namespace(namespace: str) -> str:
    """The engine's namespace (the one users connect to) of any of its shards' namespaces."""
    return namespace.split(SHARD_SEP, 1)[0]


def shard_index(namespace: str) -> int:
    _base, sep, k = namespace.partition(SHARD_SEP)
    return int(k) if sep else 0


def engine_identity(namespace: str) -> str:
    """The engine a store file's lock names (kmpray/store_files.py): ``namespace`` in this
    Ray instance. A restarted actor of it is the same engine (it waits for its killed
    predecessor's lock); another notebook's embedded Ray is not (refused at once)."""
    return f"{namespace} in Ray session {ray.get_runtime_context().get_session_name()}"


def lookup(name: str, namespace: str, timeout_s: float = 30.0) -> Any:
    """Resolve a named actor, waiting while it is being (re)created."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get_actor(name, namespace=namespace)
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(LOOKUP_POLL_S)
