"""load: an open-loop load generator to point at any deployment.

kmpray bench load --rate 500 --duration 30 --mix one-time:0.8,chain:0.1,heavy:0.1 [--address auto]

Reports the achieved rate, enqueue-call and enqueue-to-start latencies, errors, and the
engine's queue depth (ready + in flight) sampled every second; writes bench/results/load.json.
"""

from __future__ import annotations

import argparse
import random
import threading
import time

from .common import percentiles, ray_up, table, write
from .stamp import register


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        kind, _, weight = part.partition(":")
        if kind not in ("one-time", "chain", "heavy"):
            raise argparse.ArgumentTypeError(f"--mix: unknown kind {kind!r} (one-time, chain, heavy)")
        try:
            mix[kind] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--mix: weight of {kind!r} is not a number") from None
    if sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError("--mix: weights must add up to more than 0")
    return mix


def main(argv: list[str]) -> int:
    import kmpray
    from kmpray import Constraints, ScheduleResult, TaskRequest, TaskTrigger

    parser = argparse.ArgumentParser(prog="kmpray bench load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, required=True, help="operations per second (open loop)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    parser.add_argument("--mix", type=parse_mix, default=parse_mix("one-time:1"))
    parser.add_argument("--address", default=None, help="Ray address of the deployment (default: local)")
    parser.add_argument("--namespace", default="kmpray-load")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")

    ray_up(args.address)
    sched = kmpray.connect(address=args.address, namespace=args.namespace)
    register(sched)
    kinds, weights = zip(*args.mix.items(), strict=True)
    rng = random.Random(7)
    depth: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.perf_counter()
        while not stop.wait(1.0):
            s = sched.status()
            depth.append((round(time.perf_counter() - t0, 1), s["ready"] + s["inflight"] + s["gated"]))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    call_ms: list[float] = []
    sent: dict[str, float] = {}
    errors: dict[str, int] = {}
    run_id = f"{int(time.time())}"
    n = int(args.rate * args.duration)
    start = time.perf_counter()
    for i in range(n):
        delay = start + i / args.rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # pacing the open loop
        kind = rng.choices(kinds, weights)[0]
        tid = f"load-{run_id}-{i}"
        t = time.perf_counter()
        sent_ms = time.time() * 1000
        try:
            if kind == "chain":
                result = sched.begin_with(TaskRequest("BenchStamp", id=tid)).then(TaskRequest("BenchStamp")) \
                    .with_id(f"{tid}-chain").enqueue()
            else:
                heavy = Constraints(is_heavy_task=kind == "heavy")
                result = sched.enqueue(tid, TaskTrigger.OneTime(), "BenchStamp", constraints=heavy)
        except Exception as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            continue
        call_ms.append((time.perf_counter() - t) * 1000)
        if result is ScheduleResult.SUCCESS:
            sent[tid] = sent_ms
        else:
            errors[result.value] = errors.get(result.value, 0) + 1
    elapsed = time.perf_counter() - start
    start_lat = []
    for tid, at in sent.items():
        try:
            info = sched.wait(tid, timeout_s=120)
            start_lat.append(info.result.data["t"] - at)
        except Exception as exc:
            errors[f"wait:{type(exc).__name__}"] = errors.get(f"wait:{type(exc).__name__}", 0) + 1
    stop.set()
    sampler.join(timeout=5)
    result = {
        "requested_rate_per_s": args.rate,
        "achieved_rate_per_s": round(len(call_ms) / elapsed, 1),
        "operations": n,
        "mix": args.mix,
        "enqueue_call_ms": percentiles(call_ms),
        "enqueue_to_start_ms": percentiles(start_lat),
        "errors": errors,
        "queue_depth": depth,
        "note": "one-time and heavy: enqueue() -> worker start; chain: -> first step start",
    }
    out = write("load", result, args.json)
    print(table([
        ("rate requested / achieved", f"{args.rate:,.0f}/s / {result['achieved_rate_per_s']:,.0f}/s"),
        ("enqueue call p50/p99 ms", f"{result['enqueue_call_ms']['p50']}/{result['enqueue_call_ms']['p99']}"),
        ("enqueue -> start p50/p99 ms", f"{result['enqueue_to_start_ms']['p50']}/{result['enqueue_to_start_ms']['p99']}"),
        ("errors", str(errors or "none")),
        ("queue depth (s, tasks)", str(depth[:10]) + (" ..." if len(depth) > 10 else "")),
        ("json", str(out)),
    ]))
    return 0
