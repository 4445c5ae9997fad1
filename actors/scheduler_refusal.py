"""Why a scheduler does not serve, and its way back: a store refused at its start (it stays
up saying so, for good: the file is not one kmpray will open), and a store it could not
write, at its start or later (it says so to every call, then ends for Ray to start it again
from the store: after ``STORE_FAILED_RETRY_S`` or sooner once the disk can be written,
actors/store_room.py). A mixin of SchedulerActor (scheduler.py): the attributes below are
the actor's."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from kmpray.errors import StoreWriteFailed
from kmpray.timing import STORE_FAILED_RESTART_S, STORE_FAILED_RETRY_S

from .store_room import end_after, what_to_fix

log = logging.getLogger("kmpray.scheduler")


class SchedulerRefusal:
    home: str
    _ready: asyncio.Future[Any]
    _store_failed: StoreWriteFailed | None
    _blobs: dict[str, Any]
    _device_overrides: dict[str, dict[str, Any]] | None

    if TYPE_CHECKING:  # the actor's
        async def _start(self) -> None: ...

    async def _start_or_refuse(self) -> None:
        """The start past the store's restore (the broker's events sent again, the
        executors' runs adopted, spooled results taken in, the first flush): a disk that
        fails a read or a write there is a failed store write, as at the restore. Until
        session 63 it failed ``_ready`` for good, with no end: every call raised
        "disk I/O error" and Ray never started the scheduler again (the ``io`` chaos
        scenario, seed 7: a SQLite call of that start failed during an EIO strike)."""
        try:
            await self._start()
        except (sqlite3.Error, OSError) as exc:
            raise self._store_write_failed(exc, STORE_FAILED_RETRY_S) from exc

    def _refuse(self, exc: Exception) -> None:
        """Stay up to say why: every call (connect's first) raises ``exc``, one line."""
        log.error("%s", exc)
        self._ready = asyncio.get_running_loop().create_future()
        self._ready.set_exception(exc)
        self._blobs = {}  # it holds no worker classes (the registry asks a scheduler it finds)
        # nor device overrides: a new oracle asks each scheduler for them, and until session
        # 56 a refused one answered with an AttributeError (a traceback in its log)
        self._device_overrides = None

    def _store_write_failed(
        self, exc: BaseException, restart_in_s: float = STORE_FAILED_RESTART_S
    ) -> StoreWriteFailed:
        """A store write failed (a full disk, an I/O error, a row that would not encode), so
        what this process holds in memory may be ahead of its store: nothing may be
        acknowledged or handed out from it any more. Every later write raises the same
        error (so every enqueue answers FAILED_UNKNOWN and no run goes out), and the process
        ends ``restart_in_s`` later, its callers answered; Ray starts it again from the
        store, as after a kill."""
        if self._store_failed is None:
            why = f"{self.home}: {exc}"
            log.error("store write failed (%s): restarting from the store in %g s", why, restart_in_s)
            disk = isinstance(exc, (sqlite3.Error, OSError))
            after = (f"once it can write ({what_to_fix(exc)})" if disk else
                     f"in seconds ({type(exc).__name__}: a row it could not encode, an engine bug to report)")
            self._store_failed = StoreWriteFailed(
                f"store write failed ({why}); the scheduler restarts from its store and serves again {after}")
            end_after(self.home, restart_in_s, exc)  # (at its start: sooner once it can write)
        return self._store_failed
