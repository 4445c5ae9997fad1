"""A sharded control plane (EngineConfig(scheduler_shards=2)): every call reaches the shard
that holds its task or chain, engine-wide calls see every shard, a shard killed under
load loses nothing, virtual time moves every shard, and a state dir keeps its count."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kmpray
from kmpray import (
    Constraints,
    EngineConfig,
    ExistingWorkPolicy,
    ScheduleResult,
    TaskRequest,
    TaskState,
    TaskTrigger,
)
from kmpray.errors import StoreRefused
from kmpray.shards import shard_of

from .helpers import in_turn, metrics_port, one_name_from_many_threads, scrape_metrics
from .workers import register_all

pytestmark = pytest.mark.ray
ONCE = TaskTrigger.OneTime()
TWO = EngineConfig(scheduler_shards=2)


def ids_on(shard: int, prefix: str, n: int) -> list[str]:
    """``n`` ids that hash to ``shard`` of two."""
    out = []
    i = 0
    while len(out) < n:
        if shard_of(f"{prefix}{i}", 2) == shard:
            out.append(f"{prefix}{i}")
        i += 1
    return out


@pytest.fixture(scope="module")
def _two(module_engines: Any) -> Any:
    return module_engines.registered(config=TWO)


@pytest.fixture
def two(_two: Any) -> Iterator[Any]:
    yield from in_turn(_two)


def _shard_counts(sched: Any, state: str = "SUCCEEDED") -> list[int]:
    return [s["counts"][state] for s in sched.status()["shards"]]


def test_tasks_land_on_their_hash_shard_and_bulk_answers_keep_their_order(two: Any) -> None:
    before = _shard_counts(two)
    zero, one = ids_on(0, "a", 3), ids_on(1, "a", 3)
    items = [TaskRequest("Echo", id=i) for i in (zero[0], one[0], zero[1], one[1])]
    items.insert(2, {"id": "a-bad", "worker_class_name": "NoSuchWorker"})  # rejected, in its place
    got = two.enqueue_many(items)
    ok = ScheduleResult.SUCCESS
    assert got == [ok, ok, ScheduleResult.REJECTED_INVALID_PARAMS, ok, ok]
    assert two.enqueue(zero[2], ONCE, "Echo", input="z") is ScheduleResult.SUCCESS
    assert two.enqueue(one[2], ONCE, "Echo", input="o") is ScheduleResult.SUCCESS
    assert {i.state for i in two.wait(zero + one, timeout_s=60)} == {TaskState.SUCCEEDED}
    after = _shard_counts(two)
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 3]
    assert two.get_task_info(one[2]).result.data["input"] == "o"
    assert two.status()["namespace"] == two.namespace and len(two.status()["shards"]) == 2


def test_a_chain_and_its_tasks_live_on_the_chain_ids_shard_and_any_client_finds_them(two: Any) -> None:
    chain_id = ids_on(0, "chain", 1)[0]
    first, second = ids_on(1, "step", 2)  # their own hash says shard 1; they live on 0
    result = two.begin_with(TaskRequest("Echo", id=first, input="1")).then(
        TaskRequest("Echo", id=second)).with_id(chain_id).enqueue()
    assert result is ScheduleResult.SUCCESS
    assert two.wait(chain_id, timeout_s=60).state is TaskState.SUCCEEDED
    other = kmpray.connect(namespace=two.namespace, state_dir=two.state_dir)  # no config: attaches as it runs
    assert other.shards == 2 and other.status()["scheduler_shards"] == 2
    assert other.get_task_info(second).state is TaskState.SUCCEEDED
    assert other.wait(second, timeout_s=30).state is TaskState.SUCCEEDED
    assert other._homes[second] == 0
    assert "SUCCEEDED" in other.explain(first)
    assert other.get_chain_info(chain_id).state is TaskState.SUCCEEDED


def test_one_name_from_many_threads_runs_once_and_appended_work_lives_with_it(
    two: Any, tmp_path: Path
) -> None:
    name = ids_on(1, "only", 1)[0]
    results, runs = one_name_from_many_threads(two, name, tmp_path)
    assert results == [ScheduleResult.SUCCESS] * 16
    assert runs == 1
    app = Constraints(existing_work_policy=ExistingWorkPolicy.APPEND)
    later = TaskTrigger.OneTime(3_600_000)
    assert two.enqueue(name, later, "Echo", constraints=app) is ScheduleResult.SUCCESS
    assert two.get_task_info(name).id == f"{name}#2"
    assert [s["counts"]["ENQUEUED"] for s in two.status()["shards"]] == [0, 1]


def test_each_shard_runs_heavy_work_while_the_other_shards_heavy_workers_are_warm(two: Any) -> None:
    """Each shard's heavy pool is its share of ``heavy_pool_size`` (one of two here). With a
    pool of two per shard, the first shard's idle warm workers held both CPUs of this
    machine and the second shard's heavy task waited for them to retire (300 s):
    ``waiting for a heavy worker: 0 of 2 placed (starting)``."""
    heavy = kmpray.Constraints(is_heavy_task=True)
    first, second = ids_on(0, "hv", 1)[0], ids_on(1, "hv", 1)[0]
    two.enqueue(first, ONCE, "Noop", constraints=heavy)
    assert two.wait(first, timeout_s=60).state is TaskState.SUCCEEDED
    two.enqueue(second, ONCE, "Noop", constraints=heavy)
    assert two.wait(second, timeout_s=60).state is TaskState.SUCCEEDED
    assert two.status()["heavy"]["pool"] == 2  # one per shard, as heavy_pool_size=2 asks in all


def test_engine_wide_calls_see_every_shard(two: Any) -> None:
    later = TaskTrigger.OneTime(3_600_000)
    names = ids_on(0, "w", 2) + ids_on(1, "w", 2)
    for n in names:
        two.enqueue(n, later, "Echo")
    chain_id = ids_on(1, "wc", 1)[0]
    two.begin_with(TaskRequest("Echo", id="wc-1", input="x")).then(TaskRequest("Echo", id="wc-2")).with_id(
        chain_id).enqueue()
    two.enqueue("w-bad", ONCE, "NoSuchWorker")
    listed = {t.id for t in two.list_tasks(TaskState.ENQUEUED)}
    assert set(names) <= listed
    assert any(r[0] == "w-bad" for r in two.rejections())
    assert two.status()["pending"] >= len(names)
    assert two.cancel(names[3]) == 1  # on shard 1
    assert two.cancel_all() >= len(names) - 1
    assert {two.get_task_info(n).state for n in names} == {TaskState.CANCELLED}


def test_completion_events_of_both_shards_arrive_once_each(two: Any) -> None:
    from kmpray.bench.chaos_common import replay

    since = two.events.last_cursor()
    names = ids_on(0, "ev", 5) + ids_on(1, "ev", 5)
    two.enqueue_many([TaskRequest("Noop", id=n) for n in names])
    two.wait(names, timeout_s=60)
    seen: Counter[str] = Counter()
    for _, event in replay(two, since, succeeded=set(names), timeout_s=30):
        if event.kind == "completion" and event.task_id in names:
            seen[event.task_id] += 1
    assert seen == dict.fromkeys(names, 1)


def test_a_shard_killed_under_load_loses_nothing(engines: Any, tmp_path: Path) -> None:
    import ray

    sched = engines(config=TWO)
    register_all(sched)
    log = tmp_path / "runs.log"
    names = [f"k{i}" for i in range(200)]
    reqs = [TaskRequest("Echo", id=n, input=json.dumps({"log": str(log)})) for n in names]
    sched.enqueue_many(reqs[:100])
    ray.kill(ray.get_actor("kmpray.scheduler", namespace=f"{sched.namespace}~shard1"), no_restart=False)
    assert sched.enqueue_many(reqs[100:]) == [ScheduleResult.SUCCESS] * 100  # retried across the restart
    infos = sched.wait(names, timeout_s=120)
    assert {i.state for i in infos} == {TaskState.SUCCEEDED}
    runs = Counter(line.split()[0] for line in log.read_text().splitlines())
    assert set(runs) == set(names)
    twice = {n for n, c in runs.items() if c > 1}
    assert all(shard_of(n, 2) == 1 for n in twice)  # only what was in flight on the killed shard


def test_virtual_time_moves_every_shard_and_a_state_dir_keeps_its_shard_count(
    engines: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "kept"
    sched = engines(config=TWO, state_dir=state, virtual_time=True)
    register_all(sched)
    names = ids_on(0, "vt", 2) + ids_on(1, "vt", 2)
    for n in names:
        sched.enqueue(n, TaskTrigger.OneTime(60_000), "Echo")
    later = ids_on(1, "keep", 1)[0]
    sched.enqueue(later, TaskTrigger.OneTime(3_600_000), "Echo")
    start = sched.now_ms()
    sched.advance_time(59_999)
    assert {sched.get_task_info(n).state for n in names} == {TaskState.ENQUEUED}
    assert sched.advance_time(1) == start + 60_000  # the shards' clocks agree
    assert {sched.get_task_info(n).state for n in names} == {TaskState.SUCCEEDED}
    sched.shutdown()
    # connected with the default config (one shard); any other count meets the same check
    with pytest.raises(StoreRefused, match="scheduler_shards=2; it was started with scheduler_shards=1"):
        kmpray.connect(namespace=sched.namespace, state_dir=str(state), virtual_time=True)
    again = engines(namespace=sched.namespace, config=TWO, state_dir=state, virtual_time=True)
    assert again.get_task_info(later).state is TaskState.ENQUEUED  # shard 1's store, reopened
    assert {again.get_task_info(n).state for n in names} == {TaskState.SUCCEEDED}
    assert again.now_ms() == start + 60_000 and (state / "shard-1" / "tasks.db").exists()
    # Attaching to the running engine takes its count; only a caller who asked for another hears of it.
    with caplog.at_level("DEBUG", logger="kmpray"):
        plain = kmpray.connect(namespace=sched.namespace, state_dir=str(state), virtual_time=True)
        asked = kmpray.connect(namespace=sched.namespace, state_dir=str(state), virtual_time=True,
                               config=kmpray.EngineConfig(scheduler_shards=3))
    assert plain.shards == asked.shards == 2
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "attaching with that" in r.getMessage()]
    assert [level for level, _ in said] == ["DEBUG", "WARNING"] and "asked: 3" in said[1][1], said


def test_metrics_carry_the_engines_namespace_and_each_shards_index(two: Any) -> None:
    """Both shards' figures under the namespace users connect to, told apart by ``shard``:
    until session 44 shard 1's carried its own Ray namespace (``<ns>~shard1``), so a query
    or the Grafana selector for the engine saw shard 0's half only."""
    port = metrics_port()
    ids = ids_on(0, "metric", 2) + ids_on(1, "metric", 3)
    assert two.enqueue_many([TaskRequest("Echo", id=i) for i in ids]) == [ScheduleResult.SUCCESS] * 5
    assert {i.state for i in two.wait(ids, timeout_s=60)} == {TaskState.SUCCEEDED}
    want = {str(k): s["counts"]["SUCCEEDED"] for k, s in enumerate(two.status()["shards"])}
    assert min(want.values()) >= 2  # both shards hold some

    def succeeded() -> dict[str, float]:
        tasks = scrape_metrics(port, two.namespace, by_shard=True).get("kmpray_tasks", {})
        return {dict(labels).get("shard", "-"): v for labels, v in tasks.items()
                if ("state", "SUCCEEDED") in labels}

    deadline = time.monotonic() + 60  # published every 2 s, exported every few more
    while (got := succeeded()) != want and time.monotonic() < deadline:
        time.sleep(1)
    assert got == want
    assert not scrape_metrics(port, f"{two.namespace}~shard1"), "a shard's own namespace is not an engine's"
    events = scrape_metrics(port, two.namespace, by_shard=True)["kmpray_events_published_total"]
    assert all("shard" not in dict(labels) for labels in events)  # the broker is the engine's, shared

