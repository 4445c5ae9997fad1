"""EngineConfig: the limits and sizes an engine runs with (set at its first connect)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from ._model import Frozen
from .timing import PING_TIMEOUT_S, STORE_LOCK_WAIT_S

MiB = 1024 * 1024

#: Ray counts resources in units of 1/10,000 (finer amounts are refused when an actor asks).
RESOURCE_STEP = 1e-4


def _amount(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite amount >= 0, got {value!r}")
    if value and abs(value / RESOURCE_STEP - round(value / RESOURCE_STEP)) > 1e-6:
        raise ValueError(f"{name} = {value!r} is finer than Ray's resource step ({RESOURCE_STEP:g})")
    return value


def _heavy_cpus(value: float) -> float:
    return _amount("heavy_num_cpus", value)


def _heavy_resources(value: dict[str, float]) -> dict[str, float]:
    """What each heavy worker asks Ray for besides its CPUs, checked as Ray checks it when the
    pool starts a worker (before: a bad amount failed there, every dispatch turn, and stopped
    light tasks too). "GPU" is asked for as Ray's num_gpus (Ray refuses it as a resource)."""
    for name, amount in value.items():
        if not name:
            raise ValueError("heavy_resources: a resource name must not be empty")
        if name == "CPU":
            raise ValueError("heavy_resources: give CPUs as heavy_num_cpus, not as a resource")
        _amount(f"heavy_resources[{name!r}]", amount)
    return value


class EngineConfig(Frozen):
    max_id_length: Annotated[int, Field(gt=0)] = 256
    max_input_bytes: Annotated[int, Field(gt=0)] = 1 * MiB
    max_output_bytes: Annotated[int, Field(gt=0)] = 1 * MiB
    max_pending_tasks: Annotated[int, Field(gt=0)] = 2_000_000  # the engine's; each shard has its share
    # SchedulerActor shards (README "Sharded control plane"): a task lives on shard
    # crc32(its unique name) % N, a chain and all its tasks on its chain id's; each shard
    # has its own store, timers, executors and restart. Fixed for a state dir's life.
    scheduler_shards: Annotated[int, Field(ge=1, le=64)] = 1
    # Step data (kmpray/artifacts.py): a numpy array in Success.data larger than this goes
    # through Ray's object store and a content-addressed file under state_dir/artifacts
    # (smaller ones ride in the row); bytes and other values go that way only when the
    # output would pass max_output_bytes otherwise.
    inline_data_bytes: Annotated[int, Field(ge=0)] = 64 * 1024
    # One output's large values together; over it the step fails, naming the key.
    max_artifact_bytes: Annotated[int, Field(gt=0)] = 2 * 1024 * MiB
    # The whole artifact folder; an output that would take it past this fails its step.
    max_artifacts_total_bytes: Annotated[int, Field(gt=0)] = 32 * 1024 * MiB
    # Light executors: long-lived actors that light tasks are batched onto.
    executors: Annotated[int, Field(ge=0)] = 0  # 0 = one per CPU in the cluster
    executor_concurrency: Annotated[int, Field(gt=0)] = 64  # runs executing at once per executor
    # Runs handed to one executor before it reports back (running + queued there). A wider
    # window hides the round trip under load; ordering within an executor stays FIFO.
    executor_window: Annotated[int, Field(gt=0)] = 256
    max_batch: Annotated[int, Field(gt=0)] = 256
    # Each executor's event loop is watched from a thread (a heartbeat every loop_probe_ms).
    # Lagging past loop_block_ms means a worker blocks it: the scheduler sends that executor
    # nothing more and hands its queued runs to others until the loop runs again.
    loop_probe_ms: Annotated[int, Field(ge=1, le=1_000)] = 10
    loop_block_ms: Annotated[int, Field(ge=10, le=60_000)] = 100
    # After a worker class blocked an executor's loop this many times, its async do_work
    # runs in a thread on that executor (as `blocking = True` would). 0 = never.
    auto_thread_after_blocks: Annotated[int, Field(ge=0)] = 3
    # Timed runs (delays, Exact, periodic, backoff) due within this many ms are handed to
    # executors ahead of time, in batches, and begin at their due time on the executor's
    # clock: timer precision no longer depends on how busy the scheduler is. 0 = off.
    # Real time only (virtual time dispatches at each due time).
    timer_lead_ms: Annotated[int, Field(ge=0, le=60_000)] = 20
    # A run lost because the process running it died (os._exit, a fatal signal, a memory
    # kill) is run again, not counted as an attempt. The next run of such a task goes alone
    # to an executor, so a second death is its own; after this many such re-runs the task
    # ends FAILED with the reason (a periodic task: that period failed).
    max_system_reruns: Annotated[int, Field(ge=0, le=100)] = 3
    # A light executor whose process grows past this many MiB of resident memory stops
    # itself (its runs are lost as above, so a run allocating without bound ends FAILED
    # after max_system_reruns). None: no cap of kmpray's own (Ray's memory monitor still
    # kills workers when the node runs out of memory).
    executor_memory_mb: Annotated[int, Field(gt=0)] | None = None
    # Heavy tasks (Constraints(is_heavy_task=True)): a pool of long-lived HeavyWorker actors.
    heavy_pool_size: Annotated[int, Field(ge=0)] = 2
    heavy_num_cpus: Annotated[float, AfterValidator(_heavy_cpus)] = 1.0
    # e.g. {"heavy": 1} to land on cluster.yaml's heavy nodes; {"GPU": 1} for a GPU each.
    heavy_resources: Annotated[dict[str, float], AfterValidator(_heavy_resources)] = {}
    heavy_idle_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    heavy_cancel_grace_s: Annotated[float, Field(ge=0)] = 5.0
    # A heavy worker that has not answered a ping for this long (its node left and no other
    # node has its resources yet) is replaced, and its run goes to the replacement.
    heavy_unreachable_s: Annotated[float, Field(gt=0)] = 30.0
    # An executor or heavy worker whose ping goes unanswered this long gets no new runs
    # until it answers again (its runs are re-run only on proof of loss), and a restarted
    # scheduler waits this long for each to say which runs it holds. Raise it where a busy
    # network or a loaded node answers slowly.
    ping_timeout_s: Annotated[float, Field(gt=0, le=600)] = PING_TIMEOUT_S
    # ChainCoordinator actors: chains are spread over them by a hash of the chain id;
    # started with the engine's first chain (or at start when the store has chains).
    # 0 runs the same coordination rules inside the scheduler process: no actor round
    # trip between steps (faster sequential chains), one process less to fail.
    chain_coordinators: Annotated[int, Field(ge=0, le=64)] = 2
    # A task waiting on the same reason (constraints, an unregistered worker, no executor
    # room; not time) this long is logged once at WARNING: silent waiting shows up in logs.
    wait_warning_ms: Annotated[int, Field(gt=0)] = 10 * 60 * 1000
    # Recent decisions about tasks kept for scheduler.explain(id) (dispatch, retry, requeue, ...).
    decision_log_size: Annotated[int, Field(ge=0)] = 20_000
    # Finished one-time tasks are kept this long for get_task_info, then pruned.
    retain_finished_ms: Annotated[int, Field(ge=0)] = 24 * 60 * 60 * 1000
    # ...in the scheduler's memory for this long, then in the store only (read from there
    # when asked for; a chain's rows, and rows other work still needs, stay in memory).
    finished_in_memory_ms: Annotated[int, Field(ge=0)] = 30_000
    # advance_time waits at most this long (real time) for due runs to settle.
    settle_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    # The event log keeps the newest event_retention completion events and, counted apart
    # (a flood of progress never pushes a completion out), the newest progress_retention
    # progress events; a subscriber replaying from further back skips what is gone.
    event_retention: Annotated[int, Field(gt=0)] = 100_000
    progress_retention: Annotated[int, Field(gt=0)] = 10_000
    # Progress reports of one run (kmpray/progress.py): the first progress_burst become events
    # at once, then one per progress_interval_ms, the newest of those made in between (the
    # last one always, before the result). 0 = every report is an event.
    progress_burst: Annotated[int, Field(ge=1, le=10_000)] = 20
    progress_interval_ms: Annotated[int, Field(ge=0, le=60_000)] = 100
    # What an acknowledged write survives (SQLite's synchronous setting, both store files).
    # "normal": a process crash (kill -9 of any actor, the driver, `ray stop --force`); an OS
    # crash or power loss may roll back the last transactions (never corrupts the file).
    # "full": also an OS crash or power loss (an fsync per commit). See README, Durability.
    durability: Literal["normal", "full"] = "normal"
    # One engine per state dir: a store file another process holds (kmpray/store_files.py) is
    # waited for this long (a killed scheduler's process may still be ending), then refused.
    store_lock_wait_s: Annotated[float, Field(ge=0, le=3600)] = STORE_LOCK_WAIT_S
    # Enqueue calls from a client on a scheduler's own node go over a Unix socket (the
    # local lane, kmpray/lane.py) instead of a Ray actor message; False: Ray's call only.
    local_lane: bool = True
    # Events go to the broker in batches, at most one publish per this long: the first of a
    # quiet spell waits this long for company, and under load each batch holds what came
    # in that time (a publish is a Ray call, ~1 ms of CPU at each end). Delivery to
    # subscribers is up to that much later; a chain's next step no longer shares the two
    # cores with a publish per step (3.3 -> 2.85 ms per step in-process).
    event_linger_ms: Annotated[int, Field(ge=0, le=1_000)] = 20
    # Ordering when capacity is short: expedited first, then HIGH > DEFAULT > LOW for equal
    # due times; a task that has waited this much longer outranks the next class (aging).
    qos_aging_ms: Annotated[int, Field(ge=0)] = 60_000
    # ConstraintOracle probes (per node): interval and thresholds.
    probe_interval_s: Annotated[float, Field(gt=0)] = 2.0
    battery_low_threshold: Annotated[int, Field(ge=0, le=100)] = 15
    storage_low_free_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05
    idle_load_per_cpu: Annotated[float, Field(ge=0)] = 0.25
    # Built-in workers' safety settings.
    files_base_dir: str | None = None  # paths must resolve under it (default: <tmp>/kmpray-files)
    http_allow_hosts: list[str] = []  # when set, only these hosts (exact or *.suffix)
    http_deny_hosts: list[str] = []
    http_deny_private: bool = False  # refuse loopback, private and link-local addresses
    download_max_bytes: Annotated[int, Field(gt=0)] = 10 * 1024 * MiB


def differences(asked: EngineConfig, running: dict[str, Any]) -> list[str]:
    """The fields a caller set in ``asked`` that the running engine (its config as ``running``)
    has otherwise, as ``name=asked (running: value)``: a connect to an engine that runs
    already attaches to it as it is, and says so (scheduler_shards is said at bootstrap)."""
    mine = asked.model_dump()
    return [f"{name}={mine[name]!r} (running: {running[name]!r})" for name in sorted(asked.model_fields_set)
            if name != "scheduler_shards" and name in running and running[name] != mine[name]]
