"""Several raylets on this machine (ray.cluster_utils.Cluster), in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _run(*args: str) -> dict[str, object]:
    script = Path(__file__).with_name("multinode.py")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return dict(json.loads(lines[-1][len("RESULT ") :]))


def test_placement_on_a_two_node_cluster() -> None:
    out = _run()
    assert sorted(out["executor_nodes"]) == sorted([out["head"], out["other"]])  # one per CPU per node
    assert out["on_other"] == out["other"]  # the only charging node
    assert out["on_head"] == out["head"]  # after the states swapped
    assert out["heavy"] == out["other"]  # the node with the `heavy` resource
    assert out["spread"] == sorted([out["head"], out["other"]])  # light work used both nodes


@pytest.mark.xfail(
    strict=False,
    reason="known intermittent bug: with runs in flight on a removed node, some tasks may never "
    "finish (cause not found yet). Not strict: it passes in some runs.",
)
def test_a_worker_node_removed_mid_load_loses_nothing() -> None:
    fault = _run("fault")["fault"]
    print("node removal:", fault)
    assert fault["succeeded"] == fault["submitted"] == 300 and fault["lost"] == 0  # type: ignore[index]
    assert fault["duplicated"] <= 256  # type: ignore[index]
