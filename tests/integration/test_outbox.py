"""The Outbox (actors/outbox.py) under a steady stream of items, no Ray: one call in
flight, in order, and with a linger no more than one call per linger period (the event
outbox's: a publish is a Ray call that costs both ends ~1 ms of CPU, so under load the
events of a whole linger period go in one call rather than one call per round trip)."""

from __future__ import annotations

import asyncio
from itertools import pairwise

from kmpray.actors.outbox import Outbox

LINGER_S = 0.04


def _stream(linger_s: float) -> tuple[list[float], list[list[int]]]:
    """Items added every 2 ms for 0.4 s to an Outbox whose call answers after 1 ms."""
    issued: list[float] = []
    batches: list[list[int]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def answer(batch: list[int]) -> None:
            await asyncio.sleep(0.001)

        def call(batch: list[int]) -> asyncio.Future[None]:
            issued.append(loop.time())
            batches.append(list(batch))
            return asyncio.ensure_future(answer(batch))

        box: Outbox[int] = Outbox(call, "test", eager=False, linger_s=linger_s)
        for i in range(200):
            box.add([i])
            await asyncio.sleep(0.002)
        for _ in range(500):  # drained: bounded
            if not box.busy:
                break
            await asyncio.sleep(0.01)
        assert not box.busy

    asyncio.run(main())
    return issued, batches


def test_a_lingering_outbox_sends_at_most_one_call_per_linger_under_steady_load() -> None:
    issued, batches = _stream(LINGER_S)
    assert [i for b in batches for i in b] == list(range(200))  # every item once, in order
    gaps = [b - a for a, b in pairwise(issued)]
    assert gaps and min(gaps) >= LINGER_S * 0.99  # sleeps never end early; a slow machine only widens them
    assert len(batches) <= 0.4 / LINGER_S + 3 and max(len(b) for b in batches) > 5


def test_without_a_linger_the_next_call_leaves_when_the_last_is_answered() -> None:
    _issued, batches = _stream(0.0)
    assert [i for b in batches for i in b] == list(range(200))
    assert len(batches) > 0.4 / LINGER_S + 3  # one call per round trip: many small batches


def test_delivered_waits_until_everything_added_has_been_answered() -> None:
    """What advance_time waits on before it returns (its runs' events at the broker)."""
    answered: list[int] = []

    async def main() -> tuple[bool, list[int], bool, bool]:
        async def answer(batch: list[int]) -> None:
            await asyncio.sleep(0.01)
            answered.extend(batch)

        box: Outbox[int] = Outbox(lambda b: asyncio.ensure_future(answer(b)), "test", eager=False,
                                  linger_s=LINGER_S)
        idle = await box.delivered(0.0)  # nothing added: delivered at once
        box.add([1, 2])
        asyncio.get_running_loop().call_later(LINGER_S + 0.005, box.add, [3])  # added while the first call is out
        ok = await box.delivered(5.0)
        snapshot = list(answered)
        box.add([4])
        short = await box.delivered(0.001)  # bounded: a lingering item is not delivered within 1 ms
        return idle, snapshot, ok, short

    idle, snapshot, ok, short = asyncio.run(main())
    assert idle and ok and snapshot == [1, 2, 3] and not short
