"""The engine's metrics, published the Ray way (``ray.util.metrics``): they appear on each
node's metrics export port, in Prometheus and in Ray's Grafana, as ``ray_kmpray_*`` (Ray
prefixes custom metrics with ``ray_``). Exported only where Ray's metrics agent runs
(``ray[default]``, the ``metrics`` extra); with plain ``ray`` recording them costs little
and nothing is exported.

Nothing is recorded per task on the hot path: the scheduler, each executor and the broker
keep plain counters and samples, and publish them every ``METRICS_S`` (counters as the
increase since the last publish, histograms sample by sample, gauges as they stand).
Every metric carries the engine's ``namespace`` tag (the one users connect to, whatever
the shard), so engines sharing a cluster stay apart and a query for one engine sums its
shards; the scheduler's and the executors' also carry ``shard`` (0 unsharded), the broker's,
shared by the shards, does not.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from typing import Any

from kmpray.shards import SHARD_SEP

log = logging.getLogger("kmpray")

#: Samples fed to one histogram per publish at most (a uniform sample of the period's):
#: a Ray ``observe`` costs ~4 us, and thousands of them in one turn of the scheduler's
#: loop showed as a 100 ms timer p99. Exact below ~128 runs/s; the counters stay exact.
MAX_OBSERVED = 256

#: Latency histograms' bucket bounds, in ms.
MS_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000]


class Metrics:
    """Named ``kmpray_*`` metrics, made on first use; a no-op where ``ray.util.metrics``
    cannot be used (never an error in the engine)."""

    def __init__(self, namespace: str, per_shard: bool = True) -> None:
        # A shard k > 0 runs in "<namespace>~shard<k>" (actors/names.py): tagged with that,
        # its figures were a separate engine's to every query for the engine's namespace.
        base, _sep, k = namespace.partition(SHARD_SEP)
        self.namespace = base
        self.tags = {"namespace": base, "shard": k or "0"} if per_shard else {"namespace": base}
        self._made: dict[str, Any] = {}
        self._sent: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()  # counter totals sent
        try:
            from ray.util import metrics

            self._lib: Any = metrics
        except Exception:  # pragma: no cover - ray without its metrics module
            self._lib = None

    def _metric(self, kind: str, name: str, description: str, tag_keys: Iterable[str]) -> Any:
        metric = self._made.get(name)
        if metric is None and self._lib is not None:
            keys = (*self.tags, *tag_keys)
            try:
                if kind == "histogram":
                    metric = self._lib.Histogram(name, description, boundaries=MS_BUCKETS, tag_keys=keys)
                else:
                    cls = self._lib.Gauge if kind == "gauge" else self._lib.Counter
                    metric = cls(name, description, tag_keys=keys)
                metric.set_default_tags(self.tags)
            except Exception as exc:
                log.debug("metric %s unavailable: %s", name, exc)
                metric = False  # not again
            self._made[name] = metric
        return metric or None

    def gauge(self, name: str, description: str, value: float, **tags: str) -> None:
        metric = self._metric("gauge", name, description, tags)
        if metric is not None:
            metric.set(value, tags=tags or None)

    def totals(
        self, name: str, description: str, totals: Mapping[tuple[str, ...], int], keys: tuple[str, ...]
    ) -> None:
        """A counter from running totals (one per tag tuple): adds what grew since the last call."""
        metric = self._metric("counter", name, description, keys)
        if metric is None:
            return
        for values, total in totals.items():
            tags = tuple(zip(keys, values, strict=True))
            grown = total - self._sent[(name, tags)]
            if grown > 0:
                metric.inc(grown, tags=dict(tags) or None)
                self._sent[(name, tags)] = total

    def observe(self, name: str, description: str, samples: list[float], **tags: str) -> None:
        metric = self._metric("histogram", name, description, tags)
        if metric is not None:
            if len(samples) > MAX_OBSERVED:
                samples = random.sample(samples, MAX_OBSERVED)
            for value in samples:
                metric.observe(value, tags=tags or None)


def take(samples: Any) -> list[Any]:
    """Empty a deque of samples and return what it held."""
    out = list(samples)
    samples.clear()
    return out


async def publish_scheduler(m: Metrics, core: Any, inflight: Mapping[int, int], write_ms: Any) -> None:
    """The scheduler's view: tasks by state, queues, runs in flight, counters and latencies."""
    stats = core.stats
    # Kept as rows change (TaskTable.shown): a pass over every row here took the scheduler
    # ~2 % of its CPU at 60,000 rows, and ~15 % at a million pending tasks (0.3 s per
    # METRICS_S), for figures it already had.
    for state, n in core.counts().items():  # every state, 0 included
        m.gauge("kmpray_tasks", "Tasks in the store by state", n, state=state)
    m.gauge("kmpray_ready_depth", "Runs due and waiting for an executor", core.ready_count(), kind="light")
    m.gauge(
        "kmpray_ready_depth", "Runs due and waiting for an executor", core.heavy_ready_count(), kind="heavy"
    )
    m.gauge("kmpray_pending_tasks", "Unfinished tasks (admission control counts these)", core.pending)
    m.gauge("kmpray_tasks_store_only", "Finished tasks kept in the store only, out of the scheduler's memory",
            len(core.tasks.cold))
    for i, n in inflight.items():
        m.gauge(
            "kmpray_executor_inflight",
            "Runs handed to a light executor, not yet reported",
            n,
            executor=str(i),
        )
    m.totals(
        "kmpray_tasks_enqueued_total",
        "Tasks accepted, by worker class",
        {(w,): n for w, n in stats.enqueued_by.items()},
        ("worker",),
    )
    m.totals(
        "kmpray_runs_finished_total",
        "Runs finished, by worker class and outcome",
        dict(stats.finished_by),
        ("worker", "outcome"),
    )
    m.totals(
        "kmpray_retries_total",
        "Runs that ended asking for a retry, by worker class",
        {(w,): n for (w, o), n in stats.finished_by.items() if o == "retried"},
        ("worker",),
    )
    m.totals("kmpray_runs_dispatched_total", "Runs handed to executors", {(): stats.dispatched}, ())
    m.observe(
        "kmpray_enqueue_to_dispatch_ms",
        "Enqueue to hand-over of runs due at once (ms)",
        take(stats.new_waits),
    )
    m.observe("kmpray_enqueue_to_start_ms", "Enqueue to worker start of runs due at once (ms, real time)",
              take(stats.new_starts))
    m.observe("kmpray_timer_lateness_ms", "How late due work was made ready (ms)", take(stats.new_lateness))
    m.observe("kmpray_store_write_ms", "One store transaction (ms)", take(write_ms))


class RunMeter:
    """A light executor's or heavy worker's runs: started, by worker class, and how long
    each ran; published at most every ``period_s`` (the scheduler's ping asks)."""

    def __init__(self, namespace: str, period_s: float) -> None:
        self.metrics = Metrics(namespace)
        self.period_s = period_s
        self.started: dict[str, int] = {}  # worker class -> runs begun (a label tuple only at publish)
        self.durations: dict[str, deque[float]] = {}
        self.start_waits: deque[float] = deque(maxlen=4096)
        self._published = 0.0

    def began(self, worker: str, enqueued_ms: int | None = None) -> None:
        self.started[worker] = self.started.get(worker, 0) + 1
        if enqueued_ms is not None:  # wall clock here vs the scheduler's at enqueue
            self.start_waits.append(max(0.0, time.time() * 1000 - enqueued_ms))

    def take_start_waits(self) -> tuple[float, ...]:
        """Enqueue -> start of the runs begun since the last call: the ping carries them."""
        out = tuple(round(w, 2) for w in self.start_waits)
        self.start_waits.clear()
        return out

    def ran(self, worker: str, ms: float) -> None:
        samples = self.durations.get(worker)
        if samples is None:  # (setdefault would build a deque per run to throw away)
            samples = self.durations[worker] = deque(maxlen=4096)
        samples.append(ms)

    def publish_if_due(self) -> None:
        if time.monotonic() - self._published < self.period_s:
            return
        self._published = time.monotonic()
        self.metrics.totals(
            "kmpray_runs_started_total", "Runs whose worker began, by worker class",
            {(w,): n for w, n in self.started.items()}, ("worker",)
        )
        for worker, samples in self.durations.items():
            self.metrics.observe(
                "kmpray_run_duration_ms", "How long a worker ran (ms)", take(samples), worker=worker
            )
