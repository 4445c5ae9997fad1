"""The load generator's arithmetic, kept apart from Ray so it is tested on its own: the
operation mix, rate profiles and the schedule of intended send times they give, the
split of that schedule over load clients, latency summaries (exact: every sample is kept
and merged, so the tail of N clients is the tail of their union), the per-second
timeline, the "is the generator itself the bottleneck?" verdict, and the knee search.

Corrected latency counts from an operation's *intended* send time, uncorrected from the
moment it actually left (wrk2's distinction): an engine stall delays every send behind
it, and only the corrected figure shows that (no coordinated omission).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .common import cdf as percentile_points

KINDS = ("one-time", "chain", "heavy", "exact", "periodic", "gated")
EXACT_LEAD_MS = 200
KIND_HELP = {
    "one-time": "OneTime task: latency to its worker's start",
    "chain": "two-step chain, the first step's Success.data passed to the second: to the first step's start",
    "heavy": "OneTime task with is_heavy_task: to its heavy worker's start",
    "exact": f"Exact timer due {EXACT_LEAD_MS} ms after its intended send: start lateness past that time",
    "periodic": "Periodic (15 min): to its first run's start (cancelled at the end of the run)",
    "gated": "OneTime behind constraints every node meets (storage and battery not low): through the gate",
}
ACHIEVED_SHARE = 0.95  # below this share of the requested rate, a run (or trial) falls short


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        kind, _, weight = part.strip().partition(":")
        if kind not in KINDS:
            raise argparse.ArgumentTypeError(f"--mix: unknown kind {kind!r} (one of {', '.join(KINDS)})")
        try:
            w = float(weight or "1")
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--mix: weight of {kind!r} is not a number: {weight!r}"
            ) from None
        if not math.isfinite(w) or w < 0:
            raise argparse.ArgumentTypeError(f"--mix: weight of {kind!r} must be >= 0, got {weight!r}")
        mix[kind] = w
    if sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError("--mix: weights must add up to more than 0")
    return mix


# ------------------------------------------------------------------ profiles
@dataclass(frozen=True)
class Profile:
    """Requested rate over time: constant, steps, or a linear ramp."""

    kind: str  # "constant" | "step" | "ramp"
    rates: tuple[float, ...]  # constant: (r,); step: each level; ramp: (from, to)
    duration_s: float

    def rate_at(self, t: float) -> float:
        if self.kind == "constant":
            return self.rates[0]
        if self.kind == "step":
            per = self.duration_s / len(self.rates)
            return self.rates[min(int(t // per), len(self.rates) - 1)]
        a, b = self.rates
        return a + (b - a) * min(max(t / self.duration_s, 0.0), 1.0)

    def describe(self) -> str:
        if self.kind == "constant":
            return f"constant {self.rates[0]:g}/s for {self.duration_s:g} s"
        if self.kind == "step":
            levels = ",".join(f"{r:g}" for r in self.rates)
            return f"step {levels}/s, {self.duration_s / len(self.rates):g} s each"
        return f"ramp {self.rates[0]:g}..{self.rates[1]:g}/s over {self.duration_s:g} s"


_DURATION = r"(\d+(?:\.\d+)?)s"


def parse_profile(text: str, rate: float | None, duration_s: float) -> Profile:
    """``constant`` (with --rate and --duration), ``step:100,200,400/10s`` (each level for
    10 s), ``ramp:100..5000/60s``. A profile that names its length overrides --duration."""
    text = text.strip()
    if text == "constant":
        if rate is None or not rate > 0:
            raise argparse.ArgumentTypeError("--profile constant needs --rate > 0")
        return Profile("constant", (float(rate),), duration_s)
    if m := re.fullmatch(r"step:([\d.,]+)/" + _DURATION, text):
        try:
            levels = tuple(float(x) for x in m.group(1).split(",") if x)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--profile: bad step levels in {text!r}") from None
        if not levels or any(not r > 0 for r in levels):
            raise argparse.ArgumentTypeError(f"--profile: step levels must be > 0 in {text!r}")
        return Profile("step", levels, float(m.group(2)) * len(levels))
    if m := re.fullmatch(r"ramp:(\d+(?:\.\d+)?)\.\.(\d+(?:\.\d+)?)/" + _DURATION, text):
        a, b, d = float(m.group(1)), float(m.group(2)), float(m.group(3))
        if not (a >= 0 and b > 0 and d > 0):
            raise argparse.ArgumentTypeError(
                f"--profile: ramp needs rates >= 0 (end > 0) and a length > 0: {text!r}"
            )
        return Profile("ramp", (a, b), d)
    raise argparse.ArgumentTypeError(
        f"--profile: {text!r} is not constant, step:R1,R2,.../Ns or ramp:FROM..TO/Ns"
    )


def intended_times(profile: Profile, step_s: float = 0.0005) -> np.ndarray:
    """Intended send times (s from the start) of every operation: the k-th is sent when
    the integral of the requested rate reaches k (so a ramp's sends grow denser)."""
    if profile.kind == "constant":
        n = int(profile.rates[0] * profile.duration_s)
        return np.arange(n, dtype=float) / profile.rates[0]
    grid = np.arange(0.0, profile.duration_s + step_s, step_s)
    rates = np.array([profile.rate_at(t) for t in grid[:-1]])
    cumulative = np.concatenate([[0.0], np.cumsum(rates * step_s)])
    n = math.floor(cumulative[-1] + 1e-9)
    return np.interp(np.arange(n, dtype=float), cumulative, grid)


def due_times(intended_ms: np.ndarray, kinds: list[str]) -> np.ndarray:
    """When each operation's work is due to start, what its start latency counts from: its
    intended send time, or for an Exact timer its due time (``EXACT_LEAD_MS`` later)."""
    return intended_ms + np.where(np.asarray(kinds) == "exact", float(EXACT_LEAD_MS), 0.0)


def so_far(started_ms: dict[int, float], due_ms: np.ndarray) -> tuple[float, float]:
    """The live line's corrected start p50 and p99 over the operations seen starting so
    far (index -> start time), each counted as the final figures count it (``due_times``).

    ``started_ms`` grows in the event reader's thread while this runs: it is read once, by
    ``dict.copy`` (one C call, which no other thread interrupts). Reading its keys and then
    its values found one more value than keys at 14,000/s and ended the run."""
    started = started_ms.copy()
    if not started:
        return math.nan, math.nan
    idx = np.fromiter(started.keys(), dtype=int, count=len(started))
    lat = np.fromiter(started.values(), dtype=float, count=len(started)) - due_ms[idx]
    p50, p99 = np.percentile(lat, [50, 99])
    return float(p50), float(p99)


def split(n: int, clients: int) -> list[np.ndarray]:
    """Operation indexes per client, interleaved: each client gets an even share of every
    part of the profile (not one client the ramp's start and another its end)."""
    return [np.arange(c, n, clients) for c in range(clients)]


def choose_kinds(mix: dict[str, float], n: int, seed: int = 7) -> list[str]:
    kinds = list(mix)
    weights = np.array([mix[k] for k in kinds], dtype=float)
    picks = np.random.default_rng(seed).choice(len(kinds), size=n, p=weights / weights.sum())
    return [kinds[i] for i in picks]


# ------------------------------------------------------------------ summaries
def summary(samples_ms: np.ndarray | list[float]) -> dict[str, float | int]:
    arr = np.asarray(samples_ms, dtype=float)
    if arr.size == 0:
        return {"n": 0}
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {
        "n": int(arr.size),
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(arr.max()), 3),
    }


@dataclass
class Samples:
    """Every operation of a run, merged from all clients (columns, one row per operation)."""

    kind: list[str] = field(default_factory=list)
    intended_ms: list[float] = field(default_factory=list)  # wall clock, ms
    sent_ms: list[float] = field(default_factory=list)  # NaN: never sent (deadline passed)
    acked_ms: list[float] = field(default_factory=list)  # NaN: no answer, or an error
    started_ms: list[float] = field(default_factory=list)  # NaN: no start seen
    due_ms: list[float] = field(default_factory=list)  # when its work was due to start
    capped: list[bool] = field(default_factory=list)  # its send waited on --max-in-flight
    error: list[str] = field(default_factory=list)  # "" when accepted

    def extend(self, rows: dict[str, list[Any]]) -> None:
        for name in ("kind", "intended_ms", "sent_ms", "acked_ms", "started_ms", "due_ms", "capped", "error"):
            getattr(self, name).extend(rows[name])

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            name: np.asarray(getattr(self, name), dtype=float)
            for name in ("intended_ms", "sent_ms", "acked_ms", "started_ms", "due_ms")
        }

    def start_latency(self) -> tuple[np.ndarray, np.ndarray]:
        """Per operation, enqueue -> worker start: corrected (from the intended send time)
        and uncorrected (from the actual send); an Exact timer counts from its due time in
        both. NaN for an operation never sent or never seen starting."""
        a = self.arrays()
        timer = a["due_ms"] > a["intended_ms"]  # Exact: measured against its due time
        seen = ~np.isnan(a["started_ms"]) & ~np.isnan(a["sent_ms"])
        corrected = a["started_ms"] - np.where(timer, a["due_ms"], a["intended_ms"])
        uncorrected = a["started_ms"] - np.where(timer, a["due_ms"], a["sent_ms"])
        return np.where(seen, corrected, np.nan), np.where(seen, uncorrected, np.nan)


def latencies(s: Samples) -> dict[str, Any]:
    """Per operation kind: the start latency (intended send -> worker start, or the
    lateness past the due time for Exact timers) corrected and uncorrected, and the same
    for the enqueue acknowledgement."""
    a = s.arrays()
    corrected, uncorrected = s.start_latency()
    kinds = np.asarray(s.kind)
    out: dict[str, Any] = {"start": {}, "ack": {}}
    for kind in sorted(set(s.kind)):
        m = kinds == kind
        ok_ack = m & ~np.isnan(a["acked_ms"])
        out["ack"][kind] = {
            "corrected": summary(a["acked_ms"][ok_ack] - a["intended_ms"][ok_ack]),
            "uncorrected": summary(a["acked_ms"][ok_ack] - a["sent_ms"][ok_ack]),
        }
        ok = m & ~np.isnan(corrected)
        out["start"][kind] = {"corrected": summary(corrected[ok]), "uncorrected": summary(uncorrected[ok])}
    return out


CDF_LEVELS = [round(q, 3) for q in np.linspace(0.0, 1.0, 101)]


def cdf(s: Samples) -> dict[str, dict[str, list[float]]]:
    """Per kind, the start latency at each CDF level (0 %, 1 %, ..., 100 %), corrected and
    uncorrected: enough to draw the curve, small enough for the JSON."""
    corrected, uncorrected = s.start_latency()
    kinds = np.asarray(s.kind)
    out: dict[str, dict[str, list[float]]] = {}
    for kind in sorted(set(s.kind)):
        ok = (kinds == kind) & ~np.isnan(corrected)
        if not ok.any():
            continue
        out[kind] = {which: percentile_points(x[ok]) for which, x in (("corrected", corrected),
                                                                        ("uncorrected", uncorrected))}
    return out


def timeline(s: Samples, t0_ms: float, depth: list[tuple[float, int]]) -> list[dict[str, Any]]:
    """One row per second of the run (by intended time): requested, sent, acknowledged
    (by the time they were acknowledged), queue depth sampled then, and the corrected
    start latency p50/p99 of the operations due that second."""
    a = s.arrays()
    if not len(a["intended_ms"]):
        return []
    corrected, _uncorrected = s.start_latency()
    sec = ((a["intended_ms"] - t0_ms) // 1000).astype(int)
    acked_sec = (a["acked_ms"] - t0_ms) // 1000
    last = int(max(sec.max(), np.nanmax(acked_sec) if np.any(~np.isnan(acked_sec)) else 0))
    depth_at = {int(t): d for t, d in depth}
    rows = []
    for t in range(last + 1):
        m = sec == t
        lat = corrected[m & ~np.isnan(corrected)]
        p50, p99 = np.percentile(lat, [50, 99]) if lat.size else (math.nan, math.nan)
        rows.append(
            {
                "t_s": t,
                "requested": int(m.sum()),
                "sent": int((m & ~np.isnan(a["sent_ms"])).sum()),
                "acknowledged": int((acked_sec == t).sum()),
                "queue_depth": depth_at.get(t),
                "start_p50_ms": None if math.isnan(p50) else round(float(p50), 2),
                "start_p99_ms": None if math.isnan(p99) else round(float(p99), 2),
            }
        )
    return rows


def achieved_rate(s: Samples, t0_ms: float, duration_s: float, column: str = "started_ms") -> float:
    """Operations per second that the engine carried through: started (default) or only
    accepted (``acked_ms``), over the requested duration or longer if they kept coming
    after it. Counting starts, an engine that accepts at the requested rate but whose
    queue grows falls short, as it should. (An Exact timer counts at its due time.)"""
    a = s.arrays()
    # when each counts: its answer, or its start less any wait for a timer's due time
    at = a["intended_ms"] + s.start_latency()[0] if column == "started_ms" else a[column]
    ok = ~np.isnan(at)
    if not ok.any():
        return 0.0
    span_s = max(duration_s, (float(at[ok].max()) - t0_ms) / 1000)
    return float(ok.sum()) / span_s if span_s > 0 else 0.0


def late_share(s: Samples, late_ms: float = 10.0) -> float:
    """Share of the sends that left more than ``late_ms`` after their intended time
    although there was room in flight: the generator's own lag, not the engine's."""
    a = s.arrays()
    free = ~np.asarray(s.capped, dtype=bool) & ~np.isnan(a["sent_ms"])
    if not free.any():
        return 0.0
    return float(((a["sent_ms"][free] - a["intended_ms"][free]) > late_ms).sum()) / float(free.sum())


def generator_bound(
    requested: float, achieved: float, capped_share: float, late: float, median_depth: float, executors: int
) -> tuple[bool, str]:
    """Whether the generator, not the engine, held the rate down. The generator is the
    bottleneck when its sends left late although --max-in-flight had room, while the
    engine's queue stayed near empty; otherwise a short rate is the engine's (its answers
    were slow, so sends waited on --max-in-flight, or its queue backed up)."""
    if achieved >= ACHIEVED_SHARE * requested:
        return False, "achieved the requested rate"
    near_empty = median_depth <= 2 * max(executors, 1)
    if late > 0.05 and near_empty:
        return True, (
            f"generator-bound: {late:.0%} of sends left late with room in flight while the engine's "
            "queue stayed near empty: add --clients or CPUs for the generator"
        )
    if capped_share > 0.05:
        return False, f"engine-bound: {capped_share:.0%} of sends waited on --max-in-flight (slow answers)"
    if not near_empty:
        return False, f"engine-bound: its queue backed up (median depth {median_depth:g})"
    return False, "engine-bound: its answers came slowly (see ack_latency_ms)"


# ------------------------------------------------------------------ the knee
@dataclass(frozen=True)
class Trial:
    rate: float
    achieved: float
    p99_ms: float

    def passes(self, slo_p99_ms: float) -> bool:
        return self.achieved >= ACHIEVED_SHARE * self.rate and self.p99_ms <= slo_p99_ms


def find_max(
    trial: Callable[[float], Trial], start: float, slo_p99_ms: float, *, ceiling: float = 1e6, refine: int = 4
) -> tuple[float | None, list[Trial]]:
    """The highest rate that passes (achieved >= 95 % of requested and corrected p99 <=
    the SLO): double from ``start`` until a trial fails twice in a row at one rate, then
    bisect ``refine`` times between the last pass and that failure. Returns (best rate or
    None, every trial).

    Doubling, one failed trial would halve the answer: on this VM a single 5 s trial's
    p99 can spike past the SLO far below the knee (session 34: 1,600/s failed at 121.6 ms
    and the search ended at 1,550/s, where the same engine passed 3,100/s in the next
    run), so a failure there is tried once more before the search acts on it. Bisecting,
    a stray failure costs at most half of what is left to refine: not repeated."""
    curve: list[Trial] = []
    lo: float | None = None
    hi: float | None = None
    rate = start
    while rate <= ceiling:
        t = trial(rate)
        curve.append(t)
        if not t.passes(slo_p99_ms):
            again = trial(rate)
            curve.append(again)
            if not again.passes(slo_p99_ms):
                hi = rate
                break
        lo, rate = rate, rate * 2
    if hi is None:
        return lo, curve
    if lo is None:  # the first rate failed: halve down to a pass, a few times at most
        rate = start / 2
        for _ in range(refine):
            t = trial(rate)
            curve.append(t)
            if t.passes(slo_p99_ms):
                lo = rate
                break
            hi, rate = rate, rate / 2
        if lo is None:
            return None, curve
    for _ in range(refine):
        mid = (lo + hi) / 2
        t = trial(mid)
        curve.append(t)
        if t.passes(slo_p99_ms):
            lo = mid
        else:
            hi = mid
    return lo, curve


def rows_before(rows: dict[str, list[Any]], at_ms: float) -> dict[str, list[Any]]:
    """A client's rows of the operations intended before ``at_ms`` only (a run stopped
    there by Ctrl-C: what was due after it was never meant to be sent)."""
    keep = [j for j, t in enumerate(rows["intended_ms"]) if t < at_ms]
    return {name: [column[j] for j in keep] for name, column in rows.items()}


def live_ms(value: float) -> str:
    """A live latency, or a dash before any start was seen (not "nan")."""
    return f"{value:7.1f}" if value == value else f"{'-':>7}"


def shown_rate(per_s: float) -> str:
    """A rate as the summary shows it: whole numbers, but not 0/s for --rate 0.5."""
    return f"{per_s:,.0f}" if per_s >= 10 else f"{per_s:.2g}"
