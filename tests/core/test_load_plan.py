"""The load generator's arithmetic and its open loop, without Ray (bench/load_plan.py,
bench/load_client.OpenLoop): schedules, exact merging, coordinated omission, the
generator-bound verdict and the knee search."""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from typing import Any

import numpy as np
import pytest
from kmpray.bench.load_client import OpenLoop
from kmpray.bench.load_plan import (
    EXACT_LEAD_MS,
    Profile,
    Samples,
    Trial,
    achieved_rate,
    cdf,
    choose_kinds,
    due_times,
    find_max,
    generator_bound,
    intended_times,
    late_share,
    latencies,
    parse_mix,
    parse_profile,
    so_far,
    split,
    timeline,
)


def test_profiles_parse_and_name_their_errors() -> None:
    assert parse_profile("constant", 800, 10) == Profile("constant", (800.0,), 10)
    assert parse_profile("step:100,200,400/10s", None, 99) == Profile("step", (100.0, 200.0, 400.0), 30.0)
    assert parse_profile("ramp:100..5000/60s", None, 99) == Profile("ramp", (100.0, 5000.0), 60.0)
    for bad in ("ramp:5000/60s", "step:/10s", "step:0,10/5s", "wave:1..2/3s", "ramp:1..2/0s"):
        with pytest.raises(argparse.ArgumentTypeError, match="--profile"):
            parse_profile(bad, 10, 10)
    with pytest.raises(argparse.ArgumentTypeError, match="--rate"):
        parse_profile("constant", None, 10)


def test_mix_parses_every_kind_and_rejects_unknown_ones() -> None:
    assert parse_mix("one-time:0.8,chain:0.1,heavy:0.1") == {"one-time": 0.8, "chain": 0.1, "heavy": 0.1}
    assert set(parse_mix("exact:1,periodic:1,gated:1")) == {"exact", "periodic", "gated"}
    with pytest.raises(argparse.ArgumentTypeError, match="unknown kind 'cron'"):
        parse_mix("cron:1")
    with pytest.raises(argparse.ArgumentTypeError, match="must be >= 0"):
        parse_mix("one-time:-1")
    with pytest.raises(argparse.ArgumentTypeError, match="more than 0"):
        parse_mix("one-time:0")
    kinds = choose_kinds({"one-time": 3, "chain": 1}, 4000)
    assert 0.70 < kinds.count("one-time") / 4000 < 0.80


def test_schedules_hold_the_profile_rate() -> None:
    constant = intended_times(Profile("constant", (500.0,), 4))
    assert len(constant) == 2000 and constant[1] - constant[0] == pytest.approx(0.002)
    step = intended_times(Profile("step", (100.0, 300.0), 2))
    assert len(step) == pytest.approx(400, abs=1)
    assert ((step >= 0) & (step < 1)).sum() == pytest.approx(100, abs=1)
    assert ((step >= 1) & (step < 2)).sum() == pytest.approx(300, abs=1)
    ramp = intended_times(Profile("ramp", (0.0, 1000.0), 10))
    assert len(ramp) == pytest.approx(5000, abs=2)  # the area under the ramp
    per_second = np.histogram(ramp, bins=10, range=(0, 10))[0]
    assert all(np.diff(per_second) > 0)  # the rate grows second by second
    assert per_second[-1] == pytest.approx(950, abs=5)


def test_split_interleaves_so_each_client_sees_the_whole_profile() -> None:
    parts = split(10, 3)
    assert [p.tolist() for p in parts] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))


def _samples(
    intended: list[float], sent: list[float], started: list[float], kind: str = "one-time"
) -> Samples:
    s = Samples()
    n = len(intended)
    s.extend(
        {
            "kind": [kind] * n,
            "intended_ms": intended,
            "sent_ms": sent,
            "acked_ms": [x + 1 for x in sent],
            "started_ms": started,
            "due_ms": intended,
            "capped": [False] * n,
            "error": [""] * n,
        }
    )
    return s


def test_merging_clients_keeps_the_exact_tail() -> None:
    # Two clients: one saw 99 fast starts and one slow one; the other 100 fast starts.
    a = _samples([0.0] * 100, [0.0] * 100, [1.0] * 99 + [500.0])
    b = _samples([0.0] * 100, [0.0] * 100, [2.0] * 100)
    merged = Samples()
    for part in (a, b):
        merged.extend(
            {
                k: getattr(part, k)
                for k in (
                    "kind",
                    "intended_ms",
                    "sent_ms",
                    "acked_ms",
                    "started_ms",
                    "due_ms",
                    "capped",
                    "error",
                )
            }
        )
    lat = latencies(merged)["start"]["one-time"]["corrected"]
    assert lat["n"] == 200 and lat["max"] == 500.0 and lat["p50"] == 2.0 and lat["p95"] == 2.0


def test_corrected_latency_shows_a_stall_the_uncorrected_one_hides() -> None:
    # Sends due every 10 ms; the engine stalled 300 ms, so sends 1..30 left late, all at 300.
    intended = [10.0 * i for i in range(100)]
    sent = [max(t, 300.0) if 0 < t <= 300 else t for t in intended]
    started = [x + 2 for x in sent]
    lat = latencies(_samples(intended, sent, started))["start"]["one-time"]
    assert lat["uncorrected"]["max"] == 2.0  # every send looked fast
    assert lat["corrected"]["max"] == pytest.approx(292.0)  # the one due at 10 ms waited 290 ms more
    assert lat["corrected"]["p95"] > 100
    curves = cdf(_samples(intended, sent, started))["one-time"]
    assert len(curves["corrected"]) == 101 and curves["corrected"][-1] == pytest.approx(292.0)


def test_exact_timers_are_measured_against_their_due_time() -> None:
    s = Samples()
    s.extend(
        {
            "kind": ["exact"],
            "intended_ms": [1000.0],
            "sent_ms": [1000.0],
            "acked_ms": [1003.0],
            "started_ms": [1207.0],
            "due_ms": [1200.0],
            "capped": [False],
            "error": [""],
        }
    )
    assert latencies(s)["start"]["exact"]["corrected"]["p50"] == 7.0


def test_the_live_line_counts_each_kind_as_the_final_figures_do() -> None:
    # A mix with Exact timers: the live line once counted them from their send, 200 ms
    # before they are due, so its p99 read ~200 ms while every kind's final p99 was tens.
    kinds = ["one-time", "exact", "chain", "exact", "heavy"] * 20
    intended = 1000.0 + 10.0 * np.arange(len(kinds))
    due = due_times(intended, kinds)
    started = {i: due[i] + 4.0 + (i % 3) for i in range(len(kinds))}  # 4-6 ms after due
    s = Samples()
    s.extend({"kind": kinds, "intended_ms": intended.tolist(), "sent_ms": intended.tolist(),
              "acked_ms": (intended + 1).tolist(), "started_ms": [started[i] for i in range(len(kinds))],
              "due_ms": due.tolist(), "capped": [False] * len(kinds), "error": [""] * len(kinds)})
    corrected, _ = s.start_latency()
    p50, p99 = so_far(started, due)
    assert (p50, p99) == (5.0, 6.0) == tuple(np.percentile(corrected, [50, 99]))
    assert max(latencies(s)["start"][k]["corrected"]["max"] for k in set(kinds)) == 6.0
    assert so_far({}, due)[0] != so_far({}, due)[0]  # NaN before any start


def test_the_live_line_reads_the_starts_once_while_they_grow() -> None:
    # The event reader's thread adds starts while the live line reads them: once the keys
    # were read, then the values, one more of them than keys, and the run ended with a
    # broadcast error (at 14,000/s, 36 s into a 40 s run).
    class Growing(dict[int, float]):
        def keys(self) -> Any:
            self[len(self)] = 0.0  # a start arriving between two reads
            return super().keys()

        def values(self) -> Any:
            self[len(self)] = 0.0
            return super().values()

    due = np.zeros(100)
    started = Growing({i: 5.0 for i in range(10)})
    assert so_far(started, due) == (5.0, 5.0)
    assert len(started) == 10  # read by one copy, not by its keys and its values


def test_timeline_and_achieved_rate() -> None:
    t0 = 1_000_000.0
    intended = [t0 + 10.0 * i for i in range(200)]  # 100/s for 2 s
    s = _samples(intended, intended, [x + 5 for x in intended])
    rows = timeline(s, t0, [(0, 3), (1, 4)])
    assert [r["requested"] for r in rows[:2]] == [100, 100]
    assert rows[0]["queue_depth"] == 3 and rows[0]["start_p99_ms"] == pytest.approx(5.0)
    assert achieved_rate(s, t0, 2.0) == pytest.approx(100, rel=0.01)
    s.acked_ms[150:] = [math.nan] * 50  # 50 unanswered
    assert achieved_rate(s, t0, 2.0, "acked_ms") == pytest.approx(75, rel=0.01)
    # Accepted on time, but the engine started them ever later (its queue grew): the
    # started rate falls short although every call was answered at once.
    slow = _samples(intended, intended, [x + 5 + 4.0 * i for i, x in enumerate(intended)])
    assert achieved_rate(slow, t0, 2.0, "acked_ms") == pytest.approx(100, rel=0.01)
    assert achieved_rate(slow, t0, 2.0) == pytest.approx(200 / 2.8, rel=0.02)


def test_generator_bound_only_when_its_own_sends_lag_and_the_engine_idles() -> None:
    assert generator_bound(1000, 990, 0.0, 0.5, 0, 2) == (False, "achieved the requested rate")
    bound, why = generator_bound(1000, 500, 0.0, 0.40, 1, 2)
    assert bound and "generator-bound: 40% of sends left late" in why
    bound, why = generator_bound(1000, 500, 0.30, 0.0, 1, 2)
    assert not bound and "max-in-flight" in why
    bound, why = generator_bound(1000, 500, 0.0, 0.40, 400, 2)  # late, but the engine backed up too
    assert not bound and "queue backed up" in why
    bound, why = generator_bound(1000, 500, 0.0, 0.0, 1, 2)
    assert not bound and "answers came slowly" in why


def test_late_share_counts_only_sends_that_had_room() -> None:
    s = _samples([0.0, 0.0, 0.0, 0.0], [0.0, 50.0, 50.0, 5.0], [1.0] * 4)
    s.capped[2] = True  # waited on the cap: the engine's doing
    assert late_share(s) == pytest.approx(1 / 3)


def test_find_max_doubles_then_bisects_to_the_knee() -> None:
    asked: list[float] = []

    def trial(rate: float) -> Trial:  # an engine that holds 1,300/s at 5 ms, then falls over
        asked.append(rate)
        return Trial(rate, min(rate, 1300.0), 5.0 if rate <= 1300 else 80.0)

    best, curve = find_max(trial, 200, slo_p99_ms=20, refine=5)
    assert asked[:5] == [200, 400, 800, 1600, 1600]  # a failure while doubling is tried again
    assert best is not None and 1250 <= best <= 1300
    assert len(curve) == 5 + 5  # bisecting, a failure is not repeated
    assert find_max(lambda r: Trial(r, r / 2, 1.0), 100, 20, refine=2)[0] is None  # never holds its rate


def test_find_max_does_not_stop_doubling_at_one_stray_failed_trial() -> None:
    asked: list[float] = []

    def trial(rate: float) -> Trial:  # holds 3,000/s at 5 ms; the first 1,600/s trial spikes
        asked.append(rate)
        stray = rate == 1600 and asked.count(1600) == 1
        return Trial(rate, min(rate, 3000.0), 150.0 if stray or rate > 3000 else 5.0)

    best, _curve = find_max(trial, 200, slo_p99_ms=100, refine=4)
    assert asked[:7] == [200, 400, 800, 1600, 1600, 3200, 3200]
    assert best is not None and 2800 <= best <= 3000  # not 1,550: the stray trial was outvoted


def test_open_loop_never_waits_on_answers_and_counts_from_intended_times() -> None:
    """A slow engine (every answer takes 50 ms) does not slow the sends; the in-flight cap
    does, and those sends are marked; a deadline leaves the rest unsent."""

    async def main() -> tuple[dict[str, list[object]], dict[str, list[object]], dict[str, list[object]]]:
        async def slow(kinds: list[str], indexes: list[int], intended: list[float]) -> list[tuple[str, float]]:
            await asyncio.sleep(0.05)
            return [("" if i != 3 else "REJECTED_INVALID_PARAMS", t) for i, t in zip(indexes, intended, strict=True)]

        # freeze_gc, as the LoadClient runs it: after the suite's earlier tests (matplotlib's
        # among them) one full collection mid-run held a send 25 ms+ once. It collects once
        # before the first send, which in this process, after hundreds of tests, took over
        # 50 ms on a slow day (every send then left ~100 ms late, catching up at once): the
        # schedule starts well after it.
        now = time.time() * 1000 + 500
        open_loop = OpenLoop(slow, max_in_flight=100, freeze_gc=True)
        intended = [now + 2.0 * i for i in range(50)]  # 500/s
        free = await open_loop.run(list(range(50)), ["one-time"] * 50, intended, now + 10_000, 5)
        capped_loop = OpenLoop(slow, max_in_flight=2)
        capped = await capped_loop.run(list(range(20)), ["one-time"] * 20, intended[:20], now + 10_000, 5)
        later = time.time() * 1000 + 20
        cut = await OpenLoop(slow, 100).run(
            list(range(10)), ["one-time"] * 10, [later + 30.0 * i for i in range(10)], later + 100, 5
        )
        return free, capped, cut

    free, capped, cut = asyncio.run(main())
    lag = np.asarray(free["sent_ms"], dtype=float) - np.asarray(free["intended_ms"], dtype=float)
    # Sent on schedule although each answer took 50 ms: sends that waited on answers would
    # fall ~48 ms further behind per operation (2.4 s by the last); the bound leaves room for
    # a loaded 2-core machine's scheduling.
    assert lag.max() < 100
    assert lag.min() >= 0  # and never ahead of it (corrected >= uncorrected, each operation)
    assert not any(free["capped"]) and free["error"][3] == "REJECTED_INVALID_PARAMS"
    assert all(not math.isnan(x) for i, x in enumerate(free["acked_ms"]) if i != 3)  # type: ignore[arg-type]
    assert sum(bool(c) for c in capped["capped"]) >= 5  # two in flight at most: sends waited
    clag = np.asarray(capped["sent_ms"], dtype=float) - np.asarray(capped["intended_ms"], dtype=float)
    assert clag.max() > 200  # ...and left late, which only the corrected latency shows
    assert cut["error"].count("unsent") == 6 and cut["error"][:3] == [""] * 3


def test_the_pacing_never_asks_for_a_wait_shorter_than_a_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop (Ray runs the LoadClient actors on it when it is installed) rounds a
    sub-millisecond timer down to 0, so at thousands of sends a second the pacing spun
    until each send was due: 167 µs of CPU an operation against 15 on asyncio's loop."""
    from kmpray.timing import MIN_TIMER_S

    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float, result: object = None) -> object:
        asked.append(delay)
        return await real_sleep(delay, result)

    async def answer(kinds: list[str], indexes: list[int], intended: list[float]) -> list[tuple[str, float]]:
        return [("", t) for t in intended]

    async def main() -> dict[str, list[object]]:
        now = time.time() * 1000 + 100
        intended = [now + 0.25 * i for i in range(400)]  # 4,000/s: 0.25 ms apart
        monkeypatch.setattr(asyncio, "sleep", sleep)
        try:
            return await OpenLoop(answer, 1000).run(list(range(400)), ["one-time"] * 400, intended,
                                                    now + 5_000, 5)
        finally:
            monkeypatch.undo()

    rows = asyncio.run(main())
    assert rows["error"] == [""] * 400
    assert asked and min(asked) >= MIN_TIMER_S == 0.001
    assert len(asked) < 400  # about one wait per millisecond of the schedule, not one or more per send


def test_plots_are_written_next_to_the_json(tmp_path: object) -> None:
    from pathlib import Path

    from kmpray.bench.load_plots import plot

    t0 = 1_000_000.0
    intended = [t0 + 10.0 * i for i in range(300)]
    s = _samples(intended, intended, [x + 5 + (i % 7) for i, x in enumerate(intended)])
    result = {
        "profile": "constant 100/s for 3 s",
        "timeline": timeline(s, t0, [(0, 1), (1, 2), (2, 0)]),
        "cdf_ms": cdf(s),
        "slo_p99_ms": 50,
        "max_rate_per_s": 800,
        "curve": [
            {"rate_per_s": r, "achieved_rate_per_s": min(r, 800), "p99_ms": 5 if r <= 800 else 90}
            for r in (200, 400, 800, 1600)
        ],
    }
    out = Path(str(tmp_path)) / "load.json"
    written = plot(result, out)
    assert [p.name for p in written] == ["load-timeline.png", "load-cdf.png", "load-knee.png"]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_open_loop_coalesces_operations_due_within_the_window_but_never_chains() -> None:
    calls: list[tuple[list[str], list[int]]] = []

    async def record(kinds: list[str], indexes: list[int], intended: list[float]) -> list[tuple[str, float]]:
        calls.append((kinds, indexes))
        return [("", t) for t in intended]

    async def main() -> dict[str, list[object]]:
        now = time.time() * 1000 + 30
        intended = [now + 2.0 * i for i in range(20)]  # 500/s: five per 10 ms window
        kinds = ["one-time"] * 20
        kinds[7] = "chain"
        loop = OpenLoop(record, max_in_flight=100, window_ms=8.0)
        return await loop.run(list(range(20)), kinds, intended, now + 10_000, 5)

    rows = asyncio.run(main())
    sizes = [len(k) for k, _ in calls]
    assert sum(sizes) == 20 and max(sizes) == 5  # windows of 8 ms: 0-4, 5-9 (7 is the chain), ...
    assert (["chain"], [7]) in calls and all(len(k) == 1 for k, _ in calls if "chain" in k)
    assert [idx for _k, idx in calls if 7 not in idx][:2] == [[0, 1, 2, 3, 4], [5, 6, 8, 9]]
    assert sorted(i for _k, idx in calls for i in idx) == list(range(20))
    sent = np.asarray(rows["sent_ms"], dtype=float)
    intended_arr = np.asarray(rows["intended_ms"], dtype=float)
    assert (sent >= intended_arr - 1).all()  # nothing leaves before it is due
    assert sent[0] - intended_arr[0] >= 7  # the first of a batch waited for the last one
    with pytest.raises(ValueError, match="window_ms"):
        OpenLoop(record, 1, window_ms=-1)


def test_a_generator_process_keeps_its_collector_out_of_the_run() -> None:
    """freeze_gc (what each LoadClient actor sets): the schedule's rows are frozen and the
    cyclic collector is off while operations go out (its pauses would stall the sends and
    count against the engine), and both are as they were afterwards, even on an error."""
    import gc

    seen: list[tuple[bool, int]] = []

    async def record(kinds: list[str], indexes: list[int], intended: list[float]) -> list[tuple[str, float]]:
        seen.append((gc.isenabled(), gc.get_freeze_count()))
        return [("", t) for t in intended]

    async def boom(kinds: list[str], indexes: list[int], intended: list[float]) -> list[tuple[str, float]]:
        raise RuntimeError("engine gone")

    async def main(send: Any, freeze: bool) -> None:
        now = time.time() * 1000 + 10
        loop = OpenLoop(send, 10, freeze_gc=freeze)
        await loop.run([0, 1], ["one-time"] * 2, [now, now + 1], now + 1_000, 1)

    before = gc.get_freeze_count()
    asyncio.run(main(record, True))
    assert [enabled for enabled, _ in seen] == [False, False] and all(n > before for _, n in seen)
    assert gc.isenabled() and gc.get_freeze_count() == before
    asyncio.run(main(boom, True))  # a failing engine: answered as errors, the collector restored
    assert gc.isenabled() and gc.get_freeze_count() == before
    seen.clear()
    asyncio.run(main(record, False))  # the default (tests, a user's own loop): untouched
    assert [enabled for enabled, _ in seen] == [True, True]


def test_the_live_line_shows_a_dash_before_any_start_not_nan() -> None:
    from kmpray.bench.load_plan import live_ms as _ms

    assert _ms(math.nan) == "      -" and _ms(12.345) == "   12.3"


def test_a_ctrl_c_stops_the_sends_there_and_the_report_covers_what_ran() -> None:
    """`kmpray bench load` ended on Ctrl-C with click's "Aborted!" and no report; as k6 and
    wrk do, it now stops sending (OpenLoop.stop), lets what is in flight answer, and reports
    the operations intended before the interrupt over the time that ran."""
    from kmpray.bench.load import _result
    from kmpray.bench.load_plan import rows_before as _before

    async def echo(kinds: list[str], indexes: list[int], intended: list[float]) -> list[tuple[str, float]]:
        return [("", t) for t in intended]

    async def main() -> tuple[dict[str, list[Any]], float]:
        loop = OpenLoop(echo, 100)
        start = time.time() * 1000 + 20
        intended = [start + 40.0 * i for i in range(10)]
        run = asyncio.ensure_future(loop.run(list(range(10)), ["one-time"] * 10, intended, start + 10_000, 5))
        await asyncio.sleep((start + 130 - time.time() * 1000) / 1000)  # ops 0-3 are due by then
        stop = time.time() * 1000
        loop.stop(stop)
        return await run, stop

    rows, stop = asyncio.run(main())
    sent = [i for i, e in enumerate(rows["error"]) if not e]
    assert sent == [0, 1, 2, 3] and rows["error"][4:] == ["unsent"] * 6
    kept = _before(rows, stop)
    assert kept["index"] == [0, 1, 2, 3] and set(kept) == set(rows)
    samples = Samples()
    kept["started_ms"] = list(kept["acked_ms"])
    samples.extend(kept)
    t0 = rows["intended_ms"][0]
    ran_s = (stop - t0) / 1000
    profile = Profile("constant", (25.0,), 30.0)
    result = _result(profile, {"one-time": 1.0}, samples, t0, [], 1, 1, 100, 4, ran_s)
    assert result["duration_s"] == round(ran_s, 3) and result["operations"]["requested"] == 4
    assert result["requested_rate_per_s"] == round(4 / ran_s, 1)  # over what ran, not the 30 s asked


def test_the_engine_senders_due_times_are_due_times_rule_one_and_many() -> None:
    """``engine_send`` works each operation's due time out without numpy (most sends are one
    operation); it must stay ``due_times``' rule: an Exact timer EXACT_LEAD_MS after its
    intended send, everything else at it."""
    from kmpray.bench.load_client import engine_send

    from kmpray import ScheduleResult

    class Sched:
        def __init__(self) -> None:
            self.triggers: list[Any] = []

        async def enqueue_async(self, task_id: str, trigger: Any, worker: str,
                                constraints: Any = None) -> Any:
            self.triggers.append(trigger)
            return ScheduleResult.SUCCESS

        async def enqueue_many_async(self, items: list[dict[str, Any]]) -> list[Any]:
            self.triggers += [item["trigger"] for item in items]
            return [ScheduleResult.SUCCESS] * len(items)

    sched = Sched()
    send = engine_send(sched, "r")
    kinds, intended = ["one-time", "exact", "gated"], [1_000.5, 1_001.0, 1_002.0]
    one = asyncio.run(send(["exact"], [7], [5_000.0]))
    many = asyncio.run(send(kinds, [0, 1, 2], intended))
    assert one == [("", 5_000.0 + EXACT_LEAD_MS)]
    assert [due for _err, due in many] == due_times(np.asarray(intended), kinds).tolist()
    assert sched.triggers[0].at_epoch_millis == 5_000 + EXACT_LEAD_MS


def test_the_summary_shows_a_slow_rate_as_it_is() -> None:
    from kmpray.bench.load_plan import shown_rate

    assert [shown_rate(r) for r in (14_000.4, 10, 0.5, 1 / 3)] == ["14,000", "10", "0.5", "0.33"]
