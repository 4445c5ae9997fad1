"""Waiters: callers parked in the scheduler until work under a name settles.

``wait(id)`` returns when the latest work under the name is finished, or, for periodic
and event-triggered work (which never finishes), when a run after the one the caller
saw has ended; ``wait_chain(id)`` when every task of the chain is finished. The core
says which names may have settled (``Effects.settled``); this re-checks only those.
"""

from __future__ import annotations

import asyncio

from kmpray.engine import SchedulerCore


class Waiters:
    def __init__(self, core: SchedulerCore) -> None:
        self.core = core
        self._by_name: dict[str, list[tuple[asyncio.Future[None], int]]] = {}

    def add(self, name: str, runs_before: int = 0) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._by_name.setdefault(name, []).append((fut, runs_before))
        return fut

    async def wait(self, name: str, runs_before: int, timeout_s: float | None) -> None:
        """Until ``wake`` finds the work settled, or the timeout (no error either way)."""
        fut = self.add(name, runs_before)
        try:
            await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            pass
        finally:
            # Gone at once, not at the name's next wake: a client long-polling a task due
            # next week (WAIT_CHUNK_S at a time) would leave a future per chunk until then.
            self.forget(name, fut)

    def forget(self, name: str, fut: asyncio.Future[None]) -> None:
        waiters = self._by_name.get(name)
        if waiters is None:
            return
        waiters[:] = [w for w in waiters if w[0] is not fut]
        if not waiters:
            del self._by_name[name]

    def wake(self, name: str) -> None:
        waiters = self._by_name.get(name)
        if not waiters:
            return
        core = self.core
        is_chain = name in core.chains
        chain_done = is_chain and core.is_settled(name)
        rec = None if is_chain else core.latest(name)
        keep = []
        for fut, runs_before in waiters:
            if fut.done():
                continue
            settled = chain_done if is_chain else (rec is None or core.waited_out(rec, runs_before))
            if settled:
                fut.set_result(None)
            else:
                keep.append((fut, runs_before))
        if keep:
            self._by_name[name] = keep
        else:
            self._by_name.pop(name, None)
