"""advance_time's settle (actors/virtual_time.py) on a stand-in host: it returns only once
no run is in flight or ready, no chain message is on its way to a coordinator, and no
coordinator's resync is half done. No Ray: the interleavings are made exactly here (a
fresh engine's first chain left a step promoted after the call in 1 to 2 runs of 25)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from kmpray.actors.scheduler_chains import SchedulerChains
from kmpray.actors.virtual_time import VirtualTime

from kmpray.clock import ManualClock
from kmpray.config import EngineConfig
from kmpray.engine import SchedulerCore
from kmpray.platforms import profile
from kmpray.timing import RESYNC_WAIT_S


class Host(VirtualTime, SchedulerChains):
    def __init__(self) -> None:
        self.clock = ManualClock(1_700_000_000_000)
        self.config = EngineConfig()
        self.core = SchedulerCore(self.clock, profile("cluster"))
        self.pool: Any = SimpleNamespace(where={})
        self.heavy: Any = SimpleNamespace(where={})
        self._idle = asyncio.Event()
        self._chain_outboxes = []
        self._resyncing = {}
        self._ready = asyncio.get_running_loop().create_future()
        self._ready.set_result(None)

    def _pump(self) -> None:
        pass


class Reply:
    """A chain outbox whose reply promotes a run (as ``_chain_actions`` pumps it out)."""

    def __init__(self, host: Host) -> None:
        self.host, self.busy = host, True

    async def delivered(self, timeout_s: float) -> bool:
        await asyncio.sleep(0.01)
        self.host.pool.where[("b", 1)] = 0
        self.busy = False
        return True


async def _turns(task: asyncio.Task[None], n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)
    assert not task.done()


def test_a_coordinators_resync_is_waited_for_and_the_runs_it_promotes() -> None:
    async def main() -> None:
        host = Host()
        await host.chain_snapshot(0, 1)  # a coordinator's first start: its snapshot answered
        settle = asyncio.ensure_future(host._settle(time.monotonic() + 30))
        await _turns(settle)  # nothing in flight, but the resync's actions are to come
        host.pool.where[("b", 1)] = 0  # they came (chain_actions): a promoted run handed over
        await host.resynced(0)
        await _turns(settle)  # its run is in flight
        host.pool.where.clear()
        host._idle.set()  # its report: idle
        await asyncio.wait_for(settle, 5)

    asyncio.run(main())


def test_a_resync_older_than_its_wait_is_not_waited_for() -> None:
    async def main() -> None:
        host = Host()
        host._resyncing[0] = time.monotonic() - RESYNC_WAIT_S - 1  # its coordinator died half-way
        await asyncio.wait_for(host._settle(time.monotonic() + 30), 1)

    asyncio.run(main())


def test_a_chain_message_on_its_way_is_waited_for_and_the_runs_its_reply_makes() -> None:
    async def main() -> None:
        host = Host()
        reply = Reply(host)
        host._chain_outboxes = [reply]  # type: ignore[list-item]
        settle = asyncio.ensure_future(host._settle(time.monotonic() + 30))
        for _ in range(400):  # bounded: 2 s for a reply the settle asks for at once
            if not reply.busy:
                break
            await asyncio.sleep(0.005)
        assert not reply.busy, "the settle never waited for the chain outbox"
        await _turns(settle)  # the reply's run is in flight
        host.pool.where.clear()
        host._idle.set()
        await asyncio.wait_for(settle, 5)

    asyncio.run(main())
