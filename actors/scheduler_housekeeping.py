"""The scheduler's housekeeping, once every RECONCILE_S: metrics, the garbage collector's
freeze, file watches, long-wait warnings, acknowledged events, finished rows out of
memory, and the prune; and, in a loop of its own at the same pace, executor pings
(``_reconcile``). A mixin of SchedulerActor (scheduler.py): the attributes below are the
actor's."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from kmpray.clock import ManualClock, SystemClock
from kmpray.config import EngineConfig
from kmpray.engine import SchedulerCore
from kmpray.store import SqliteTaskStore
from kmpray.timing import (
    ANSWER_RETENTION_S,
    EVICT_CHUNK,
    EVICT_CHUNKS,
    METRICS_S,
    PRUNE_S,
    QUIET_SYNC_ROWS,
    QUIET_SYNC_S,
    RECONCILE_S,
    WAIT_CHECK_MAX_S,
    full_collection_due,
    trim_due,
)
from kmpray.watch import FileWatcher

from .executor_pool import ExecutorPool
from .memory_cap import give_back, rss_bytes
from .metrics import Metrics, publish_scheduler

log = logging.getLogger("kmpray.scheduler")


class SchedulerHousekeeping:
    config: EngineConfig
    clock: ManualClock | SystemClock
    core: SchedulerCore
    store: SqliteTaskStore
    pool: ExecutorPool
    metrics: Metrics
    _watcher: FileWatcher
    _write_ms: deque[float]
    _acked: int | None
    stopped: bool
    virtual_time: bool

    if TYPE_CHECKING:  # the actor's
        def _flush(self) -> None: ...
        def _kick(self) -> None: ...
        async def _reconcile(self) -> None: ...
        async def sweep_artifacts(self) -> Any: ...

    async def _housekeeping(self) -> None:
        last_gc = time.monotonic()
        rss_after_gc = rss_bytes()
        # The first prune comes one round after a start, not PRUNE_S later: a scheduler
        # restarted more often than that (the soak scenario kills it every 60 s) would
        # never prune, and its rows, its memory and its store would grow without bound.
        last_prune = last_gc - PRUNE_S
        trimmed_at = spilled = 0  # store.spilled_chars at the last give_back(), and last round
        published = waits_checked = synced = 0.0
        waits_every_s = min(max(self.config.wait_warning_ms / 10_000, RECONCILE_S), WAIT_CHECK_MAX_S)
        while True:
            await asyncio.sleep(RECONCILE_S)
            await self._watch_files()
            try:
                if time.monotonic() - published >= METRICS_S:
                    published = time.monotonic()
                    inflight = {s.index: len(s.inflight) for s in self.pool.slots}
                    await publish_scheduler(self.metrics, self.core, inflight, self._write_ms)
                spilled, spilled_round_before = self.store.spilled_chars, spilled
                if trim_due(spilled, trimmed_at, spilled_round_before):
                    trimmed_at = spilled
                    give_back()  # a burst of large inputs freed: its pages go back to the OS
                if full_collection_due(time.monotonic() - last_gc, rss_bytes(), rss_after_gc):
                    last_gc = time.monotonic()  # see kmpray/timing.py
                    gc.unfreeze()
                    gc.collect()
                    rss_after_gc = rss_bytes()
                    log.info("full garbage collection: %.0f ms", (time.monotonic() - last_gc) * 1000)
                gc.collect(1)  # what is young and already garbage is not frozen with the rest
                gc.freeze()
                await self._evict_finished()
                if time.monotonic() - synced >= QUIET_SYNC_S:  # durability="normal": kmpray/timing.py
                    synced = time.monotonic()
                    self._sync_quietly()
                if time.monotonic() - waits_checked >= waits_every_s:
                    waits_checked = time.monotonic()
                    self.core.warn_long_waits()
                if self._acked is not None:  # nothing else wrote since the broker's last ack
                    acked, self._acked = self._acked, None
                    self.store.ack_events(acked)
                if time.monotonic() - last_prune > PRUNE_S:
                    last_prune = time.monotonic()
                    self.core.prune()
                    self._flush()
                    self.store.forget_answers(int((time.time() - ANSWER_RETENTION_S) * 1000))
                    await self.sweep_artifacts()
            except Exception:
                if self.stopped:
                    return  # stop(): the process ends a moment later, and its calls refuse
                log.exception("housekeeping failed; will retry")

    async def _watch_files(self) -> None:
        """The watched ``file://`` paths of ContentUri tasks, polled in a thread
        (kmpray/watch.py), each from when its task was armed: real time only (virtual
        instants are not the files' modification times, so no change then comes with an
        instant either). A step of its own, first in the round: until session 56 a failure
        in any step before it (metrics, eviction, a sync) skipped the watch that second."""
        try:
            watched = self.core.watched_uris(since=not self.virtual_time)
            poll = self._watcher.changes
            changed = await asyncio.to_thread(poll, watched) if watched else poll(watched)
            if sum(self.core.fire("content_uri", uri, at) for uri, at in changed):
                self._kick()
        except Exception:
            if not self.stopped:
                log.exception("watching files failed; will retry")

    async def _reconciler(self) -> None:
        """``_reconcile`` (pings; deaths, restarts and nodes noticed; lost runs re-queued)
        every RECONCILE_S. A loop of its own: a ping waits up to ``ping_timeout_s`` (10 s)
        for an executor that does not answer, a lost node's or a stopped process's, and
        until session 56 the rest of housekeeping went at that pace too (a file written
        to a watched path set its task off 10-20 s late, finished rows left memory and
        acknowledged events were forgotten a tenth as often)."""
        while True:
            await asyncio.sleep(RECONCILE_S)
            try:
                await self._reconcile()
            except Exception:
                if self.stopped:
                    return
                log.exception("reconcile failed; will retry")

    def _sync_quietly(self) -> None:
        """The store synced if writing was light (its own step: a failing disk must not stop
        the rest of housekeeping, the prune and the content-URI watch among it)."""
        try:
            self.store.sync_if_quiet(QUIET_SYNC_ROWS)
        except Exception as exc:
            log.warning("syncing the store failed (%s); will retry", exc)

    async def _evict_finished(self) -> None:
        """Finished rows past finished_in_memory_ms out of memory, EVICT_CHUNK at a time (a
        round of 50,000 at once held the loop ~130 ms: a knee trial's p99 showed it)."""
        before = self.clock.now_ms() - self.config.finished_in_memory_ms
        for _ in range(EVICT_CHUNKS):
            self.core.evict_finished(before, EVICT_CHUNK)
            if not self.core.cold_due(before):
                return
            await asyncio.sleep(0)  # the calls and reports waiting meanwhile go first
