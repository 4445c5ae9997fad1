"""An engine on a Ray cluster with token authentication (RAY_AUTH_MODE=token, Ray's
default for local clusters since 2.59): a client with the cluster's token connects and
runs work; one with a wrong token, or none, is refused before it can reach the engine.

The cluster is a Ray instance of its own, started and stopped by this test in its own
process session (auth_cluster.py); the suite's shared Ray is not touched."""

from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    # A home of its own: no ~/.ray/auth_token of this machine's is found by accident.
    return {**env, "HOME": str(tmp), "PYTHONPATH": str(ROOT), **extra}


def _client(address: str, namespace: str, task_id: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _clients(address, namespace, [(task_id, env)])[0]


def _clients(address: str, namespace: str, runs: list[tuple[str, dict[str, str]]]) -> list[Any]:
    """Clients at once (a refused one spends its time in Ray's connection retries)."""
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tests.integration.auth_cluster", "client", address, namespace, task_id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    ) for task_id, env in runs]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return out


def test_a_token_cluster_serves_clients_with_its_token_and_refuses_the_others(tmp_path: Path) -> None:
    token = secrets.token_hex(32)
    home = tmp_path / "home"
    home.mkdir()
    server_env = _env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.auth_cluster", "serve", str(tmp_path / "state"), "auth"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=server_env, cwd=ROOT, start_new_session=True,
    )
    address = ""
    try:
        assert server.stdout is not None
        ready = select.select([server.stdout], [], [], 120)[0]
        line = server.stdout.readline() if ready else ""
        assert line.startswith("ready "), f"the token cluster did not start: {line!r}"
        address = line.split()[1]

        ok = _client(address, "auth", "with-token", _env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
        assert ok.returncode == 0 and "state SUCCEEDED with-token" in ok.stdout, ok.stderr[-2000:]

        # Ray retries a refused connection once a second, 20 times by default; 3 say the same.
        quick = {"RAY_gcs_server_port_wait_time_s": "3"}
        wrong, none = _clients(address, "auth", [
            ("wrong-token", _env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), **quick)),
            ("no-token", _env(home, RAY_AUTH_MODE="disabled", **quick)),
        ])
        assert wrong.returncode != 0 and "state" not in wrong.stdout
        # connect() says what is missing (Ray's own error says only "Failed to connect").
        assert "needs RAY_AUTH_MODE=token (here: token)" in wrong.stderr, wrong.stderr[-2000:]
        assert none.returncode != 0 and "state" not in none.stdout, none.stderr[-2000:]
        assert "needs RAY_AUTH_MODE=token (here: disabled)" in none.stderr, none.stderr[-2000:]

        again = _client(address, "auth", "with-token-2", _env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
        assert again.returncode == 0 and "state SUCCEEDED with-token-2" in again.stdout, again.stderr[-2000:]

        # The load generator pointed at the deployment, the token where `ray start --head`
        # leaves it: it load-tests the engine there as it is (until session 57 it also made
        # a scratch state dir and said it was not used). With `--address auto` and
        # RAY_AUTH_MODE unset Ray finds that token itself (tests/core/test_bench_ray_up.py:
        # the generator no longer turns authentication off for a cluster's address).
        (home / ".ray").mkdir()
        (home / ".ray" / "auth_token").write_text(token)
        report = tmp_path / "load.json"
        load = subprocess.run(
            [sys.executable, "-m", "kmpray.cli", "bench", "load", "--address", address, "--namespace", "auth",
             "--rate", "100", "--duration", "1", "--quiet", "--json", str(report)],
            capture_output=True, text=True, env=_env(home, RAY_AUTH_MODE="token"), cwd=tmp_path, timeout=180,
        )
        assert load.returncode == 0, load.stderr[-3000:]
        operations = json.loads(report.read_text())["operations"]
        assert operations["accepted"] == operations["started"] == 100, operations
        assert "attaching to it as it is" not in load.stdout + load.stderr  # no scratch state dir of its own
    finally:
        _stop(server, address)


def _stop(server: subprocess.Popen[Any], address: str) -> None:
    from kmpray.bench.chaos_restart import _forget_cluster, _kill_session

    try:
        if server.stdin is not None:
            server.stdin.close()  # asks it to shut its engine and Ray down
        server.wait(timeout=60)
    except Exception:
        pass
    _kill_session(server.pid)  # whatever of its Ray instance is left
    server.wait(timeout=30)
    if address:
        _forget_cluster(address)
