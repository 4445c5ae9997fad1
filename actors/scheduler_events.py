"""Completion events on their way from the scheduler's store to the EventBroker: each
batch published with its outbox numbers, the broker's acknowledgements, and at a start
the outbox's leftovers (only those the event log lacks are sent again). A mixin of
SchedulerActor (scheduler.py): the attributes below are the actor's."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from kmpray.store import SqliteTaskStore

from .outbox import Outbox
from .retry import call_with_retry

log = logging.getLogger("kmpray.scheduler")


class SchedulerEvents:
    store: SqliteTaskStore
    shard: int
    messages: Counter[str]
    _broker: Any
    _events: Outbox[tuple[int | None, bytes]]
    _acked: int | None

    async def _resend_events(self) -> None:
        """Completion events still in the store's outbox: those the event log already has
        (acknowledged, but the outbox is cleared only with the next write, so a shutdown
        soon after the last completion leaves them) are forgotten; the rest, which a crash
        kept from the broker, are sent again (it would append each once either way)."""
        unsent = self.store.pending_events()
        if not unsent:
            return
        shard = self.shard
        try:  # bounded: a broker that cannot say gets them all again (it appends each once)
            taken = int(await asyncio.wait_for(call_with_retry(lambda: self._broker.taken.remote(shard),
                                                               timeout_s=10), 15))
        except Exception:
            log.warning("the event broker did not say which completion events it has; sending all %d",
                        len(unsent))
            taken = 0
        if unsent[0][0] <= taken:
            self.store.ack_events(taken)
        unsent = [(seq, body) for seq, body in unsent if seq > taken]
        if unsent:
            log.warning("sending %d completion events the event log does not have yet (a crash kept them "
                        "from the broker)", len(unsent))
            self.messages["events_resent"] += len(unsent)
            self._events.add(unsent)

    def _publish(self, batch: list[tuple[int | None, bytes]]) -> Any:
        self.messages["event_batches_sent"] += 1
        return self._broker.publish.remote([b for _o, b in batch], [o for o, _b in batch], self.shard)

    def _events_acked(self, batch: list[tuple[int | None, bytes]]) -> None:
        """The broker has these: they leave the outbox with the next store write (no
        transaction of their own; housekeeping does it when nothing else writes)."""
        upto = max((n for n, _b in batch if n is not None), default=None)
        if upto is not None:
            self._acked = max(upto, self._acked or 0)
