"""Device states pushed by the ConstraintOracle, and the last ones seen kept in the store:
a transition while this scheduler was down (a kill, a restart of the engine on the same
cluster) fires its device trigger once after, as a missed period runs once; without them
the first push after a restart was a first sighting, and the trigger never fired. A
mixin of SchedulerActor (scheduler.py): the attributes below are the actor's."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from kmpray.device import DeviceState
from kmpray.engine import SchedulerCore
from kmpray.errors import StoreRefused
from kmpray.store import SqliteTaskStore

log = logging.getLogger("kmpray.scheduler")

SEEN = "device_states"  # the store's meta key: node id -> the state last pushed (JSON form)
OVERRIDES = "device_overrides"  # the store's meta key: the oracle's overrides last pushed here


def _parsed(states: dict[str, dict[str, Any]]) -> dict[str, DeviceState]:
    return {n: DeviceState.model_validate(s) for n, s in states.items()}


class SchedulerDevices:
    core: SchedulerCore
    store: SqliteTaskStore
    _ready: asyncio.Future[None]
    _device_overrides: dict[str, dict[str, Any]] | None
    _seen_devices: dict[str, dict[str, Any]] | None

    if TYPE_CHECKING:  # the actor's
        def _pump(self) -> None: ...

    def _first_device_states(self, states: dict[str, dict[str, Any]]) -> None:
        """At start: the oracle's states, compared with those this store saw last."""
        saved = self.store.get_meta(SEEN)
        before: dict[str, DeviceState] = {}
        if isinstance(saved, dict):
            try:
                before = _parsed(saved)
                self._seen_devices = saved
            except Exception as exc:  # not states (a damaged meta row): as if none were kept
                log.warning("the device states kept in the store are unreadable, ignored: %s", exc)
        fired = self.core.set_devices(_parsed(states), seen_before=before)
        if fired:
            log.warning("device state changed while this scheduler was down: %s fired", ", ".join(fired))
        self._keep_seen(states)

    async def device_states(self, payload: dict[str, dict[str, Any]], overrides: dict[str, Any]) -> list[str]:
        """Pushed by the oracle on every change: re-gate tasks, fire device triggers, dispatch.
        ``overrides``: the oracle's, kept here for it to take back after a restart."""
        self._keep_overrides(overrides)
        await self._ready
        fired = self.core.set_devices(_parsed(payload))
        self._keep_seen(payload)
        self._pump()
        return fired

    def _keep_overrides(self, overrides: dict[str, dict[str, Any]]) -> None:
        """The oracle's overrides, in memory for it to take back and, when they change, in
        the store: the oracle and this scheduler killed together both restarted empty (each
        took back the other's nothing), and the gates the overrides closed opened (found
        as the worker classes were, session 58). A scheduler Ray restarted begins with the
        stored copy (``_saved_overrides``), which a restarting oracle then takes back."""
        if overrides != self._device_overrides:
            self._device_overrides = overrides
            self._put_meta(OVERRIDES, overrides, "the device overrides")

    def _saved_overrides(self) -> dict[str, dict[str, Any]] | None:
        """The overrides this store's scheduler last had (None: none, or unreadable)."""
        saved = self.store.get_meta(OVERRIDES)
        return saved if isinstance(saved, dict) else None

    def _keep_seen(self, states: dict[str, dict[str, Any]]) -> None:
        # written when they change only (the oracle pushes on change)
        if states != self._seen_devices and self._put_meta(SEEN, states, "the device states"):
            self._seen_devices = states

    def _put_meta(self, key: str, value: object, what: str) -> bool:
        """Keep ``value`` in the store; a failure (a full disk is what StorageLow is for) is
        logged, and the next change tries again. A refused scheduler has no store: kept
        in memory only (until session 63 an AttributeError to the oracle's push)."""
        if getattr(self, "store", None) is None:
            return False
        try:
            self.store.put_meta(key, value)
        except (sqlite3.Error, OSError, StoreRefused) as exc:
            log.warning("keeping %s in the store failed (tried at the next change): %s", what, exc)
            return False
        return True
