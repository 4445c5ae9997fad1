"""Waiting a bounded time that counts only while this process is awake.

``cancel()`` is answered once the executors holding the cancelled runs have the cancel, or
after ``CANCEL_ACK_TIMEOUT_S`` (an executor that is down has nothing to begin). Measured
on the clock, that bound also ran out while the scheduler itself stood still (its process
stopped, a frozen VM): its cancels were not even sent, and on waking it answered at once,
before they were; an executor then began a queued run after the answer (the chaos
driver's pauses scenario, session 59). ``wait_awake`` waits in short steps and counts a
step that took far longer than asked (the process stood still) as two steps only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

#: How long each step of ``wait_awake`` waits; a step that took longer counts as two at most.
AWAKE_STEP_S = 0.25


async def wait_awake(
    aws: Iterable[asyncio.Future[Any]], timeout_s: float, step_s: float = AWAKE_STEP_S
) -> bool:
    """Until every one of ``aws`` is done, or ``timeout_s`` of this process's awake time has
    passed. Returns whether all are done."""
    pending = [a for a in aws if not a.done()]
    spent = 0.0
    while pending and spent < timeout_s:
        began = time.monotonic()
        await asyncio.wait(pending, timeout=min(step_s, timeout_s - spent))
        spent += min(time.monotonic() - began, 2 * step_s)
        pending = [a for a in pending if not a.done()]
    return not pending
