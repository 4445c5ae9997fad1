"""Threads a run leaves behind, and a heavy worker that does not take its next run beside them.

A sync ``do_work`` (or an async one run in a thread) cannot be stopped: when its run times
out, the run ends (FAILED or a retry) and the thread goes on. On a light executor that is
one of its many threads. A heavy worker promises one run at a time (a GPU's memory, a
model's), yet took its next run while the timed-out one's thread still ran: two runs at
once in one process (found by a tour in session 42). Now a heavy worker holds its slot
until that thread ends; one still going ``heavy_cancel_grace_s`` later ends the process (as
a run that ignores its cancel does), after its result was acknowledged, and Ray restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from kmpray.config import EngineConfig
from kmpray.timing import HEAVY_CANCEL_POLL_S, STRAY_ACK_WAIT_S, STRAY_SAY_S

from .background import background
from .names import SCHEDULER, lookup
from .slots import Slots

log = logging.getLogger("kmpray.executor")


class RunThreads(ThreadPoolExecutor):
    """The threads runs are called on, counting the calls still going (``running``): a
    call whose awaiting was cancelled (a timeout) is still counted until it returns."""

    def __init__(self, n: int) -> None:
        super().__init__(n, thread_name_prefix="kmpray-run")
        self.running = 0
        self._count = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._count:
            self.running += 1
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._ended)
        return future

    def _ended(self, _future: Future[Any]) -> None:
        with self._count:
            self.running -= 1


class HeavySlot:
    """A heavy worker's ``_give_slot``: its one slot comes back once no run's thread is left."""

    _slots: Slots
    _run_threads: RunThreads
    _unreported: dict[tuple[str, int], None]
    _tasks: dict[tuple[str, int], asyncio.Task[None]]
    _begun: set[tuple[str, int]]
    _begin_lock: threading.Lock
    _stopping: bool
    _scheduler: Any
    config: EngineConfig
    index: int
    incarnation: str
    namespace: str

    def _give_slot(self, key: tuple[str, int]) -> None:
        if not self._run_threads.running:
            self._slots.give()
            return
        background(self._give_when_alone(key), "a slot waiting for a stray thread to end")

    async def _give_when_alone(self, key: tuple[str, int]) -> None:
        grace = self.config.heavy_cancel_grace_s
        deadline = time.monotonic() + grace
        while self._run_threads.running and time.monotonic() < deadline:
            await asyncio.sleep(HEAVY_CANCEL_POLL_S)
        if not self._run_threads.running:
            self._slots.give()
            return
        # Its result goes first (the scheduler must not take it for a run this death lost).
        until = time.monotonic() + STRAY_ACK_WAIT_S
        while key in self._unreported and time.monotonic() < until:
            await asyncio.sleep(HEAVY_CANCEL_POLL_S)
        why = (f"run {key[0]} ended (timed out) but its thread was still running {grace:g} s later: "
               "ended its process so the next heavy run is alone (Ray restarts it)")
        log.warning("heavy worker %d: %s", self.index, why)
        await self._say_exiting(self._leave(), why)
        os._exit(71)

    def _leave(self) -> list[tuple[str, int]]:
        """Nothing more begins here; the runs taken and not begun (the one that waited for
        this slot), which the scheduler runs again elsewhere, as not this process's deaths."""
        with self._begin_lock:
            self._stopping = True
            unbegun = [key for key in self._tasks if key not in self._begun]
            for key in unbegun:
                self._unreported.pop(key, None)
        return unbegun

    async def _say_exiting(self, unbegun: list[tuple[str, int]], why: str) -> None:
        """Told, the scheduler re-runs ``unbegun`` as given back, not as runs this death hit
        (an innocent task's ``max_system_reruns``), sends nothing more here, and lists the exit
        in ``status()["stopped_processes"]``. Untold (it is down), its reconcile sees the death."""
        try:
            scheduler = self._scheduler or lookup(SCHEDULER, self.namespace, timeout_s=1)
            ref = scheduler.heavy_exiting.remote(self.index, self.incarnation, unbegun, why)
            await asyncio.wait_for(asyncio.wrap_future(ref.future()), STRAY_SAY_S)
        except Exception as exc:
            log.warning("heavy worker %d: the scheduler did not hear of this exit (%s)", self.index,
                        type(exc).__name__)
