"""An executor's run slots: at most ``n`` runs at once, the rest waiting in arrival order.

What ``asyncio.Semaphore`` does, without its cost where a slot is free (nearly every run
of a light executor, which holds ``executor_concurrency`` slots): ``async with`` on a
semaphore makes and awaits three coroutines per run (``__aenter__``, ``acquire``,
``__aexit__``) and scans its waiters in ``locked()``, ~1 µs of the executor's loop thread
per run here, against ~0.1 µs for ``take``/``give``. A slot given back while runs wait is
handed to the first of them directly (never counted free in between), so a run arriving
then cannot take it ahead of one that waited.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Slots:
    """``take()`` a free slot at once, else ``await wait()`` for one; ``give()`` it back."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"slots: need at least 1, got {n}")
        self.free = n
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        """A slot now, if one is free and nobody waits for one (True); else False."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def wait(self) -> None:
        """Until a slot is handed over. Cancelled meanwhile: no slot is held (one handed over
        in that moment goes on to the next waiter)."""
        if self.take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed over as this run was cancelled: the next one gets it
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            raise

    def give(self) -> None:
        """A run is done with its slot: to the first run still waiting, else free."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1
