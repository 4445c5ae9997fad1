"""submit: what one ``enqueue()`` costs against one bare actor round trip, how many calls
per second concurrent callers get through, and how soon a task enqueued alone starts.

In one run, against one engine:
- ``actor_ping_per_s`` / ``actor_rtt_ms``: sequential sync calls to a no-op async actor
  method on the same node, with an enqueue item as payload (the floor of any call).
- ``enqueue_per_s``: one client, sequential ``enqueue()`` of run-now tasks (each is
  dispatched, run and reported while the next calls come in); ``enqueue_ratio`` =
  enqueue_per_s / actor_ping_per_s. Delayed tasks (no dispatch follows) alongside.
- ``concurrent_enqueue_per_s``: 8 client threads calling ``enqueue()``; their calls share
  messages (client/coalesce.py) and the scheduler's commits. ``concurrent_ratio`` =
  concurrent_enqueue_per_s / actor_ping_per_s. The baseline in the same run,
  ``concurrent_one_message_per_call_per_s``, is the same threads with one message per
  call (how ``enqueue()`` worked before calls were coalesced).
- ``enqueue_async_per_s`` (``_client_cpu_us``): one coroutine awaiting ``enqueue_async()``
  of delayed tasks one after another: calls per second and the driver process's CPU per
  call, against sequential ``enqueue()`` of delayed tasks in the same run
  (``async_over_sync``).
- ``start_latency_ms``: enqueue -> the worker starts, at 100 tasks/s through single
  ``enqueue()`` calls on a fixed schedule (from each call's send time).
- ``through_ray`` / ``lane_speedup``: sequential, 8-thread and start-latency figures again
  with the client's local lane off (every call a Ray actor message, kmpray/lane.py), on
  the same engine in the same run: what the lane gains. Also ``enqueue()`` then ``wait()``
  of one task at a time and ``get_task_info()`` (reads go over the lane too).
"""

from __future__ import annotations

import asyncio
import resource
import threading
import time
from typing import Any

from kmpray import TaskRequest

from .common import engine, percentiles, ray_up, table, write
from .latency import _open_loop
from .stamp import collect_starts, register

THREADS = 8


def _timed(n: int, call: Any) -> tuple[list[float], float]:
    """Per-call latencies (ms) and calls per second over the whole sequence."""
    out = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - t) * 1000)
    return out, n / (time.perf_counter() - start)


def _cpu_s() -> float:
    """This process's CPU time (user + system), all its threads (Ray's included)."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def _sequential(n: int, call: Any, in_loop: bool) -> tuple[float, float]:
    """Calls per second and the process's CPU µs per call, ``n`` calls one after another:
    ``call(i)`` from this thread, or ``await call(i)`` in one coroutine (``in_loop``)."""
    async def awaited() -> None:
        for i in range(n):
            await call(i)

    cpu, start = _cpu_s(), time.perf_counter()
    if in_loop:
        asyncio.run(awaited())
    else:
        for i in range(n):
            call(i)
    wall = time.perf_counter() - start
    return n / wall, (_cpu_s() - cpu) / n * 1e6


def _threads(threads: int, per: int, call: Any) -> float:
    """Calls per second from ``threads`` threads, each making ``per`` calls in a row."""
    start = time.perf_counter()
    pool = [threading.Thread(target=lambda t=t: [call(t, i) for i in range(per)]) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=300)
    return threads * per / (time.perf_counter() - start)


def _starts(sched: Any, sub: Any, tag: str, duration_s: float) -> list[float]:
    """Enqueue -> worker start (ms) of single enqueue() calls at 100/s for ``duration_s``."""
    from kmpray import TaskTrigger

    now = TaskTrigger.OneTime()
    sent = _open_loop(100, duration_s, lambda i: sched.enqueue(f"{tag}{i}", now, "BenchStamp"))
    starts = collect_starts(sub, {f"{tag}{i}" for i in range(len(sent))})
    return [starts[f"{tag}{i}"] - s for i, s in enumerate(sent)]


def _messages(sched: Any) -> dict[str, int]:
    return dict(sched.status()["messages"])


def run(quick: bool = False, json_path: str | None = None, address: str | None = None) -> dict[str, Any]:
    from kmpray import TaskTrigger

    ray = ray_up(address)
    n = 100 if quick else 400

    @ray.remote(num_cpus=0)
    class Floor:
        async def ping(self, x: Any) -> Any:
            return x

    floor = Floor.remote()
    ray.get(floor.ping.remote(0))
    sched = engine("bench-submit")
    now, later = TaskTrigger.OneTime(), TaskTrigger.OneTime(3_600_000)
    try:
        register(sched)
        sched.enqueue("warm", now, "BenchStamp")
        sched.wait("warm", timeout_s=60)
        item = {"id": "x", "trigger": {"kind": "one_time"}, "worker": "BenchStamp", "input": None}
        bare, ping_rate = _timed(n, lambda i: ray.get(floor.ping.remote([item])))
        delayed, delayed_rate = _timed(n, lambda i: sched.enqueue(f"d{i}", later, "BenchStamp"))
        run_now, enqueue_rate = _timed(n, lambda i: sched.enqueue(f"n{i}", now, "BenchStamp"))
        sched.wait(f"n{n - 1}", timeout_s=60)

        def enqueue_wait(i: int) -> None:
            sched.enqueue(f"w{i}", now, "BenchStamp")
            sched.wait(f"w{i}", timeout_s=60)

        roundtrip, _ = _timed(n, enqueue_wait)
        m = n * 5
        sync_rate, sync_cpu = _sequential(m, lambda i: sched.enqueue(f"sd{i}", later, "BenchStamp"), False)
        async_rate, async_cpu = _sequential(
            m, lambda i: sched.enqueue_async(f"ad{i}", later, "BenchStamp"), True)
        info, _ = _timed(n, lambda i: sched.get_task_info(f"w{i}"))
        sched.cancel_all()
        per = (n * 2) // THREADS
        bare_rate = _threads(THREADS, per, lambda t, i: ray.get(floor.ping.remote([item])))
        delayed_conc = _threads(THREADS, per, lambda t, i: sched.enqueue(f"cd{t}-{i}", later, "BenchStamp"))
        before = _messages(sched)
        conc = _threads(THREADS, per, lambda t, i: sched.enqueue(f"c{t}-{i}", now, "BenchStamp"))
        sched.wait([f"c{t}-{per - 1}" for t in range(THREADS)], timeout_s=120)
        after = _messages(sched)
        per_task = {k: round((after.get(k, 0) - before.get(k, 0)) / (THREADS * per), 3) for k in after}

        def one_message(t: int, i: int) -> None:  # enqueue() as it was: one message per call
            sched.enqueue_many([TaskRequest("BenchStamp", id=f"u{t}-{i}")])

        uncoalesced = _threads(THREADS, per, one_message)
        sched.wait([f"u{t}-{per - 1}" for t in range(THREADS)], timeout_s=120)
        sched.cancel_all()
        sub = sched.events.subscribe()
        start_latency = _starts(sched, sub, "o", 3.0 if quick else 5.0)
        # The same calls through Ray's actor call, the local lane off (kmpray/lane.py): the
        # baseline of the lane's gain, measured in this run on this engine.
        for lane in sched._lanes:
            lane.enabled = False
        _, ray_rate = _timed(n, lambda i: sched.enqueue(f"rn{i}", now, "BenchStamp"))
        sched.wait(f"rn{n - 1}", timeout_s=60)

        def enqueue_wait_ray(i: int) -> None:
            sched.enqueue(f"rw{i}", now, "BenchStamp")
            sched.wait(f"rw{i}", timeout_s=60)

        ray_roundtrip = percentiles(_timed(n, enqueue_wait_ray)[0])
        ray_info = percentiles(_timed(n, lambda i: sched.get_task_info(f"rw{i}"))[0])
        ray_conc = _threads(THREADS, per, lambda t, i: sched.enqueue(f"rc{t}-{i}", now, "BenchStamp"))
        sched.wait([f"rc{t}-{per - 1}" for t in range(THREADS)], timeout_s=120)
        ray_start = percentiles(_starts(sched, sub, "ro", 3.0 if quick else 5.0))
    finally:
        sched.shutdown()
    p = {k: percentiles(v) for k, v in
         (("bare_actor_call", bare), ("enqueue_delayed", delayed), ("enqueue_run_now", run_now),
          ("enqueue_then_wait", roundtrip), ("get_task_info", info))}
    rtt = p["bare_actor_call"]
    start_p = percentiles(start_latency)
    result = {
        "calls": n,
        "actor_ping_per_s": round(ping_rate, 1),
        "actor_rtt_ms": {"p50": rtt["p50"], "p99": rtt["p99"]},
        "enqueue_per_s": round(enqueue_rate, 1),
        "enqueue_ratio": round(enqueue_rate / ping_rate, 3),
        "enqueue_delayed_per_s": round(delayed_rate, 1),
        "enqueue_delayed_ratio": round(delayed_rate / ping_rate, 3),
        "enqueue_async_per_s": round(async_rate, 1),  # (top level: what `bench ab` compares)
        "enqueue_async_client_cpu_us": round(async_cpu, 1),
        "enqueue_sync_delayed_per_s": round(sync_rate, 1),
        "enqueue_sync_client_cpu_us": round(sync_cpu, 1),
        "async_over_sync": {"calls": m, "rate": round(async_rate / sync_rate, 3),
                            "cpu": round(async_cpu / sync_cpu, 3)},
        "concurrent_enqueue_per_s": round(conc, 1),
        "concurrent_ratio": round(conc / ping_rate, 3),
        "concurrent_one_message_per_call_per_s": round(uncoalesced, 1),
        "coalescing_speedup": round(conc / uncoalesced, 2),
        "start_latency_ms": {"rate_per_s": 100, "p50": start_p["p50"], "p99": start_p["p99"],
                             "p50_over_rtt_p50": round(start_p["p50"] / rtt["p50"], 2)},
        "through_ray": {"enqueue_per_s": round(ray_rate, 1), "concurrent_enqueue_per_s": round(ray_conc, 1),
                        "start_latency_ms": {"p50": ray_start["p50"], "p99": ray_start["p99"]},
                        "enqueue_then_wait_ms": ray_roundtrip, "get_task_info_ms": ray_info},
        "lane_speedup": {"sequential": round(enqueue_rate / ray_rate, 2),
                         "concurrent": round(conc / ray_conc, 2),
                         "start_p50": round(ray_start["p50"] / start_p["p50"], 2),
                         "enqueue_then_wait_p50": round(ray_roundtrip["p50"] / p["enqueue_then_wait"]["p50"],
                                                        2),
                         "get_task_info_p50": round(ray_info["p50"] / p["get_task_info"]["p50"], 2)},
        "latency_ms": p,
        "ratio_to_bare_call_p50": {k: round(v["p50"] / max(rtt["p50"], 0.001), 2) for k, v in p.items()},
        "concurrent": {"threads": THREADS, "enqueue_calls_per_s": round(conc, 1),
                       "enqueue_delayed_calls_per_s": round(delayed_conc, 1),
                       "bare_calls_per_s": round(bare_rate, 1),
                       "scheduler_messages_per_run_now_task": per_task},
        "targets": {"enqueue_ratio": ">= 0.8", "concurrent_ratio": ">= 3",
                    "start_latency_p50": "<= 2 x actor_rtt_ms p50"},
        "note": "sequential calls from one driver thread; bare: a no-op async actor method, same payload",
    }
    out = write("submit", result, json_path)
    rows = [(k, f"p50 {v['p50']} ms, p99 {v['p99']} ms ({result['ratio_to_bare_call_p50'][k]}x bare)")
            for k, v in p.items()]
    rows += [
        ("sequential calls/s", f"actor ping {ping_rate:,.0f}, enqueue() run-now {enqueue_rate:,.0f} "
                               f"(ratio {result['enqueue_ratio']}), delayed {delayed_rate:,.0f}"),
        ("enqueue_async() one after another",
         f"{async_rate:,.0f}/s, {async_cpu:.0f} µs of the driver's CPU a call; enqueue(): "
         f"{sync_rate:,.0f}/s, {sync_cpu:.0f} µs (delayed tasks, {m} calls each)"),
        (f"enqueue() from {THREADS} threads",
         f"run-now {conc:,.0f}/s (ratio {result['concurrent_ratio']}; one message per call: "
         f"{uncoalesced:,.0f}/s), delayed {delayed_conc:,.0f}/s, bare pings {bare_rate:,.0f}/s"),
        ("start latency at 100/s", f"p50 {start_p['p50']} ms, p99 {start_p['p99']} ms "
                                   f"({result['start_latency_ms']['p50_over_rtt_p50']}x rtt p50)"),
        ("through Ray (lane off), same run",
         f"sequential {ray_rate:,.0f}/s, {THREADS} threads {ray_conc:,.0f}/s, "
         f"start p50 {ray_start['p50']} ms "
         f"(lane: {result['lane_speedup']['sequential']}x, {result['lane_speedup']['concurrent']}x, "
         f"{result['lane_speedup']['start_p50']}x)"),
        ("  enqueue() then wait(), get_task_info()",
         f"p50 {ray_roundtrip['p50']} ms, {ray_info['p50']} ms (lane: "
         f"{result['lane_speedup']['enqueue_then_wait_p50']}x, "
         f"{result['lane_speedup']['get_task_info_p50']}x)"),
        ("scheduler messages per run-now task", ", ".join(f"{k} {v}" for k, v in sorted(per_task.items()))),
        ("json", str(out)),
    ]
    print(table(rows))
    return result
