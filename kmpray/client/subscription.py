"""The client side of the event bus: ``scheduler.events.subscribe()`` and ``emit``.

A Subscription reads the broker's durable log from a cursor (long-poll, batched); an
ActorSubscription has the broker push every event to an actor. See actors/event_broker.py.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from ..artifacts import check_event
from ..clock import deadline_after
from ..errors import EngineUnavailable
from ..event_log import jumped_trimmed
from ..events import TaskCompletionEvent, TaskProgressEvent
from ..timing import BROKER_SILENT_S, CALL_TIMEOUT_S
from .remote import _ray, ray_gone, require_ray_here

log = logging.getLogger("kmpray")


def _asked(make_call: Callable[[], Any]) -> Any:
    """A call to the broker, asked again while it restarts (within CALL_TIMEOUT_S): a
    subscribe in the second or two after a broker crash raised Ray's "the actor is
    restarting" where waiting for it was all that was needed (the log is durable). For
    reads and idempotent calls only (not ``emit``: one that got through would be twice)."""
    from kmpray.actors.retry import call_with_retry_sync

    return call_with_retry_sync(lambda: _ray().get(make_call(), timeout=CALL_TIMEOUT_S), CALL_TIMEOUT_S)


def _jumped(rows: Sequence[Sequence[Any]], after: int | None) -> bool:
    """A read after cursor ``after`` (not 0: ``since=0`` asks for what is retained) whose
    first row is not the next cursor: rows were trimmed in between."""
    return bool(rows and after and rows[0][0] > after + 1)


class Subscription:
    """A cursor over the engine's stored events: ``get``, iterate, async-iterate, ``close``.

    It pulls from the broker, so it never slows the engine or other subscribers down;
    ``cursor`` is the last event handed out (pass it as ``since`` to resume).
    """

    def __init__(self, broker: Any, after: int, callback: Callable[[Any], None] | None = None) -> None:
        self._broker = broker
        self.cursor = after
        # (after, upto): completion events after cursor ``after`` up to ``upto`` were trimmed
        # (EngineConfig.event_retention) before this subscription read them; logged too.
        self.missed: list[tuple[int, int]] = []
        self._buffer: deque[tuple[int, Any]] = deque()
        self._skipped_to = after
        self._closed = False
        self._silent_since: float | None = None  # the first of the polls failing in a row
        self._thread: threading.Thread | None = None
        if callback is not None:
            self._thread = threading.Thread(target=self._pump_callback, args=(callback,), daemon=True)
            self._thread.start()

    def _take(self, rows: Sequence[Sequence[Any]], after: int | None = None,
              trimmed: int | None = None) -> None:
        """Decode ``rows``, read after cursor ``after``: a jump past ``after + 1`` means rows
        were trimmed meanwhile (a reader slower than the retention); if completions were
        among them, say so (``missed``), never skip them silently. Not for a first read
        from cursor 0: ``since=0`` asks for what is retained."""
        from ..event_codec import decode_events

        if _jumped(rows, after):
            if trimmed is None:  # (``async for`` asks first, without blocking its loop)
                trimmed = int(_asked(self._broker.bounds.remote)[2])  # one call, on a jump only
            if jumped_trimmed(after, rows[0][0], trimmed):
                self.missed.append((after, trimmed))
                log.warning("event subscription at cursor %d: completion events up to cursor %d were trimmed "
                            "(EngineConfig.event_retention) before it read them; it goes on at cursor %d",
                            after, trimmed, rows[0][0])

        self._buffer.extend(decode_events(rows))
        if rows and (not self._buffer or self._buffer[-1][0] != rows[-1][0]):
            self._skipped_to = rows[-1][0]  # the last rows were damaged: resume after them

    def _fill(self, timeout_s: float) -> None:
        from kmpray.actors.retry import TRANSIENT

        _require_ray()
        try:
            after = self._after()
            rows = _ray().get(self._broker.poll.remote(after, 1000, timeout_s), timeout=timeout_s + 30)
        except TRANSIENT:  # the broker is restarting; the log is durable, so just ask again
            self._unanswered()
            time.sleep(min(timeout_s, 0.2))
            return
        self._silent_since = None
        self._take(rows, after)

    def _unanswered(self) -> None:
        """A poll failed as a restarting broker's does; said once if it goes on this long."""
        now = time.monotonic()
        if self._silent_since is None:
            self._silent_since = now
        elif now - self._silent_since >= BROKER_SILENT_S:
            log.warning("event subscription at cursor %d: the event broker has not answered for %.0f s "
                        "(restarting, or its engine was stopped); still asking", self.cursor,
                        now - self._silent_since)
            self._silent_since = float("inf")  # said; quiet until a poll is answered again

    def _after(self) -> int:
        """Where the next poll starts: after what is buffered, or after skipped damaged rows."""
        last = self._buffer[-1][0] if self._buffer else self.cursor
        return max(last, self._skipped_to)

    def get(self, timeout_s: float | None = None) -> TaskCompletionEvent | TaskProgressEvent | None:
        """The next event, or None when ``timeout_s`` passes first (None = wait until one comes)."""
        deadline = deadline_after(timeout_s)
        while not self._buffer and not self._closed:
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._fill(min(remaining, 1.0))
        if not self._buffer:
            return None
        self.cursor, event = self._buffer.popleft()
        return event  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[TaskCompletionEvent | TaskProgressEvent]:
        while not self._closed:
            event = self.get(timeout_s=1.0)
            if event is not None:
                yield event

    async def __aiter__(self) -> AsyncIterator[TaskCompletionEvent | TaskProgressEvent]:
        import asyncio

        from kmpray.actors.retry import TRANSIENT

        while not self._closed:
            if not self._buffer:
                _require_ray()
                after = self._after()
                try:
                    rows = await self._broker.poll.remote(after, 1000, 1.0)
                except TRANSIENT:  # as get(): before session 42 a broker restart ended `async for`
                    self._unanswered()
                    await asyncio.sleep(0.2)
                    continue
                self._silent_since = None
                trimmed = None
                if _jumped(rows, after):  # was a completion trimmed in the jump?
                    try:
                        trimmed = int((await self._broker.bounds.remote())[2])
                    except TRANSIENT:
                        pass  # _take asks again (briefly blocking) if the broker restarts just now
                self._take(rows, after, trimmed)
                continue
            self.cursor, event = self._buffer.popleft()
            yield event

    def _pump_callback(self, callback: Callable[[Any], None]) -> None:
        while not self._closed:
            try:
                event = self.get(timeout_s=1.0)
            except EngineUnavailable as exc:  # Ray shut down in this process: nothing to ask again
                log.warning("event subscription callback stopped at cursor %d: %s", self.cursor, exc)
                self._closed = True
                return
            except Exception:
                log.exception("event subscription poll failed; retrying")
                time.sleep(1.0)
                continue
            if event is not None:
                try:
                    callback(event)
                except Exception:
                    log.exception("event callback raised")

    def close(self, wait: bool = True) -> None:
        """Stop: iteration ends, a callback is called no more (``wait``: until its thread ends)."""
        self._closed = True
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _require_ray() -> None:
    if not _ray().is_initialized():
        raise ray_gone()
    require_ray_here()  # not in a child forked from a process with Ray up


class ActorSubscription:
    """A push subscription to an actor's ``on_event(event)``; ``close()`` stops it."""

    def __init__(self, broker: Any, sub_id: str) -> None:
        self._broker = broker
        self.id = sub_id

    def close(self) -> None:
        if _ray().is_initialized():  # else its broker is out of reach, and closing is cleanup
            _asked(lambda: self._broker.unsubscribe.remote(self.id))


class EventBus:
    """This connection's TaskEventBus: ``emit`` and ``subscribe`` over the EventBroker."""

    def __init__(self, broker: Any) -> None:
        self._broker = broker
        # Its polling subscriptions: the connection's shutdown() closes them (a callback's
        # thread polled the stopped engine's broker for good, every 0.2 s).
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()

    def close(self) -> None:
        """This connection is shut down: its subscriptions end (iteration stops, callbacks
        are called no more)."""
        for sub in list(self._subscriptions):
            sub.close(wait=False)  # a callback's thread ends within its current poll (<= 1 s)

    def emit(self, event: TaskCompletionEvent | TaskProgressEvent) -> None:
        from ..event_codec import encode_emitted

        if not isinstance(event, (TaskCompletionEvent, TaskProgressEvent)):
            raise TypeError(
                f"emit takes a TaskCompletionEvent or TaskProgressEvent, got {type(event).__name__}"
            )
        check_event(event)
        body = encode_emitted(event)
        _require_ray()
        _ray().get(self._broker.emit.remote(body), timeout=CALL_TIMEOUT_S)

    def last_cursor(self) -> int:
        _require_ray()
        return int(_asked(self._broker.bounds.remote)[1])

    def subscribe(
        self,
        since: int | None = None,
        *,
        callback: Callable[[Any], None] | None = None,
        actor: Any = None,
    ) -> Subscription | ActorSubscription:
        """Events after cursor ``since`` (0 = replay all retained; None = only new ones)."""
        last = self.last_cursor()
        if since is None:
            after = last
        elif isinstance(since, bool) or not isinstance(since, int) or since < 0:
            raise ValueError(f"since: must be None or an int cursor >= 0, got {since!r}")
        elif since > last:
            raise ValueError(f"since: cursor {since} is beyond the last event ({last})")
        else:
            after = since
        if callback is not None and actor is not None:
            raise ValueError("subscribe: give callback or actor, not both")
        if actor is not None:
            if not hasattr(actor, "on_event"):  # a handle knows its class's methods
                raise TypeError(f"subscribe(actor=...): {actor!r} has no method on_event(event) to push to")
            sub_id = uuid.uuid4().hex
            _asked(lambda: self._broker.subscribe_actor.remote(sub_id, actor, after))
            return ActorSubscription(self._broker, sub_id)
        sub = Subscription(self._broker, after, callback)
        self._subscriptions.add(sub)
        return sub


__all__ = ["ActorSubscription", "EventBus", "Subscription"]
