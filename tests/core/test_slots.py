"""An executor's run slots (actors/slots.py): at most n at once, waiters served in arrival
order, a cancelled waiter never keeps a slot. Plain asyncio, no Ray."""

from __future__ import annotations

import asyncio

import pytest

from actors.slots import Slots


def test_slots_are_taken_at_once_while_free_and_never_more_than_n() -> None:
    slots = Slots(2)
    assert slots.take() and slots.take()
    assert not slots.take() and slots.free == 0
    slots.give()
    assert slots.free == 1 and slots.take()
    with pytest.raises(ValueError, match="at least 1"):
        Slots(0)


def test_a_slot_given_back_goes_to_the_first_waiter_not_to_a_newcomer() -> None:
    async def main() -> list[str]:
        slots = Slots(1)
        order: list[str] = []
        assert slots.take()

        async def run(name: str) -> None:
            if not slots.take():
                await slots.wait()
            order.append(name)
            await asyncio.sleep(0)
            slots.give()

        first = asyncio.ensure_future(run("first"))
        second = asyncio.ensure_future(run("second"))
        await asyncio.sleep(0)  # both wait now
        slots.give()  # handed to "first", never counted free...
        assert slots.free == 0 and not slots.take()  # ...so a newcomer cannot take it
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert slots.free == 1
        return order

    assert asyncio.run(main()) == ["first", "second"]


def test_a_cancelled_waiter_holds_no_slot_whether_or_not_one_was_handed_to_it() -> None:
    async def main() -> None:
        slots = Slots(1)
        assert slots.take()
        # Cancelled while waiting: it leaves the queue.
        waiting = asyncio.ensure_future(slots.wait())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        slots.give()
        assert slots.free == 1  # nobody left to hand it to
        # Handed a slot and cancelled before it resumed: the slot goes to the next waiter.
        assert slots.take()
        handed = asyncio.ensure_future(slots.wait())
        nxt = asyncio.ensure_future(slots.wait())
        await asyncio.sleep(0)
        slots.give()  # to "handed"...
        handed.cancel()  # ...which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await handed
        await asyncio.wait_for(nxt, 5)  # it got the slot
        assert slots.free == 0
        slots.give()
        assert slots.free == 1

    asyncio.run(main())
