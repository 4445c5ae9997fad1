"""Actor names within an engine's namespace, and finding an actor by name."""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

from kmpray.errors import EngineUnavailable
from kmpray.shards import SHARD_SEP
from kmpray.timing import LOOKUP_POLL_S

log = logging.getLogger("kmpray.names")

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
            return named(name, namespace)
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(LOOKUP_POLL_S)


#: A method only Ray's stand-in class has: the class Ray gives a process in place of an
#: actor class it failed to load (unpickle) there, whose methods take keyword arguments
#: only, so every call through its handles fails "too many positional arguments".
STAND_IN_METHOD = "_TemporaryActor__dummy_method"
STAND_IN_TRIES = 5


def named(name: str, namespace: str) -> Any:
    """``ray.get_actor`` (ValueError if there is none), never with Ray's stand-in for the
    actor's class. Ray caches the class it loads, stand-in or not, for the process's life:
    a heavy worker of a chaos run (session 60) got one for the scheduler's (the load failed
    once, why is not known) and could neither report a result nor ask anything again, until
    it was put down and its run ran twice. The stand-in is forgotten and the class loaded
    again, a few times; then ``EngineUnavailable`` says why."""
    handle = ray.get_actor(name, namespace=namespace)
    for _ in range(STAND_IN_TRIES):
        if STAND_IN_METHOD not in (getattr(handle, "_ray_method_signatures", None) or {}):
            return handle
        why = _forget_stand_in(handle)
        log.warning("%s: this process has Ray's stand-in for its actor class (its load failed: %s); "
                    "loading it again", name, why)
        time.sleep(LOOKUP_POLL_S)
        handle = ray.get_actor(name, namespace=namespace)
    raise EngineUnavailable(f"{name}: this process could not load its actor class from Ray in "
                            f"{STAND_IN_TRIES} tries (its load failed: {why})")


def _forget_stand_in(handle: Any) -> str:
    """Drop Ray's cached stand-in for ``handle``'s class (and the method table built from
    it: both are Ray's private caches), so the next ``get_actor`` loads the class again.
    Returns the last line of the error Ray kept in the stand-in."""
    from ray.actor import _ActorClassMethodMetadata

    try:
        descriptor = handle._ray_actor_creation_function_descriptor
        manager = ray._private.worker.global_worker.function_actor_manager
        stand_in = manager._loaded_actor_classes.pop(descriptor.function_id, None)
        _ActorClassMethodMetadata._cache.pop(descriptor, None)
    except Exception as exc:  # another Ray's insides: the tries run out, and say so
        return f"unknown; its stand-in could not be forgotten ({type(exc).__name__}: {exc})"
    for method in vars(stand_in).values() if stand_in is not None else ():
        for cell in getattr(method, "__closure__", None) or ():
            text = cell.cell_contents
            if isinstance(text, str) and "Traceback" in text:
                return text.strip().splitlines()[-1]
    return "unknown"
