"""load: an open-loop load generator for the dispatch core (wrk2's way: a fixed schedule
of intended send times, latency counted from them, so engine stalls are not hidden).

  kmpray bench load --rate 800 --duration 10 --mix one-time:0.8,chain:0.1,heavy:0.1
  kmpray bench load --profile ramp:100..3000/30s --clients 2
  kmpray bench load --find-max --slo-p99-ms 50 --trial-s 5

Sends never wait on earlier answers (at most --max-in-flight unanswered, shared by the
clients); sending stops at the deadline, then the run drains (bounded by --drain-s). The
generator runs in --clients Ray actors spread over the nodes, each with an interleaved
share of the schedule; their samples are merged exactly. Mix kinds: one-time, chain,
heavy, exact, periodic, gated (see --help-kinds). A line per second shows the run live;
the JSON (bench/results/load.json, or --json) holds the figures and the timeline.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .common import ray_up, scratch_dir, table, write
from .load_client import start_clients, task_id
from .load_engine import DEPLOYMENT, Starts, settle, warm_up
from .load_plan import (
    KIND_HELP,
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
    live_ms,
    parse_mix,
    parse_profile,
    rows_before,
    shown_rate,
    so_far,
    split,
    summary,
    timeline,
)
from .stamp import register

# Enqueue calls/s one client holds on schedule here. Session 16: one client held 9,214/s
# against the engine (the engine backed up first, at 10,000/s), and at 5,000/s and 8,000/s it
# beat two clients on the same run (p99 42 vs 74 ms, 111 vs 191 ms; 28 % vs 40 % of a core
# for the generator): its calls share messages (client/coalesce.py), so one process makes
# bigger groups and takes less CPU from the engine on a shared machine. (The old 1,000/s
# was measured against a no-op actor, one message per call, before calls shared them.)
PER_CLIENT_RATE = 8000
LEAD_S = 1.0
CAPACITY_RUNS = 3  # find-max: bulk batches whose median is the capacity the knee is set against
CAPACITY_TASKS = 5_000  # tasks in each of those batches
# The fields every result has (a single run's, and --find-max's for its best trial); see README.
RUN_FIELDS = (
    "requested_rate_per_s",
    "achieved_rate_per_s",
    "duration_s",
    "generator_bound",
    "latency_ms",
    "timeline",
    "cdf_ms",
)  # the schedule starts this long after the clients get it


def default_clients(rate: float) -> int:
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(math.ceil(rate / PER_CLIENT_RATE), cpus))


def run_once(
    sched: Any,
    namespace: str,
    state_dir: str | None,
    profile: Profile,
    mix: dict[str, float],
    *,
    clients: int,
    max_in_flight: int,
    drain_s: float,
    window_ms: float = 0.0,
    live: bool = True,
    nemesis: tuple[float, Callable[[], None]] | None = None,
    interruptible: bool = False,
) -> dict[str, Any]:
    """One run of ``profile``: returns the result dict (figures, timeline, samples).
    ``nemesis`` (at_s, action): the action runs that many seconds into the schedule (a
    scheduler kill, say: the corrected latencies show it). ``interruptible``: a Ctrl-C
    stops the sends there and the run drains and reports what it measured until then, as
    k6 and wrk do (``interrupted_at_s`` in the result); a second Ctrl-C quits at once."""
    import ray

    run = uuid.uuid4().hex[:6]
    offsets = intended_times(profile)
    n = len(offsets)
    kinds = choose_kinds(mix, n)
    handles = start_clients(clients, namespace, state_dir, run, max_in_flight, window_ms)
    starts = Starts(sched, run)
    t0 = time.time() * 1000 + LEAD_S * 1000
    intended = t0 + offsets * 1000
    due = due_times(intended, kinds)  # what the live line's latency counts from
    deadline = t0 + profile.duration_s * 1000
    if nemesis is not None:
        timer = threading.Timer(max(0.0, t0 / 1000 + nemesis[0] - time.time()), nemesis[1])
        timer.daemon = True
        timer.start()
    refs = []
    for handle, idx in zip(handles, split(n, clients), strict=True):
        refs.append(
            handle.run.remote(
                idx.tolist(), [kinds[i] for i in idx], intended[idx].tolist(), deadline, drain_s
            )
        )
    depth: list[tuple[float, int]] = []
    executors = 0
    last_acked, last_t = 0, 0.0
    pending = list(refs)

    def watch() -> None:
        nonlocal pending, executors, last_acked, last_t
        while pending:
            _done, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            if not pending:
                break
            s = sched.status()
            executors = max(executors, s["executors"])
            q = s["ready"] + s["inflight"] + s["gated"]
            t = (time.time() * 1000 - t0) / 1000
            if t < 0:
                continue
            depth.append((int(t), q))
            progress = ray.get([h.progress.remote() for h in handles], timeout=30)
            acked = sum(p["acked"] for p in progress)
            if live:
                lat = so_far(starts.at, due)
                in_flight = sum(p["in_flight"] for p in progress)
                rate = (acked - last_acked) / max(t - last_t, 0.001)
                print(
                    f"  {t:5.1f} s  acked {rate:6,.0f}/s  in flight {in_flight:5,d}"
                    f"  queue {q:6,d}  start p50 {live_ms(lat[0])} ms  p99 {live_ms(lat[1])} ms (corrected)",
                    flush=True,
                )
            last_acked, last_t = acked, t

    stopped_at: float | None = None
    while True:
        try:
            watch()
            break
        except KeyboardInterrupt:
            if not interruptible or stopped_at is not None:
                raise
            stopped_at = max(time.time() * 1000, t0)
            print(f"  interrupted at {(stopped_at - t0) / 1000:.1f} s: sending stopped; draining, then the "
                  "report (Ctrl-C again to quit at once)", flush=True)
            for h in handles:
                h.stop.remote(stopped_at)
    parts = ray.get(refs, timeout=60)
    if stopped_at is not None:  # what was due after the interrupt was never meant to be sent
        parts = [rows_before(p, stopped_at) for p in parts]
        n = sum(len(p["index"]) for p in parts)
    # Drain: wait for the start of every accepted operation that should start.
    accepted = {i for p in parts for i, e in zip(p["index"], p["error"], strict=True) if not e}
    until = time.monotonic() + drain_s
    while time.monotonic() < until and not accepted <= starts.at.keys():
        time.sleep(0.2)  # polling the event reader's progress, bounded by --drain-s
    starts.close()
    for p in parts:  # periodic work would run again in 15 min: cancel it
        for i, k, e in zip(p["index"], p["kind"], p["error"], strict=True):
            if k == "periodic" and not e:
                sched.cancel(task_id(run, i))
    for h in handles:
        ray.kill(h)
    samples = Samples()
    for p in parts:
        p["started_ms"] = [starts.at.get(i, math.nan) for i in p["index"]]
        samples.extend(p)
    ran_s = profile.duration_s if stopped_at is None else max((stopped_at - t0) / 1000, 0.001)
    result = _result(profile, mix, samples, t0, depth, executors, clients, max_in_flight, n, ran_s)
    result["batch_window_ms"] = window_ms
    if stopped_at is not None:
        result["interrupted_at_s"] = round(ran_s, 2)
    return result


def _result(
    profile: Profile,
    mix: dict[str, float],
    s: Samples,
    t0: float,
    depth: list[tuple[float, int]],
    executors: int,
    clients: int,
    max_in_flight: int,
    n: int,
    ran_s: float,  # the schedule's length, or less when interrupted
) -> dict[str, Any]:
    requested = n / ran_s
    achieved = achieved_rate(s, t0, ran_s)
    accepted = achieved_rate(s, t0, ran_s, "acked_ms")
    capped_share = sum(s.capped) / max(n, 1)
    median_depth = float(np.median([d for _t, d in depth])) if depth else 0.0
    late = late_share(s)
    bound, verdict = generator_bound(requested, achieved, capped_share, late, median_depth, executors)
    errors: dict[str, int] = {}
    for e in s.error:
        if e:
            errors[e] = errors.get(e, 0) + 1
    lat = latencies(s)
    a = s.arrays()
    all_start, _uncorrected = s.start_latency()
    return {
        "profile": profile.describe(),
        "mix": mix,
        "requested_rate_per_s": round(requested, 1),
        "achieved_rate_per_s": round(achieved, 1),  # started per second
        "accepted_rate_per_s": round(accepted, 1),
        "duration_s": round(ran_s, 3),
        "generator_bound": bound,
        "verdict": verdict,
        "clients": clients,
        "max_in_flight": max_in_flight,
        "operations": {
            "requested": n,
            "sent": int((~np.isnan(a["sent_ms"])).sum()),
            "accepted": int((~np.isnan(a["acked_ms"])).sum()),
            "started": int((~np.isnan(a["started_ms"])).sum()),
            "sends_waiting_on_max_in_flight": int(sum(s.capped)),
        },
        "errors": errors,
        "latency_ms": lat["start"],
        "start_latency_all_ms": {"corrected": summary(all_start[~np.isnan(all_start)])},
        "ack_latency_ms": lat["ack"],
        "queue_depth_median": median_depth,
        "timeline": timeline(s, t0, depth),
        "cdf_ms": cdf(s),
        "note": (
            "latency_ms: enqueue -> worker start per kind (chain: its first step; exact: lateness past "
            "its due time); corrected counts from the intended send time, uncorrected from the actual "
            "send. ack_latency_ms: the same for the enqueue call's answer."
        ),
    }


def _print(result: dict[str, Any], out: Path) -> None:
    interrupted = result.get("interrupted_at_s")
    shown = result["profile"] + ("" if interrupted is None else f" (interrupted at {interrupted:g} s)")
    rows = [
        ("profile", shown),
        (
            "rate requested / achieved",
            f"{shown_rate(result['requested_rate_per_s'])}/s / {shown_rate(result['achieved_rate_per_s'])}/s",
        ),
        ("verdict", result["verdict"]),
        ("operations", ", ".join(f"{k} {v:,}" for k, v in result["operations"].items())),
    ]
    for kind, lat in result["latency_ms"].items():
        c, u = lat["corrected"], lat["uncorrected"]
        if c.get("n"):
            rows.append(
                (
                    f"{kind}: start p50/p99/max ms",
                    f"{c['p50']}/{c['p99']}/{c['max']} corrected, "
                    f"{u['p50']}/{u['p99']}/{u['max']} uncorrected",
                )
            )
    rows += [("errors", str(result["errors"] or "none")), ("json", str(out))]
    print(table(rows))


def main(argv: list[str], prog: str = "kmpray bench load") -> int:
    import kmpray

    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=None, help="operations per second (constant profile)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load (constant profile)")
    parser.add_argument(
        "--profile",
        default="constant",
        help="constant | step:R1,R2,.../Ns (each level N s) | ramp:FROM..TO/Ns",
    )
    parser.add_argument(
        "--mix",
        type=parse_mix,
        default=parse_mix("one-time:1"),
        help="kind:weight,... (one-time, chain, heavy, exact, periodic, gated)",
    )
    parser.add_argument("--help-kinds", action="store_true", help="what each mix kind sends and measures")
    parser.add_argument(
        "--clients",
        type=int,
        default=None,
        help=f"generator actors over the nodes (default: rate / {PER_CLIENT_RATE}, at most the CPUs)",
    )
    parser.add_argument(
        "--max-in-flight", type=int, default=1000, help="unanswered operations at most (all clients)"
    )
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=0.0,
        help="coalesce operations due within this window into one enqueue_many call (default: one per call)",
    )
    parser.add_argument(
        "--drain-s", type=float, default=60.0, help="after the deadline, wait this long at most"
    )
    parser.add_argument(
        "--find-max", action="store_true", help="search the highest rate meeting --slo-p99-ms"
    )
    parser.add_argument(
        "--slo-p99-ms", type=float, default=None, help="corrected start p99 limit for --find-max"
    )
    parser.add_argument("--trial-s", type=float, default=5.0, help="--find-max: seconds per trial")
    parser.add_argument("--max-rate", type=float, default=1e6, help="--find-max: never try above this rate")
    parser.add_argument(
        "--refine", type=int, default=4, help="--find-max: bisection steps after the first failure"
    )
    parser.add_argument(
        "--plot", action="store_true", help="write PNGs next to the JSON (needs kmpray[plot])"
    )
    parser.add_argument("--address", default=None, help="Ray address of the deployment (default: local)")
    parser.add_argument(
        "--namespace", default=None,
        help="the engine's (default: with --address the deployment's, 'kmpray', as `kmpray start` names it;"
             " without, 'kmpray-load')",
    )
    parser.add_argument(
        "--state-dir", default=None,
        help="without --address: the engine's state dir (default: a fresh temp dir)",
    )
    parser.add_argument("--quiet", action="store_true", help="no live line per second")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.help_kinds:
        print("\n".join(f"  {k:9} {v}" for k, v in KIND_HELP.items()))
        return 0
    if args.duration <= 0 or args.drain_s <= 0 or args.trial_s <= 0 or args.max_rate <= 0:
        parser.error("--duration, --drain-s, --trial-s and --max-rate must be > 0")
    if args.max_in_flight < 1 or args.refine < 0 or args.batch_window_ms < 0:
        parser.error("--max-in-flight must be >= 1, --refine and --batch-window-ms >= 0")
    if args.clients is not None and args.clients < 1:
        parser.error("--clients must be >= 1")
    if args.find_max and (args.slo_p99_ms is None or args.slo_p99_ms <= 0):
        parser.error("--find-max needs --slo-p99-ms > 0")
    if args.plot:
        _check_plot(parser)
    try:
        profile = parse_profile(args.profile, args.rate if not args.find_max else 1.0, args.duration)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))

    ray_up(args.address)
    if args.namespace is None:
        args.namespace = DEPLOYMENT if args.address else "kmpray-load"
    # Pointed at a cluster, it load-tests the engine running there and never starts one: an
    # engine of detached actors with a temporary state dir would stay on the cluster after the
    # run, and a mistyped or missing --namespace would measure it instead of the user's.
    if args.address:
        from kmpray.actors.bootstrap import not_running

        if (trouble := not_running(args.namespace)) is not None:
            parser.error(f"{trouble}: give --namespace, start one with `kmpray start --address auto "
                         f"--namespace {args.namespace}`, or leave out --address to load-test an engine of "
                         "the generator's own")
    own = args.address is None and args.state_dir is None  # an engine of our own: stopped at the end
    # (pointed at a deployment it attaches as that is: no scratch dir of its own)
    state_dir = args.state_dir or (None if args.address else scratch_dir("kmpray-load-"))
    sched = kmpray.connect(namespace=args.namespace, state_dir=state_dir)
    try:
        return _run(sched, args, state_dir, profile)
    finally:
        if own:
            sched.shutdown()


def _run(sched: Any, args: argparse.Namespace, state_dir: str | None, profile: Profile) -> int:
    register(sched)
    warm_up(sched, args.mix)
    common = {
        "clients": args.clients,
        "max_in_flight": args.max_in_flight,
        "drain_s": args.drain_s,
        "window_ms": args.batch_window_ms,
    }
    if args.find_max:
        result = _find_max(sched, args, state_dir, common)
    else:
        peak = max(profile.rates)
        common["clients"] = args.clients or default_clients(peak)
        print(f"load: {profile.describe()}, {common['clients']} client(s)", flush=True)
        result = run_once(sched, args.namespace, state_dir, profile, args.mix, live=not args.quiet,
                          interruptible=True, **common)
    out = write("load", result, args.json)
    if not args.find_max:
        _print(result, out)
    else:
        if result["at_max"] is not None:
            _print(result["at_max"], out)
        best = result["max_rate_per_s"] if result["max_rate_per_s"] is not None else "none"
        print(
            f"  max rate meeting corrected p99 <= {args.slo_p99_ms} ms: {best}"
            f" ({len(result['curve'])} trials of {args.trial_s:g} s; json {out})"
        )
    if args.plot:
        from .load_plots import plot

        for path in plot(result, out):
            print(f"  plot: {path}")
    return 0


def _find_max(
    sched: Any, args: argparse.Namespace, state_dir: str | None, common: dict[str, Any]
) -> dict[str, Any]:
    from .dispatch import capacity_batch, capacity_batches

    results: dict[float, dict[str, Any]] = {}
    # The knee is reported against the same engine's bulk capacity: three batches first,
    # then one after every trial, and the median of them all (this VM's speed drifts within
    # minutes: a capacity taken before the trials only once gave a share of 137 %).
    runs = capacity_batches(sched, CAPACITY_RUNS, lambda: settle(sched), CAPACITY_TASKS)
    shown_runs = ", ".join(f"{r:,.0f}" for r in runs)
    print(f"  dispatch capacity (enqueue_many, same engine): {float(np.median(runs)):,.0f} tasks/s "
          f"(median of {shown_runs}; one more batch after each trial)", flush=True)

    def trial(rate: float) -> Trial:
        profile = Profile("constant", (rate,), args.trial_s)
        kw = {**common, "clients": common["clients"] or default_clients(rate)}
        r = run_once(sched, args.namespace, state_dir, profile, args.mix, live=False, **kw)
        p99 = r["start_latency_all_ms"]["corrected"].get("p99", math.inf)
        results[rate] = r
        t = Trial(rate, r["achieved_rate_per_s"], p99)
        settle(sched)
        runs.append(capacity_batch(sched, CAPACITY_TASKS))
        settle(sched)
        verdict = "pass" if t.passes(args.slo_p99_ms) else "fail"
        print(f"  trial {rate:8,.0f}/s: achieved {t.achieved:8,.0f}/s, corrected p99 {p99:8.1f} ms"
              f" -> {verdict}  ({r['verdict']}); bulk after it {runs[-1]:,.0f}/s", flush=True)
        return t

    start = args.rate or 200.0
    best, curve = find_max(trial, start, args.slo_p99_ms, ceiling=args.max_rate, refine=args.refine)
    capacity = float(np.median(runs))
    print(f"  dispatch capacity over the run: {capacity:,.0f} tasks/s (median of {len(runs)} batches, "
          f"{min(runs):,.0f}-{max(runs):,.0f})", flush=True)
    shown = results[best] if best is not None else results[curve[-1].rate]
    return {
        "slo_p99_ms": args.slo_p99_ms,
        "max_rate_per_s": None if best is None else round(best, 1),
        "dispatch_capacity_per_s": round(capacity, 1),
        "dispatch_capacity_runs": [round(r, 1) for r in runs],
        "max_share_of_dispatch": None if best is None else round(best / capacity, 3),
        "batch_window_ms": args.batch_window_ms,
        "trial_s": args.trial_s,
        "mix": args.mix,
        "curve": [
            {
                "rate_per_s": round(t.rate, 1),
                "achieved_rate_per_s": t.achieved,
                "p99_ms": t.p99_ms,
                "passes": t.passes(args.slo_p99_ms),
                "generator_bound": results[t.rate]["generator_bound"],
            }
            for t in curve
        ],
        "at_max": None if best is None else results[best],
        # the fields of a single run, for the best rate (or the last trial)
        **{k: v for k, v in shown.items() if k in RUN_FIELDS},
    }


def _check_plot(parser: argparse.ArgumentParser) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser.error("--plot needs matplotlib: pip install 'kmpray[plot]'")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
