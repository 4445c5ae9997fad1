"""One run's progress reports as events (kmpray/progress.py): a burst passes, a flood is
thinned to one per interval with the newest winning, the last report always goes, in
order, from the loop or a worker's thread. A fake clock; the loop's timers run for real
(intervals of a few ms) but every assertion waits on the throttle, never on a sleep."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from kmpray.config import EngineConfig
from kmpray.progress import LazyThrottle, ProgressThrottle


def on_a_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _throttle(burst: int, interval_ms: int) -> tuple[ProgressThrottle, list[tuple[int, Any]], Clock]:
    sent: list[tuple[int, Any]] = []
    clock = Clock()
    loop = asyncio.get_running_loop()
    return ProgressThrottle(lambda p, m: sent.append((p, m)), loop, burst, interval_ms, clock), sent, clock


async def _until(cond: Any) -> None:
    async with asyncio.timeout(5):
        while not cond():
            await asyncio.sleep(0.001)


@on_a_loop
async def test_a_burst_passes_at_once_and_a_flood_keeps_the_newest_then_the_last() -> None:
    t, sent, clock = _throttle(burst=3, interval_ms=10_000)  # no timer fires during the test
    for pct in range(100):
        t.offer(pct, f"m{pct}")
    assert sent == [(0, "m0"), (1, "m1"), (2, "m2")]  # the burst; 99 is held, 3..98 replaced
    assert (t.passed, t.replaced) == (3, 96)
    t.close()
    assert sent[-1] == (99, "m99") and len(sent) == 4
    t.offer(100, "after")  # a run that ended (a timed-out thread reporting on): not its events
    assert len(sent) == 4


@on_a_loop
async def test_the_held_report_goes_when_its_token_comes_without_another_report() -> None:
    t, sent, clock = _throttle(burst=1, interval_ms=5)
    t.offer(10, None)
    t.offer(20, None)
    t.offer(30, None)
    assert sent == [(10, None)]
    clock.now = 0.005  # a token's worth of time: the timer sends the newest held one
    await _until(lambda: len(sent) == 2)
    assert sent == [(10, None), (30, None)]
    t.close()
    assert len(sent) == 2  # nothing held any more: close adds nothing


@on_a_loop
async def test_tokens_refill_over_time_up_to_the_burst() -> None:
    t, sent, clock = _throttle(burst=2, interval_ms=100)
    t.offer(1, None)
    t.offer(2, None)
    clock.now = 10.0  # long quiet: two tokens back, not a hundred
    for pct in (3, 4, 5):
        t.offer(pct, None)
    assert [p for p, _ in sent] == [1, 2, 3, 4]
    t.close(flush=False)  # a cancelled run: what was held is dropped
    assert [p for p, _ in sent] == [1, 2, 3, 4]


@on_a_loop
async def test_interval_zero_lets_every_report_through() -> None:
    t, sent, _ = _throttle(burst=1, interval_ms=0)
    for pct in range(50):
        t.offer(pct, None)
    assert [p for p, _ in sent] == list(range(50))


@on_a_loop
async def test_reports_from_a_worker_thread_arrive_on_the_loop_in_order() -> None:
    loop = asyncio.get_running_loop()
    sent: list[tuple[int, str | None, bool]] = []
    on_loop = threading.get_ident()
    t = ProgressThrottle(lambda p, m: sent.append((p, m, threading.get_ident() == on_loop)), loop, 5, 1)

    def worker() -> None:
        for pct in range(101):
            t.offer(pct, None)

    await asyncio.to_thread(worker)
    t.close()  # the run ended: the newest report (100) goes now if it was held
    await _until(lambda: sent and sent[-1][0] == 100)
    pcts = [p for p, _, _ in sent]
    assert pcts == sorted(pcts) and len(set(pcts)) == len(pcts)  # in order, none twice
    assert all(here for _, _, here in sent)  # send always runs on the loop
    assert 5 <= len(pcts) <= 101


@on_a_loop
async def test_a_lazy_throttle_is_made_at_the_first_report_and_only_then() -> None:
    made: list[tuple[ProgressThrottle, list[tuple[int, Any]], Clock]] = []

    def make() -> ProgressThrottle:
        made.append(_throttle(burst=1, interval_ms=10_000))
        return made[-1][0]

    quiet = LazyThrottle(make)
    quiet.close()
    quiet.offer(50, "after the end")  # a timed-out thread reporting on: dropped, nothing made
    assert made == []

    talking = LazyThrottle(make)
    talking.offer(10, "a")
    talking.offer(20, "b")  # held: the burst of 1 is spent
    assert len(made) == 1
    real, sent, _clock = made[0]
    assert sent == [(10, "a")] and real.replaced == 0
    talking.close()  # the held report goes before the run's result
    assert sent == [(10, "a"), (20, "b")]
    talking.offer(30, "after")
    assert sent == [(10, "a"), (20, "b")] and len(made) == 1


def _close_while_a_thread_first_reports() -> tuple[list[int], list[int]]:
    made: list[int] = []
    sent: list[int] = []

    class Real:
        def offer(self, pct: int, message: str | None) -> None:
            sent.append(pct)

        def close(self, flush: bool = True) -> None:
            made.append(-1)

    def make() -> Any:
        made.append(1)
        return Real()

    lazy = LazyThrottle(make)
    t = threading.Thread(target=lazy.offer, args=(1, None))
    t.start()
    lazy.close()
    t.join(5)
    return made, sent


def test_a_lazy_throttle_closed_while_a_thread_first_reports_makes_one_or_none() -> None:
    for _ in range(200):
        # Either the report came first (made, sent, then closed) or the close did (nothing).
        assert _close_while_a_thread_first_reports() in (([1, -1], [1]), ([], []))


def test_config_defaults_and_bounds() -> None:
    config = EngineConfig()
    assert (config.progress_burst, config.progress_interval_ms) == (20, 100)
    with pytest.raises(ValueError, match="progress_burst"):
        EngineConfig(progress_burst=0)
    with pytest.raises(ValueError, match="progress_interval_ms"):
        EngineConfig(progress_interval_ms=-1)


def test_report_progress_may_be_awaited_or_called() -> None:
    """``await ctx.report_progress(50)`` (how KMP's suspend setProgress reads) raised
    TypeError on the None it returned, and the run was retried for it."""
    from kmpray.worker import WorkerContext

    got: list[tuple[int, str | None]] = []
    ctx = WorkerContext("t", 1, progress_sink=lambda pct, msg: got.append((pct, msg)))

    async def run() -> Any:
        ctx.report_progress(10)
        return await ctx.report_progress(20, "half")

    assert asyncio.run(run()) is None
    assert got == [(10, None), (20, "half")]
    with pytest.raises(ValueError, match="0..100"):
        ctx.report_progress(101)


def test_report_progress_takes_any_number_in_range_as_an_int() -> None:
    """``ctx.report_progress(i / n * 100)`` or a numpy integer failed the whole run with
    ValueError ("must be an int"): any real number in 0..100 is taken, truncated (99.9 is
    not yet done); NaN, out of range, text, bools and None still raise."""
    import numpy as np

    from kmpray.worker import WorkerContext

    got: list[int] = []
    ctx = WorkerContext("t", 1, progress_sink=lambda pct, msg: got.append(pct))
    for pct in (12.5, np.int64(40), np.float32(99.9), 0, 100):
        ctx.report_progress(pct)
    assert got == [12, 40, 99, 0, 100] and {type(p) for p in got} == {int}
    for bad in (float("nan"), 100.5, -0.1, "5", True, None):
        with pytest.raises(ValueError, match=r"pct must be a number in 0\.\.100, got"):
            ctx.report_progress(bad)  # type: ignore[arg-type]
    assert len(got) == 5
