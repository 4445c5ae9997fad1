"""The client facade: ``connect()``, BackgroundTaskScheduler and event subscriptions.

Users hold this facade; they never see ``ray.get`` or actor handles. Ray and the
actors are imported when ``connect()`` runs, never at ``import kmpray``.
"""

from __future__ import annotations

from .facade import BackgroundTaskScheduler, TaskNotFound, connect
from .remote import default_state_dir, ship_class
from .subscription import ActorSubscription, EventBus, Subscription

__all__ = [
    "ActorSubscription", "BackgroundTaskScheduler", "EventBus", "Subscription", "TaskNotFound", "connect",
    "default_state_dir", "ship_class",
]
