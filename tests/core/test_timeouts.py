"""A caller's ``timeout_s`` is None or a number of seconds (kmpray/clock.py
``deadline_after``): NaN compares false with every time, so ``wait(id, timeout_s=nan)``
waited for good (the tour's call was killed after 112 s) and ``Subscription.get`` polled in
a loop; ``timeout_s="5"`` raised ``unsupported operand type(s) for +``. Each now raises
naming the parameter before anything is asked of the engine (the handles here fail the
test if anything reaches them)."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import numpy as np
import pytest

from kmpray.client.subscription import Subscription
from kmpray.clock import deadline_after

from .test_ray_shut_down import Untouchable


@pytest.mark.parametrize(("timeout_s", "error", "said"), [
    (math.nan, ValueError, "timeout_s: must be None or a number of seconds, got nan"),
    ("5", TypeError, "timeout_s: must be None or a number of seconds, got str '5'"),
    (True, TypeError, "got bool True"),
])
def test_a_timeout_that_is_not_a_number_of_seconds_is_refused_before_any_call(
        timeout_s: Any, error: type[Exception], said: str) -> None:
    from kmpray.client.facade import BackgroundTaskScheduler

    handles = {"schedulers": [Untouchable()], "broker": Untouchable(), "oracle": Untouchable()}
    described = {"virtual_time": False, "platform": "cluster", "state_dir": "/x"}
    sched = BackgroundTaskScheduler("nb", handles, described)
    with pytest.raises(error, match=said):
        sched.wait("a", timeout_s=timeout_s)
    with pytest.raises(error, match=said):
        sched.wait(["a", "b"], timeout_s=timeout_s, progress=False)
    with pytest.raises(error, match=said):
        asyncio.run(sched.wait_async("a", timeout_s=timeout_s))
    with pytest.raises(error, match=said):
        Subscription(Untouchable(), 0).get(timeout_s=timeout_s)


def test_a_timeout_in_any_real_type_is_a_deadline_and_infinity_waits_for_good() -> None:
    now = time.monotonic()
    assert deadline_after(None) is None and deadline_after(math.inf) is None
    for given in (5, 2.5, np.int64(5), np.float32(2.5)):
        at = deadline_after(given)  # type: ignore[arg-type]
        assert at is not None and 0 <= at - now - float(given) < 1
    assert deadline_after(-math.inf) == -math.inf  # already due: one look, then TimeoutError
    assert Subscription(Untouchable(), 0).get(timeout_s=-1) is None  # due before it asked anything
