"""The worker classes an executor or heavy worker runs: fetched from the registry (in the oracle) by name
at a run's first need, unpickled once per version, off the event loop. A mixin of the
executors (executor.py); the attributes below are the actor's.

Unpickling a class imports what its module imports (numpy, torch: seconds), and did so
on the loop: every run there waited, and the block was blamed on the run that asked
("blocking its event loop", ~0.2 s for the first run of a class on each executor here,
with advice to move its ``do_work`` to a thread). And each of the runs that came
together for a class not loaded yet fetched and unpickled it again. Now one load per
name at a time, in a thread, that the others await.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from concurrent.futures import Executor
from typing import Any

from ray import cloudpickle

from kmpray.worker import CommonWorker, NotConstructed, construct, in_a_thread, in_thread_call

from .names import ORACLE, base_namespace, lookup
from .retry import call_with_retry

log = logging.getLogger("kmpray.executor")

#: How long a class the registry and the scheduler both lack is asked for again before
#: the run is given back (ClassMissing). The scheduler hands out only runs of classes it
#: holds, so a miss means both restarted since (the scheduler takes its classes back from
#: the executors that ran them within seconds: class_recovery.py). Failing at once ended
#: such runs FAILED, "could not be constructed: not registered", a system fault charged to
#: the user (the no-wait mixed chaos runs, session 58: 2 tasks in one run); so did failing
#: after 30 s of asking (the storm, session 62: both restarted again and again for longer).
#: Given back, the run is re-queued, not counted as an attempt, and waits (parked) in the
#: scheduler until its class is had again; the slot (a heavy worker's only one) is free.
CLASS_WAIT_S = 5.0
CLASS_ASK_EVERY_S = 0.5


class ClassMissing(LookupError):
    """Neither the registry nor the scheduler has the class now (both restarted since the
    run was handed out): the executor gives the run back uncalled (``GivenBack``)."""


class WorkerClasses:
    namespace: str
    keep_instances: bool  # a heavy worker keeps one warm instance per class
    _classes: dict[str, tuple[int, type]]  # newest class loaded here per name, with its version
    _class_blobs: dict[str, tuple[int, bytes]]  # and the blob it came from (class_blobs)
    _instances: dict[str, tuple[int, CommonWorker]]  # heavy workers' warm instances
    _loading: dict[str, asyncio.Future[tuple[int, type]]]  # a load under way, per name
    _run_threads: Executor  # the threads runs go to

    async def _instance(self, name: str, version: int, threaded: bool) -> CommonWorker | type:
        """What a run of ``name`` calls: a heavy worker's warm instance, made at its first
        run (off the loop if its runs go to a thread: a constructor that loads a model must
        not stall the loop, nor the pings it answers); an executor's is the class, made
        with the run's call and in its thread (kmpray/worker.py's ``run_worker``). A class
        that cannot be had (not registered any more, or it does not unpickle here: a module
        only the driver has) or a constructor that raises: NotConstructed."""
        warm = self._instances.get(name) if self.keep_instances else None
        if warm is not None and warm[0] >= version:
            return warm[1]
        try:
            loaded, cls = await self._worker_class(name, version)
        except (asyncio.CancelledError, ClassMissing):
            raise
        except BaseException as exc:
            raise NotConstructed(exc) from exc
        if not self.keep_instances:
            return cls
        instance = (await in_thread_call(self._run_threads, construct, cls)
                    if in_a_thread(cls, threaded) else construct(cls))
        self._instances[name] = (loaded, instance)
        return instance

    async def _worker_class(self, name: str, version: int) -> tuple[int, type]:
        """The class registered as ``name``, at ``version`` or newer (the registry keeps the
        latest only), and its version. A newer one replaces the older here, and the older
        one's warm instance goes with it: a heavy worker re-registered from a notebook ten
        times must not hold ten models."""
        for _ in range(2):  # again if a load under way began before this version was registered
            cached = self._classes.get(name)
            if cached is not None and cached[0] >= version:
                return cached
            loading = self._loading.get(name)
            if loading is None:
                loading = self._loading[name] = asyncio.ensure_future(self._load_class(name))
                loading.add_done_callback(functools.partial(self._loaded, name))
            loaded = await asyncio.shield(loading)  # one run's cancel must not end the others' load
        return loaded

    def _loaded(self, name: str, done: asyncio.Future[tuple[int, type]]) -> None:
        if self._loading.get(name) is done:
            del self._loading[name]
        if not done.cancelled():
            done.exception()  # retrieved: the runs awaiting it have it; none may be left

    async def _load_class(self, name: str) -> tuple[int, type]:
        registry = lookup(ORACLE, base_namespace(self.namespace))  # holds the registry: actors/registry.py
        deadline = time.monotonic() + CLASS_WAIT_S
        while (entry := await self._ask(registry, name)) is None:
            if time.monotonic() >= deadline:
                raise ClassMissing(f"worker {name!r}: its class is in neither the registry nor the scheduler "
                                   f"(both restarted) after {CLASS_WAIT_S:g} s")
            await asyncio.sleep(CLASS_ASK_EVERY_S)
        cls = await asyncio.to_thread(cloudpickle.loads, entry[1])
        cached = self._classes.get(name)
        if cached is not None and cached[0] >= entry[0]:
            return cached
        loaded = self._classes[name] = (entry[0], cls)
        self._class_blobs[name] = (entry[0], entry[1])
        if self._instances.pop(name, None) is not None:
            gc.unfreeze()  # what only the old instance held (cycles too) is freed now
            gc.collect()
        gc.freeze()  # the class and what it imported live on (see the executor's __init__)
        return loaded

    async def _ask(self, registry: Any, name: str) -> tuple[int, bytes] | None:
        """The registry's (version, blob) of ``name``; None if it has none, or if asking
        failed (the registry, or the scheduler it asks in turn, restarting past the retries).
        An answer on its way is not cut short: a large class (a notebook class holding a
        model, by value) may take longer than ``CLASS_WAIT_S`` to come, and cut short it
        would be asked for, and given back, for ever."""
        try:
            ask = lambda: registry.get_class.remote(self.namespace, name)  # noqa: E731
            return await call_with_retry(ask, timeout_s=CLASS_WAIT_S)
        except Exception as exc:
            log.info("asking the registry for worker %r: %s: %s", name, type(exc).__name__, exc)
            return None

    def class_blobs(self, names: list[str]) -> dict[str, tuple[int, bytes]]:
        """Of ``names``, the (version, blob) of each class this process loaded: the third
        copy, for a scheduler whose restart found the registry had lost them as well
        (actors/class_recovery.py)."""
        return {name: self._class_blobs[name] for name in names if name in self._class_blobs}
