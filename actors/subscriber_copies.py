"""The oracle's copy of the broker's actor subscriptions: a part of the ConstraintOracle's actor.

The EventBroker pushes to each subscriber actor (``events.subscribe(actor=handle)``) from
a task of its own process, reading the durable log from the subscription's cursor. That
task, the handle and the cursor lived nowhere else: a broker restart ended every actor
subscription without a word (until session 49). The broker now sends each subscription
here as it is made (before ``subscribe`` returns), how far it got at most once a second,
and its end; a restarted broker takes them back and pushes on from there, and a restarted
oracle takes them back from the broker. Delivery is at least once: what was pushed after
the last cursor sent here is pushed again. Both dying together, or a full restart, ends
them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .names import BROKER
from .retry import taken_back


class SubscriberCopies:
    """Mixed into the ConstraintOracle; its methods are the oracle's remote methods."""

    def _start_subscriber_copies(self, namespace: str) -> None:
        self._subscribers: dict[str, tuple[Any, int]] = {}  # sub_id -> (actor handle, cursor)
        self._subscribers_back = asyncio.ensure_future(self._take_subscribers_back(namespace))

    async def _take_subscribers_back(self, namespace: str) -> None:
        """After a restart, the broker's subscriptions (none at first start)."""
        for sub_id, actor, cursor in await taken_back(BROKER, namespace, "actor_subscriptions") or ():
            self._subscribers.setdefault(sub_id, (actor, cursor))

    async def keep_subscriber(self, sub_id: str, actor: Any, cursor: int) -> None:
        self._subscribers[sub_id] = (actor, cursor)

    async def subscriber_at(self, sub_id: str, cursor: int) -> None:
        entry = self._subscribers.get(sub_id)
        if entry is not None and entry[1] < cursor:
            self._subscribers[sub_id] = (entry[0], cursor)

    async def drop_subscriber(self, sub_id: str) -> None:
        await self._subscribers_back  # a take-back under way must not bring it back after
        self._subscribers.pop(sub_id, None)

    async def subscribers(self) -> list[tuple[str, Any, int]]:
        """A restarted broker's: every subscription and its cursor."""
        await self._subscribers_back
        return [(sub_id, actor, cursor) for sub_id, (actor, cursor) in self._subscribers.items()]
