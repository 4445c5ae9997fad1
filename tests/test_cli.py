"""The command line, run as users run it: in a subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def kmpray(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    # The suite's Ray mode (RAY_AUTH_MODE=token pytest: the session's token, which Ray keeps
    # in ~/.ray/auth_token); disabled by default, as the session fixture does.
    env = {"RAY_AUTH_MODE": "disabled", **os.environ}
    return subprocess.run(
        [sys.executable, "-m", "kmpray.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """A command run in this process (click's runner), answered like ``kmpray()``."""
    from click.testing import CliRunner

    from kmpray.cli import main

    got = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return subprocess.CompletedProcess(["kmpray", *args], got.exit_code, got.stdout, got.stderr)


def test_help_lists_the_commands() -> None:
    out = kmpray("--help")
    assert out.returncode == 0
    for command in ("demo", "start", "stop", "status", "list", "info", "why", "cancel", "events", "bench",
                    "quarantine"):
        assert command in out.stdout


def test_bench_is_reachable_from_the_cli() -> None:
    out = kmpray("bench", "load", "--help")
    assert out.returncode == 0 and "--rate" in out.stdout and "--mix" in out.stdout
    bad = kmpray("bench", "load", "--rate", "10", "--mix", "sometimes:1")
    assert bad.returncode == 2 and "unknown kind 'sometimes'" in bad.stderr
    # named as the user called it (it said "python -m bench", which an installed kmpray has
    # not), its lines as written (argparse ran them into one paragraph)
    out = cli("bench", "--help")
    assert out.stdout.startswith("usage: kmpray bench ") and "python -m bench" not in out.stdout
    assert "\nkmpray bench chaos [--scenario NAME] [--shards N]" in out.stdout
    assert cli("bench", "load", "--help").stdout.startswith("usage: kmpray bench load ")


def test_bad_option_is_one_clear_line_and_exit_code_2() -> None:
    out = kmpray("list", "--state", "SLEEPING")
    assert out.returncode == 2 and "SLEEPING" in out.stderr


def test_no_ray_running_says_how_to_start_one() -> None:
    from kmpray.cli import _hint

    said = _hint(ConnectionError("Could not find any running Ray instance. Please specify ..."))
    assert said.endswith("(start one with `ray start --head`, then `kmpray start`;"
                         " `kmpray demo` runs on an embedded one)")
    assert _hint(ValueError("other")) == "other"


@pytest.mark.slow
def test_demo_runs_end_to_end() -> None:
    out = kmpray("demo")  # as the README's first command runs it
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    # Its store was in a temp folder of its own, removed at the end (left behind before session 52).
    state = re.search(r"state in (\S+), removed at the end", text)
    assert state and "kmpray-demo-" in state[1] and not Path(state[1]).exists(), text[:500]
    assert "progress  sync-now" in text and "100%" in text
    assert "retrying in 30000 ms" in text and "uploaded" in text
    assert "report over 250 records from 2 syncs" in text  # the chain's last step got both outputs
    stream, summary = text.split("\nsummary\n")
    assert "cleanup" in summary and "ENQUEUED" in summary
    # Every run's event is printed, under the quarter of virtual time it ran in: the five
    # cleanup runs (0, 15, 30, 45, 60 min; the last two were missing before advance_time
    # waited for its runs' events), the chain's report before the first quarter.
    quarters = stream.split("-- virtual time +")
    assert [q.count("  ok        cleanup") for q in quarters] == [1, 1, 1, 1, 1], stream
    # a run with nothing to say prints no dangling ": "
    assert not [line for line in stream.splitlines() if line.rstrip().endswith(":")]
    assert "report over 250" in quarters[0] and "synced {'records': 200}" in quarters[3]  # nightly at +40
    assert "7 tasks, 11 runs" in summary
    # the summary is the end: no event line after it
    assert not [line for line in summary.splitlines() if line.startswith(("  progress", "  ok ", "  fail"))]


def test_cluster_yaml_names_what_the_engine_asks_for() -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands"):
        assert key in config
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any("heavy" in t.get("resources", {}) for t in types.values())
    assert any("kmpray start" in c for c in config["head_start_ray_commands"])
    # Token authentication on every node, with the token at Ray's default path on each.
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if c != "ray stop")
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # The engine it starts sends heavy tasks to the heavy nodes, and no more heavy workers
    # than they hold: until session 47 `kmpray start` could not be given an EngineConfig,
    # so heavy tasks ran on any node and the heavy node type never scaled up.
    import shlex

    from kmpray.cli import engine_config

    [start] = [shlex.split(c) for c in config["head_start_ray_commands"] if "kmpray start" in c]
    engine = engine_config(start[start.index("--config") + 1])
    wanted = engine.heavy_resources.items()
    heavy = [t for t in types.values() if all(t["resources"].get(r, 0) >= n for r, n in wanted)]
    assert engine.heavy_resources and heavy == [types["heavy"]]
    each = min(types["heavy"]["resources"]["CPU"] // engine.heavy_num_cpus,
               *(types["heavy"]["resources"][r] // n for r, n in engine.heavy_resources.items()))
    assert engine.heavy_pool_size == each * types["heavy"]["max_workers"]


def test_start_config_is_engine_config_json_inline_or_in_a_file(tmp_path: Path) -> None:
    import click

    from kmpray.cli import engine_config

    assert engine_config(None) is None
    assert engine_config(None, 2).scheduler_shards == 2
    inline = engine_config('{"max_input_bytes": 1000, "heavy_resources": {"heavy": 1}}', 2)
    assert (inline.max_input_bytes, inline.heavy_resources) == (1000, {"heavy": 1.0})
    assert inline.scheduler_shards == 2
    (tmp_path / "engine.json").write_text('{"http_deny_private": true}')
    for given in (str(tmp_path / "engine.json"), f"@{tmp_path / 'engine.json'}"):
        assert engine_config(given).http_deny_private is True
    for bad, said in [
        ('{"max_input_bytes": -1}', "EngineConfig.max_input_bytes: Input should be greater than 0 (was -1)"),
        ('{"max_inpt_bytes": 1}', "EngineConfig.max_inpt_bytes: Extra inputs are not permitted"),
        ("[1]", "must be a JSON object of EngineConfig fields, got list"),
        ("{bad", "not JSON (Expecting property name"),
        (str(tmp_path / "missing.json"), f"cannot read {str(tmp_path / 'missing.json')!r}: No such file"),
    ]:
        with pytest.raises(click.BadParameter) as caught:
            engine_config(bad)
        assert said in caught.value.message and caught.value.param_hint == "--config", caught.value.message


@pytest.mark.ray
def test_inspect_and_cancel_a_live_engine(vengine, ray_session) -> None:  # type: ignore[no-untyped-def]
    import json as _json

    from kmpray import ONE_HOUR, TaskRequest, TaskTrigger

    vengine.enqueue("done", TaskTrigger.OneTime(), "Echo", input="cli")
    vengine.wait("done", timeout_s=30)
    vengine.enqueue("later", TaskTrigger.OneTime(ONE_HOUR), "Echo")
    engine = ["--address", ray_session.get_runtime_context().gcs_address, "--namespace", vengine.namespace]

    # An inspection never starts an engine: a mistyped namespace is an error naming the
    # running ones, and leaves no actor behind (it used to start a whole detached engine).
    address = engine[1]
    typo = cli("status", "--address", address, "--namespace", "no-such-engine")
    assert typo.returncode == 1 and "no engine 'no-such-engine' is running" in typo.stderr
    assert vengine.namespace in typo.stderr.split("(running: ")[1]  # the running engines, named
    assert not [e for e in ray_session.util.list_named_actors(all_namespaces=True)
                if e["namespace"] == "no-such-engine"]

    # One command as its own process (the exit code and output a shell sees); the rest run
    # in this process through click's runner (a process each would be ~1.5 s of imports).
    status = kmpray("status", *engine, "--json")
    assert status.returncode == 0, status.stderr[-1000:]
    counts = _json.loads(status.stdout)["counts"]
    assert (counts["SUCCEEDED"], counts["ENQUEUED"]) == (1, 1)
    messages = _json.loads(status.stdout)["messages"]  # what the two enqueues and one run cost
    assert messages["enqueue_calls"] >= 2 and messages["submits_sent"] >= 1
    # The run's result came back by a report of its own, or in its submit's answer (a run
    # that ends within 2 ms of arriving; its class was loaded already).
    assert messages.get("reports_received", 0) + messages.get("results_in_answers", 0) >= 1
    assert 1 <= messages["commits"]

    text_status = cli("status", *engine)
    assert "node " in text_status.stdout and "battery=" in text_status.stdout
    assert f"{messages['enqueue_calls']} enqueue calls" in text_status.stdout
    runs = _json.loads(status.stdout)["runs"]  # the dashboard's figures, in the text too
    assert runs["dispatched"] == 1 and runs["finished"] == {"succeeded": 1}
    assert "runs since start: 1 handed over, 1 succeeded" in text_status.stdout

    listed = cli("list", *engine, "--state", "enqueued")
    assert listed.returncode == 0 and "later" in listed.stdout and "done" not in listed.stdout
    # Most recently updated first, --limit of them (default 100), the rest counted on stderr;
    # --worker picks one class; --json says how many there were.
    vengine.advance_time(1_000)
    vengine.enqueue("newest", TaskTrigger.OneTime(ONE_HOUR), "Noop")
    newest = _json.loads(cli("list", *engine, "--limit", "1", "--json").stdout)
    assert (newest["total"], newest["shown"], [t["id"] for t in newest["tasks"]]) == (3, 1, ["newest"])
    assert newest["tasks"][0]["state"] == "ENQUEUED" and newest["tasks"][0]["worker_class_name"] == "Noop"
    echo = _json.loads(cli("list", *engine, "--worker", "Echo", "--limit", "0", "--json").stdout)
    assert (echo["total"], sorted(t["id"] for t in echo["tasks"])) == (2, ["done", "later"])
    one = cli("list", *engine, "--limit", "1")
    assert one.returncode == 0 and "newest" in one.stdout and "later" not in one.stdout
    assert one.stderr.strip() == "1 of 3 tasks shown, the most recently updated (--limit 0: all)"
    assert cli("list", *engine, "--limit", "-1").returncode == 2  # click names the option

    info = cli("info", *engine, "done")
    assert info.returncode == 0 and _json.loads(info.stdout)["state"] == "SUCCEEDED"
    missing = cli("info", *engine, "nope")
    assert missing.returncode == 1 and "no task or chain 'nope'" in missing.stderr
    vengine.begin_with(TaskRequest("Echo", id="in-chain")).with_id("a-chain").enqueue()
    vengine.wait("a-chain", timeout_s=30)
    chain = _json.loads(cli("info", *engine, "a-chain").stdout)
    assert chain["state"] == "SUCCEEDED"
    assert [[t["id"] for t in step] for step in chain["steps"]] == [["in-chain"]]

    events = cli("events", *engine, "--since", "0")
    lines = [_json.loads(line) for line in events.stdout.splitlines()]
    assert lines[0]["cursor"] == 1 and lines[0]["task_id"] == "done"
    bad = cli("events", *engine, "--since", "999999")
    assert bad.returncode == 1 and "beyond the last event" in bad.stderr
    # --follow until stopped: SIGTERM (a supervisor, `timeout`) ends it as Ctrl-C does, cleanly
    # (Ray's signal handler printed "*** SIGTERM received ***" and a C stack).
    env = {"RAY_AUTH_MODE": "disabled", **os.environ}
    argv = [sys.executable, "-m", "kmpray.cli", "events", *engine, "--follow", "--since", "0"]
    follow = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert follow.stdout is not None and _json.loads(follow.stdout.readline())["cursor"] == 1
        follow.send_signal(signal.SIGTERM)
        _out, err = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == 0 and "SIGTERM" not in err, err[-2000:]

    why = cli("why", *engine, "later")
    assert why.returncode == 0 and "waiting for: due at " in why.stdout
    unknown = cli("why", *engine, "nope")
    assert unknown.returncode == 1 and "no task or chain 'nope'" in unknown.stderr
    cancelled = cli("cancel", *engine, "later")
    assert cancelled.returncode == 0 and "cancelled 1" in cancelled.stdout
    assert vengine.get_task_info("later").state.value == "CANCELLED"
    again = cli("cancel", *engine, "later")
    assert again.returncode == 1 and "nothing unfinished" in again.stderr


@pytest.mark.ray
def test_start_brings_up_an_engine_on_a_running_cluster(ray_session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import kmpray as lib

    address = ray_session.get_runtime_context().gcs_address
    out = kmpray("start", "--address", address, "--namespace", "cli-start", "--state-dir", str(tmp_path),
                 "--config", '{"max_input_bytes": 1000}', "--platform", "android")
    assert out.returncode == 0 and "engine 'cli-start' running" in out.stdout, out.stderr[-1000:]
    attached = lib.connect(namespace="cli-start", state_dir=str(tmp_path), platform="android")
    try:
        assert attached.status()["executors"] >= 1  # the detached engine outlived the CLI process
        kept = attached.enqueue("kept", lib.TaskTrigger.OneTime(lib.ONE_HOUR), "HttpRequestWorker")
        assert kept.value == "SUCCESS"
        # started with the config and platform it was given
        big = attached.enqueue("big", lib.TaskTrigger.OneTime(), "HttpRequestWorker", input="x" * 2000)
        assert big.value == "REJECTED_INVALID_PARAMS"
        assert attached.last_reason == "input: 2000 bytes, more than the cap of 1000 bytes"
        minute = attached.enqueue("p", lib.TaskTrigger.Periodic(lib.ONE_MINUTE), "HttpRequestWorker")
        assert minute.value == "REJECTED_INVALID_PARAMS" and "below the android minimum" in (attached.last_reason or "")
        again = cli("start", "--address", address, "--namespace", "cli-start")  # no warning: nothing asked
        assert again.returncode == 0 and "already running" not in again.stderr, again.stderr
    finally:
        stopped = cli("stop", "--address", address, "--namespace", "cli-start")
        attached.shutdown()
    assert stopped.returncode == 0 and "engine 'cli-start' stopped" in stopped.stdout, stopped.stderr
    from tests.integration.helpers import until

    until(lambda: not [e for e in ray_session.util.list_named_actors(all_namespaces=True)
                       if e["namespace"] == "cli-start"], what="every actor of that engine to be gone")  # ...
    again = cli("stop", "--address", address, "--namespace", "cli-start")
    assert again.returncode == 1 and "no engine 'cli-start' is running" in again.stderr
    back = lib.connect(namespace="cli-start", state_dir=str(tmp_path))
    try:  # ...and its tasks stayed in the store
        assert back.get_task_info("kept").state.value == "ENQUEUED"
    finally:
        back.shutdown()
    # Another shard count on that state dir: refused, saying so (not "cannot reach the engine")
    other = cli("start", "--address", address, "--namespace", "cli-start", "--state-dir", str(tmp_path),
                "--shards", "2")
    assert other.returncode == 1, other.stdout
    assert other.stderr.startswith("Error: the engine refused its store: "), other.stderr[-1000:]
    assert "written with scheduler_shards=1; it was started with scheduler_shards=2" in other.stderr


@pytest.mark.ray
def test_quarantine_lists_and_drops_damaged_rows(ray_session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json as _json
    import sqlite3

    import kmpray as lib
    from kmpray import ONE_HOUR, TaskTrigger

    state = tmp_path / "state"
    first = lib.connect(namespace="cli-quarantine", state_dir=str(state), virtual_time=True)
    first.enqueue("good", TaskTrigger.OneTime(ONE_HOUR), "HttpRequestWorker")
    first.enqueue("bad", TaskTrigger.OneTime(ONE_HOUR), "HttpRequestWorker")
    first.shutdown()
    conn = sqlite3.connect(state / "tasks.db")
    conn.execute("UPDATE tasks SET row = ? WHERE key = 'bad'", (b"\x80\x04not msgpack",))
    conn.commit()
    conn.close()
    second = lib.connect(namespace="cli-quarantine", state_dir=str(state), virtual_time=True)
    engine = ["--address", ray_session.get_runtime_context().gcs_address, "--namespace", "cli-quarantine"]
    try:
        listed = kmpray("quarantine", *engine, "--json")
        assert listed.returncode == 0, listed.stderr[-1000:]
        (row,) = _json.loads(listed.stdout)
        assert (row["table"], row["key"], row["head"][:4]) == ("tasks", "bad", "8004")
        assert "checksum mismatch" in row["reason"]
        status = cli("status", *engine)  # in this process, as above
        assert "1 rows quarantined: see `kmpray quarantine`" in status.stdout
        dropped = cli("quarantine", *engine, "--drop", "bad")
        assert dropped.returncode == 0 and "dropped 1" in dropped.stdout
        assert second.quarantined() == [] and second.get_task_info("good").state.value == "ENQUEUED"
    finally:
        second.shutdown()


def test_status_says_how_many_finished_rows_are_kept_in_the_store_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kmpray.cli

    class Engine:
        def status(self) -> dict[str, object]:
            return {"namespace": "n", "platform": "cluster", "virtual_time": False, "executors": 2,
                    "inflight": 0, "ready": 0, "counts": {"SUCCEEDED": 40, "FAILED": 2}, "workers": ["Echo"],
                    "finished_in_store_only": 37}

    monkeypatch.setattr(kmpray.cli, "_attach", lambda *_args: Engine())
    out = cli("status", "--namespace", "n")
    assert out.returncode == 0
    assert "SUCCEEDED=40  FAILED=2  (37 finished kept in the store only)" in out.stdout
