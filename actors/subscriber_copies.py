"""Copies of the broker's actor subscriptions: a part of the ConstraintOracle's actor and of
shard 0's SchedulerActor.

The EventBroker pushes to each subscriber actor (``events.subscribe(actor=handle)``) from
a task of its own process, reading the durable log from the subscription's cursor. That
task, the handle and the cursor lived nowhere else: a broker restart ended every actor
subscription without a word (until session 49). The broker sends each subscription to
two copies, the oracle's and shard 0's scheduler's (since session 60; before, the
oracle's only, and the broker and the oracle dying together ended them), as it is made
(before ``subscribe`` returns), how far it got at most once a second, and its end. A
restarted broker takes them back from both and pushes on from there; a restarted copy
takes them back from the broker and from the other copy (what each holds now, without
waiting on its own take-back, so two copies restarting together wait on no one). Delivery
is at least once: what was pushed after the last cursor sent is pushed again. All three
dying together, or a full restart, ends them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .names import BROKER
from .retry import taken_back


class SubscriberCopies:
    """Mixed into the ConstraintOracle and the SchedulerActor; its methods are their remote
    methods."""

    def _start_subscriber_copies(self, namespace: str, other: str | None) -> None:
        """``other``: the other copy's actor name (in ``namespace``), both taken back from
        after a restart; None for a copy nobody sends to (shards other than 0)."""
        self._subscribers: dict[str, tuple[Any, int]] = {}  # sub_id -> (actor handle, cursor)
        self._subscribers_back: asyncio.Future[None] = asyncio.ensure_future(
            self._take_subscribers_back(namespace, other))

    async def _take_subscribers_back(self, namespace: str, other: str | None) -> None:
        """After a restart, the broker's subscriptions and the other copy's (none at first
        start); of two cursors of one subscription, the further."""
        if other is None:
            return
        for name, method in ((BROKER, "actor_subscriptions"), (other, "subscribers_held")):
            for sub_id, actor, cursor in await taken_back(name, namespace, method) or ():
                held = self._subscribers.get(sub_id)
                if held is None or held[1] < cursor:
                    self._subscribers[sub_id] = (actor, cursor)

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
        return self.subscribers_held()

    def subscribers_held(self) -> list[tuple[str, Any, int]]:
        """The other copy's, restarted: what this one holds now (its own take-back not
        awaited: the two may be restarting together)."""
        return [(sub_id, actor, cursor) for sub_id, (actor, cursor) in self._subscribers.items()]
