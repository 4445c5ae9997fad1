"""EventBroker: durable, cursor-based fan-out of completion and progress events.

Events are appended to an EventLog (SQLite) in batches and handed out by cursor.
Subscribers pull (long-poll) from their own cursor, so a slow one never blocks the
engine or other subscribers and never loses an event: it simply reads further back.
Actor subscribers are pushed to by a per-subscriber task that pulls the same way; the
oracle and shard 0's scheduler keep a copy of each (actors/subscriber_copies.py), so a
restart resumes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from kmpray.artifacts import check_event
from kmpray.errors import InvalidParameters, StoreRefused, StoreWriteFailed
from kmpray.event_codec import MAX_EVENT_BYTES, decode_event, decode_events, encode_emitted, fit_event
from kmpray.event_log import MemoryEventLog, SqliteEventLog, as_lists, jumped_trimmed
from kmpray.events import TaskCompletionEvent, TaskProgressEvent
from kmpray.store_files import disk_error
from kmpray.timing import (
    METRICS_S,
    QUIET_SYNC_ROWS,
    QUIET_SYNC_S,
    STORE_FAILED_RETRY_S,
    STORE_LOCK_WAIT_S,
    SUBSCRIBER_IDLE_SAVE_S,
    SUBSCRIBER_SAVE_S,
    UNSUBSCRIBE_WAIT_S,
)

from .metrics import Metrics
from .names import BROKER, ORACLE, SCHEDULER, base_namespace, engine_identity, lookup, named
from .retry import call_with_retry, taken_back
from .store_room import end_after, what_to_fix
from .untraced import untrace

COPIES = (ORACLE, SCHEDULER)  # the actors that keep copies of the actor subscriptions, in this order

log = logging.getLogger("kmpray.broker")

EMIT_RETRIES = 5  # a worker's emit across this many broker restarts in a row


@dataclass
class _Pushing:
    """One actor subscription: its pusher task, the actor, and how far it was pushed."""

    task: asyncio.Task[None]
    actor: Any
    cursor: int


class _Unwritable:
    """The event log of a broker whose disk failed at its start: every use raises why."""

    def __init__(self, exc: StoreWriteFailed) -> None:
        self.exc = exc

    def __getattr__(self, name: str) -> Any:
        raise self.exc


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=10_000)
class EventBroker:
    def __init__(
        self, state_dir: str, retention: int, durability: str = "normal", namespace: str = "",
        progress_retention: int | None = None, lock_wait_s: float = STORE_LOCK_WAIT_S,
    ) -> None:
        untrace(self)  # its own calls without Ray's tracing shim (actors/untraced.py)
        self._refused: StoreRefused | StoreWriteFailed | None = None
        self.events_file = Path(state_dir) / "events.db"
        self.log: SqliteEventLog | MemoryEventLog | _Unwritable
        try:
            self.log = SqliteEventLog(self.events_file, durability, lock_wait_s, engine_identity(namespace))
        except StoreRefused as exc:
            log.error("%s", exc)
            self._refused = exc
            self.log = MemoryEventLog()  # answers nothing durable: ready() says why
        except (sqlite3.Error, OSError) as exc:  # the disk failing at the start: for now
            self._refused = self._unwritable(state_dir, exc)
            self.log = _Unwritable(self._refused)
        # The newest this many completion events are kept, and as many progress events as
        # progress_retention says (a count of their own: a flood cannot push completions out).
        self.retention = retention
        self.progress_retention = retention if progress_retention is None else progress_retention
        self._changed = asyncio.Event()
        self._appended = {False: 0, True: 0}  # completions, progress events since the last trim
        self._pushing: dict[str, _Pushing] = {}  # by subscription id
        self.namespace = base_namespace(namespace) if namespace else namespace
        # The copies of the actor subscriptions (actors/subscriber_copies.py), by actor name:
        # each found at first need.
        self._copy_handles: dict[str, Any] = {}
        self._subscriptions_back = asyncio.ensure_future(self._take_subscriptions_back())
        # Tagged with the engine's namespace: a named actor's runtime namespace is its creator's.
        # No shard tag: the shards share this broker.
        self._metrics = Metrics(namespace, per_shard=False)
        self._published_total = 0  # events appended since this process started
        self._oldest_read: int | None = None  # the lowest cursor read from since the last publish
        self._housekeeping_loop: asyncio.Task[None] | None = None  # started by the first call

    async def _housekeeping(self) -> None:
        published = time.monotonic()
        while True:
            await asyncio.sleep(QUIET_SYNC_S)
            try:
                self.log.sync_if_quiet(QUIET_SYNC_ROWS)  # durability="normal": see kmpray/timing.py
            except Exception:
                log.warning("syncing the event log failed; will retry", exc_info=True)
            if time.monotonic() - published < METRICS_S:
                continue
            published = time.monotonic()
            try:
                self._metrics_once()
            except Exception:
                log.debug("publishing metrics failed", exc_info=True)

    def _metrics_once(self) -> None:
        first, last = self.log.first_cursor(), self.log.last_cursor()
        m = self._metrics
        kept = max(0, last - first + 1) if last else 0
        m.gauge("kmpray_events_stored", "Events kept in the event log", kept)
        appended = {(): self._published_total}
        m.totals("kmpray_events_published_total", "Events appended to the log", appended, ())
        lag = 0 if self._oldest_read is None else max(0, last - self._oldest_read)
        m.gauge("kmpray_subscriber_lag_events", "Furthest a subscriber was behind the log's end", lag)
        self._oldest_read = None

    @staticmethod
    def _unwritable(state_dir: str, exc: BaseException) -> StoreWriteFailed:
        """The event log could not be opened (an I/O error, a read-only or full disk): every
        call raises why (a publisher keeps its events), and this process ends to be started
        again by Ray, as a scheduler refused at its start does (sooner once it can write).
        Until session 63 the broker's creation failed, and Ray does not restart an actor
        whose constructor raised: the engine had no event log until a restart of it all."""
        why = StoreWriteFailed(f"event log {Path(state_dir) / 'events.db'}: {exc} (the broker restarts and "
                               f"serves again once it can write: {what_to_fix(exc)})")
        log.error("%s", why)
        end_after(state_dir, STORE_FAILED_RETRY_S, exc)
        return why

    def ready(self) -> None:
        """Raises the reason this broker's event log was refused, if it was."""
        if self._refused is not None:
            raise self._refused

    def publish(self, bodies: list[bytes], origins: list[int | None] | None = None, source: int = 0,
                progress: list[bool] | None = None) -> int:
        """Append encoded events; returns the last cursor. ``origins``: the scheduler's
        outbox number of each (None for progress): one at or below the last appended from
        the same ``source`` (scheduler shard) is a re-send after its restart, appended once.
        ``progress`` flags the progress events (None: those without an outbox number, as
        a scheduler sends them)."""
        if origins is None:
            origins = [None] * len(bodies)
        if progress is None:
            progress = [o is None for o in origins]
        kept = [(fit_event(b), o, f) for b, o, f in zip(bodies, origins, progress, strict=True)]
        try:
            self.log.append([b for b, _o, _f in kept], [o for _b, o, _f in kept], source,
                            [f for _b, _o, f in kept])
        except (sqlite3.Error, OSError) as exc:
            if not isinstance(exc, OSError) and not disk_error(exc):
                raise
            # Nothing appended: the sender keeps the events and sends them again (its outbox).
            raise StoreWriteFailed(f"event log {self.events_file}: {exc} (nothing appended; "
                                   "free space on that disk)") from exc
        for _b, _o, flag in kept:
            self._appended[flag] += 1
        self._published_total += len(kept)
        if self._housekeeping_loop is None:
            self._housekeeping_loop = asyncio.ensure_future(self._housekeeping())
        for flag, keep in ((False, self.retention), (True, self.progress_retention)):
            if self._appended[flag] >= keep // 10 + 1:
                self._appended[flag] = 0
                self.log.trim(keep, progress=flag)
        self._changed.set()
        self._changed = asyncio.Event()
        return self.log.last_cursor()

    def emit(self, body: bytes) -> int:
        """One event from worker code, validated here so a bad one is refused, not stored."""
        event = decode_event(body)
        if len(body) > MAX_EVENT_BYTES:  # the buses refuse it first (event_codec.encode_emitted)
            raise InvalidParameters(f"event of {len(body):,} bytes: over the {MAX_EVENT_BYTES:,}-byte limit")
        return self.publish([body], progress=[event.kind == "progress"])

    def taken(self, source: int = 0) -> int:
        """The newest outbox number of scheduler shard ``source`` the log holds: a
        restarted scheduler re-sends only what is after it."""
        return self.log.last_origin(source)

    def bounds(self) -> tuple[int, int, int]:
        """(first retained cursor, last cursor, newest cursor of a completion trimmed)."""
        return self.log.first_cursor(), self.log.last_cursor(), self.log.trimmed_to()

    async def poll(self, after: int, limit: int = 1000, timeout_s: float = 1.0) -> list[list[Any]]:
        """Events after cursor ``after``, as ``[cursor, body]`` (``as_lists``), waiting up to
        ``timeout_s`` for one."""
        self._oldest_read = after if self._oldest_read is None else min(self._oldest_read, after)
        rows = self.log.read(after, limit)
        if rows or timeout_s <= 0:
            return as_lists(rows)
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout_s)
        except TimeoutError:
            return []
        return as_lists(self.log.read(after, limit))

    async def subscribe_actor(self, sub_id: str, actor: Any, after: int) -> None:
        """Push every event after ``after`` to ``actor.on_event``; answered once both copies
        hold it (a retry of this call, after a restart, changes nothing)."""
        if sub_id not in self._pushing:
            self._start_pusher(sub_id, actor, after)
        await asyncio.gather(*(call_with_retry(lambda c=copy: c.keep_subscriber.remote(sub_id, actor, after))
                               for copy in self._copies()))

    def _copies(self) -> list[Any]:
        """The actors that keep copies of the subscriptions: the oracle and shard 0's
        scheduler (named while they restart too); none for a broker of its own (tests)."""
        for name in COPIES if self.namespace else ():
            if name not in self._copy_handles:
                with contextlib.suppress(ValueError):
                    self._copy_handles[name] = named(name, self.namespace)
        return list(self._copy_handles.values())

    def _tell_copies(self, method: str, *args: Any) -> None:
        for copy in self._copies():
            getattr(copy, method).remote(*args)  # its answer is not awaited: it changes nothing here

    def _start_pusher(self, sub_id: str, actor: Any, after: int) -> None:
        task = asyncio.ensure_future(self._push(sub_id, actor, after))
        self._pushing[sub_id] = _Pushing(task, actor, after)
        # A subscriber actor that died ends its pusher: its entry goes too, not at close().
        task.add_done_callback(lambda t: self._forget_pusher(sub_id, t))

    async def _take_subscriptions_back(self) -> None:
        """After a restart, the actor subscriptions the copies hold, each from its cursor:
        the oracle's first, then any only shard 0's scheduler still has (the oracle may
        have restarted with this broker)."""
        taken = 0
        for name in COPIES if self.namespace else ():
            for sub_id, actor, cursor in await taken_back(name, self.namespace, "subscribers") or ():
                if sub_id not in self._pushing:
                    self._start_pusher(sub_id, actor, cursor)
                    taken += 1
        if taken:  # (none: a fresh engine, or a broker of its own in a test)
            log.warning("restarted: pushing to %d subscriber actor(s) again from their last saved cursors "
                        "(events after those come again)", taken)

    def actor_subscriptions(self) -> list[tuple[str, Any, int]]:
        """A restarted oracle's: every actor subscription and how far it was pushed."""
        return [(sub_id, p.actor, p.cursor) for sub_id, p in self._pushing.items()]

    def _forget_pusher(self, sub_id: str, task: asyncio.Task[None]) -> None:
        if (pushing := self._pushing.get(sub_id)) is not None and pushing.task is task:
            del self._pushing[sub_id]
            self._tell_copies("drop_subscriber", sub_id)

    async def unsubscribe(self, sub_id: str) -> bool:
        """Stop pushing to the subscription's actor: answered once the copies have dropped
        it, as ``subscribe_actor`` is answered once they hold it. Told and not awaited
        (before session 54), a copy could outlive ``close()``, and a broker restarted
        meanwhile took it back and pushed to the closed subscription again."""
        pushing = self._pushing.pop(sub_id, None)
        if pushing is not None:
            pushing.task.cancel()
        copies = self._copies()
        said = await asyncio.gather(  # each bounded below the client's own wait for this answer
            *(call_with_retry(lambda c=copy: c.drop_subscriber.remote(sub_id), UNSUBSCRIBE_WAIT_S)
              for copy in copies), return_exceptions=True)
        for copy, exc in zip(copies, said, strict=True):
            if isinstance(exc, Exception):  # a copy down this long: it may come back once
                log.warning("subscription %s: %s did not drop its copy (%s); a broker restart may push "
                            "to it again", sub_id, copy, type(exc).__name__)
        return pushing is not None

    async def _push(self, sub_id: str, actor: Any, after: int) -> None:
        """Pushes in cursor order; the copies of ``cursor`` are sent at most every
        SUBSCRIBER_SAVE_S while events flow, and soon after they stop."""
        cursor, saved, unsaved = after, time.monotonic(), False
        while True:
            rows = await self.poll(cursor, 256, SUBSCRIBER_IDLE_SAVE_S if unsaved else 5.0)
            if rows and jumped_trimmed(cursor, rows[0][0], trimmed := self.log.trimmed_to()):
                log.warning("subscriber actor %s: completion events after cursor %d up to %d were trimmed "
                            "(event_retention) before it was sent them", actor, cursor, trimmed)
            for cur, event in decode_events(rows):
                try:
                    await actor.on_event.remote(event)
                except ray.exceptions.RayActorError:
                    return
                except Exception:
                    log.exception("subscriber actor failed on event %d", cur)
            if rows:
                cursor, unsaved = rows[-1][0], True
                if (pushing := self._pushing.get(sub_id)) is not None:
                    pushing.cursor = cursor
            if unsaved and (not rows or time.monotonic() - saved >= SUBSCRIBER_SAVE_S):
                saved, unsaved = time.monotonic(), False
                self._tell_copies("subscriber_at", sub_id, cursor)


class BrokerBackend:
    """What ``kmpray.TaskEventBus.emit`` uses inside worker code: fire-and-forget to the
    broker (a run must not wait on the event log). A call in flight when the broker dies
    is sent again by Ray once it has restarted (``max_task_retries``): at least once, in
    order but for those re-sent. Before session 49 they were lost."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._broker: Any = None

    def emit(self, event: TaskCompletionEvent | TaskProgressEvent) -> None:
        check_event(event)  # as the driver's bus does (client/subscription.py)
        body = encode_emitted(event)
        if self._broker is None:
            self._broker = lookup(BROKER, base_namespace(self.namespace))  # shared by the shards
        self._broker.emit.options(max_task_retries=EMIT_RETRIES).remote(body)

    def subscribe(self, since: int | None = None, callback: Any = None, actor: Any = None) -> Any:
        raise NotImplementedError("subscribe from a driver (kmpray.connect), not from worker code")
