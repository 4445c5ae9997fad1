"""`kmpray bench load` against a real engine on the shared Ray: the open loop holds a small
rate across two client actors, every accepted operation's start is measured (every mix
kind), periodic work is cancelled afterwards, and the CLI writes the JSON the README
documents (single run and --find-max)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from kmpray.bench.load import main as load_main
from kmpray.bench.load import run_once
from kmpray.bench.load_client import task_id
from kmpray.bench.load_plan import KINDS, Profile
from kmpray.bench.stamp import register

from .helpers import ONE_SHARD

pytestmark = pytest.mark.slow


def test_open_loop_over_two_clients_measures_every_kind(engines: Any) -> None:
    sched = engines()
    register(sched)
    mix = {kind: 1.0 for kind in KINDS}
    r = run_once(
        sched,
        sched.namespace,
        sched.state_dir,
        Profile("constant", (60.0,), 2.0),
        mix,
        clients=2,
        max_in_flight=200,
        drain_s=60,
        live=False,
    )
    ops = r["operations"]
    assert ops["requested"] == 120 and ops["sent"] == 120
    assert ops["accepted"] == 120 and ops["started"] == 120, r["errors"]
    assert r["errors"] == {}
    # Every operation sent, answered and started is what this test can assert; the rates
    # (started or accepted per second) and the generator-bound verdict are timing figures
    # for the benchmark: on a loaded CI machine the 2 s span ends 0.15-0.25 s late.
    assert r["requested_rate_per_s"] == 60.0 and r["duration_s"] == 2.0
    assert set(r["latency_ms"]) == set(KINDS)
    for kind, lat in r["latency_ms"].items():
        c, u = lat["corrected"], lat["uncorrected"]
        assert c["n"] > 0 and c["p50"] >= 0, kind
        assert c["max"] >= u["max"] - 1e-6 or kind == "exact", kind  # corrected counts from earlier
    # The periodic tasks it sent are cancelled, not left to run every 15 minutes.
    periodic = [t for t in sched.list_tasks() if t.trigger is not None and t.trigger.kind == "periodic"]
    assert periodic and all(t.state.value == "CANCELLED" for t in periodic)
    assert sum(row["requested"] for row in r["timeline"]) == 120
    assert sched.get_task_info(task_id("x", 0)) is None  # ids belong to the run's own token


def test_cli_writes_the_documented_json(
        ray_session: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both runs use one engine, started by the first: given ``--state-dir``, the tool
    leaves the engine running, and the knee search attaches to it with ``--address`` as a
    user pointing it at their deployment would (~7 s less than a second engine). The
    capacity the knee is set against: one batch of 1,000 here, not three of 5,000 (the
    JSON's keys are checked, not the figure)."""
    import kmpray
    from kmpray.bench import load

    monkeypatch.setattr(load, "CAPACITY_RUNS", 1)
    monkeypatch.setattr(load, "CAPACITY_TASKS", 1_000)

    out, knee = tmp_path / "load.json", tmp_path / "knee.json"
    ns, state = f"load-{uuid.uuid4().hex[:8]}", str(tmp_path / "state")
    common = ["--quiet", "--clients", "1", "--namespace", ns, "--state-dir", state]
    try:
        assert load_main(["--rate", "50", "--duration", "1", *common, "--json", str(out)]) == 0
        r = json.loads(out.read_text())
        missing = {"requested_rate_per_s", "achieved_rate_per_s", "duration_s", "generator_bound",
                   "latency_ms", "timeline", "ack_latency_ms", "cdf_ms", "verdict", "operations"} - set(r)
        assert missing == set()
        assert r["requested_rate_per_s"] == 50 and r["operations"]["started"] == 50
        assert set(r["latency_ms"]["one-time"]) == {"corrected", "uncorrected"}
        assert set(r["latency_ms"]["one-time"]["corrected"]) == {"n", "p50", "p95", "p99", "max"}

        # Trials of 4 s: "achieved" counts starts over the trial's span, so a one-second
        # trial failed its 95 % bar on ~0.1 s of tail alone (a fresh-clone CI run, once: 72
        # of 80/s, answers slow for a moment while the suite held both cores); 4 s take 0.2 s.
        # One trial, at the ceiling: the search itself (doubling, a repeated failure,
        # bisection) is tests/core/test_load_plan.py's; this checks the CLI's JSON.
        knee_args = ["--find-max", "--slo-p99-ms", "60000", "--rate", "40", "--max-rate", "40",
                     "--trial-s", "4"]
        # ... as a user pointing it at a deployment does: --address and the engine's namespace.
        address = ray_session.get_runtime_context().gcs_address
        attach = ["--quiet", "--clients", "1", "--namespace", ns, "--address", address]
        assert load_main([*knee_args, *attach, "--json", str(knee)]) == 0
        k = json.loads(knee.read_text())
        assert [c["rate_per_s"] for c in k["curve"]] == [40]  # not doubled past the ceiling
        assert all(c["passes"] for c in k["curve"]) and k["max_rate_per_s"] == 40
        assert k["at_max"]["requested_rate_per_s"] == 40
        capacity = k["dispatch_capacity_per_s"]
        assert capacity > 0 and abs(k["max_share_of_dispatch"] - 40 / capacity) < 1e-3  # rounded to 3 places
        # measured before the trials and again after each (the median of them all)
        runs = k["dispatch_capacity_runs"]
        assert len(runs) == 2 and abs(capacity - (runs[0] + runs[1]) / 2) <= 0.1
    finally:
        kmpray.connect(namespace=ns, state_dir=state).shutdown()


def test_cli_rejects_bad_arguments_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, word in (
        (["--rate", "0"], "--rate"),
        (["--profile", "zigzag"], "--profile"),
        (["--find-max"], "--slo-p99-ms"),
        (["--rate", "5", "--mix", "cron:1"], "unknown kind"),
        (["--rate", "5", "--clients", "0"], "--clients"),
    ):
        with pytest.raises(SystemExit):
            load_main(argv)
        assert word in capsys.readouterr().err


def test_pointed_at_a_cluster_it_attaches_to_the_running_engine_and_never_starts_one(
        ray_session: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """``--address``: the deployment's engine (namespace ``kmpray`` unless given), or a
    clear error; before, a missing ``--namespace`` load-tested a new engine ('kmpray-load',
    temporary state dir) that stayed on the user's cluster after the run."""
    from kmpray.actors.bootstrap import running_engines

    address = ray_session.get_runtime_context().gcs_address
    assert "kmpray" not in running_engines()
    for extra, named in (([], "'kmpray'"), (["--namespace", "nowhere-x"], "'nowhere-x'")):
        with pytest.raises(SystemExit) as exc:
            load_main(["--rate", "5", "--duration", "1", "--quiet", "--address", address, *extra])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"no engine {named} is running" in err and "kmpray start --address auto" in err
    assert not {"kmpray", "kmpray-load", "nowhere-x"} & set(running_engines())  # none started


def test_a_scheduler_kill_mid_run_shows_in_the_corrected_latency_only(engines: Any) -> None:
    """wrk2's point: with few operations allowed in flight, a ~1-2 s stall (the scheduler
    killed and restarted by Ray) holds back every send due meanwhile. Counted from the
    intended send times the stall is in the tail; counted from the actual sends, only
    the few operations in flight at the kill see it."""
    import ray

    sched = engines()
    register(sched)

    def kill() -> None:
        ray.kill(ray.get_actor("kmpray.scheduler", namespace=sched.namespace), no_restart=False)

    # 9 s at 150/s, the kill at 2 s: the restart (1-4 s in CI) and the backlog it leaves
    # (4 calls in flight) clear before sending stops (at 6 s, 26 operations once went unsent)
    r = run_once(sched, sched.namespace, sched.state_dir, Profile("constant", (150.0,), 9.0), {"one-time": 1.0},
                 clients=1, max_in_flight=4, drain_s=60, live=False, nemesis=(2.0, kill))
    # A restart slower than that (two busy test streams on two cores: 6 unsent) leaves
    # sends still waiting when sending stops: the generator's count, not a loss; every
    # operation sent was accepted and started.
    unsent = r["errors"].get("unsent", 0)
    assert r["operations"]["accepted"] + unsent == 1350 and unsent <= 135, r["errors"]
    assert r["operations"]["started"] == r["operations"]["accepted"], r["errors"]
    corrected, uncorrected = r["latency_ms"]["one-time"]["corrected"], r["latency_ms"]["one-time"]["uncorrected"]
    assert corrected["max"] >= 1000, corrected  # the stall, seen by the operations due during it
    assert corrected["p95"] >= 200, corrected
    assert uncorrected["p95"] < 100, uncorrected  # ...and missed by counting from actual sends
    assert r["operations"]["sends_waiting_on_max_in_flight"] > 50


@ONE_SHARD  # it counts one scheduler's enqueue messages
def test_a_batch_window_sends_fewer_calls_for_the_same_operations(engines: Any) -> None:
    sched = engines()
    register(sched)
    before = sched.status()["messages"].get("enqueue_calls", 0)
    r = run_once(sched, sched.namespace, sched.state_dir, Profile("constant", (400.0,), 2.0),
                 {"one-time": 3.0, "chain": 1.0}, clients=1, max_in_flight=100, drain_s=60, window_ms=20.0,
                 live=False)
    calls = sched.status()["messages"]["enqueue_calls"] - before
    chains = r["operations"]["requested"] - r["latency_ms"]["one-time"]["corrected"]["n"]
    assert r["operations"]["accepted"] == r["operations"]["started"] == 800, r["errors"]
    assert r["batch_window_ms"] == 20.0
    # one-time work rides shared calls (<= one per 20 ms window, 100 in 2 s); chains one each
    assert calls <= chains + 110, (calls, chains)
    assert r["latency_ms"]["one-time"]["corrected"]["p50"] >= r["latency_ms"]["one-time"]["uncorrected"]["p50"]
