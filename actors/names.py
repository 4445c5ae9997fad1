"""Actor names within an engine's namespace, and finding an actor by name."""

from __future__ import annotations

import time
from typing import Any

import ray

from kmpray.timing import LOOKUP_POLL_S

SCHEDULER = "kmpray.scheduler"
BROKER = "kmpray.broker"
REGISTRY = "kmpray.registry"
EXECUTOR = "kmpray.executor.{}"
PROBATION = "kmpray.executor.probation.{}"  # runs suspects alone (executor_pool.py)
HEAVY = "kmpray.heavy.{}"
ORACLE = "kmpray.oracle"
CHAIN = "kmpray.chain.{}"


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
