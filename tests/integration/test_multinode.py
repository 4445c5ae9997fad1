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
    assert out["scheduler_node"] == out["head"]  # pinned hard to the head, with the store


def test_a_worker_node_removed_mid_load_loses_nothing() -> None:
    out = _run("fault")
    fault = out["fault"]
    print("node removal:", fault)
    assert out["not_succeeded"] == []
    assert fault["succeeded"] == fault["submitted"] == 300 and fault["lost"] == 0  # type: ignore[index]
    # Re-runs only of what was in flight (on the removed node) when it went.
    assert fault["duplicated"] <= fault["in_flight_at_fault"]  # type: ignore[index]
    # The engine stayed on the head; the dead node's executors were retired.
    after = out["after_fault"]
    assert after["scheduler_node"] == out["head"]  # type: ignore[index]
    # The dead node's executors were retired; the node that joined got its own.
    assert sorted(after["executor_nodes"]) == sorted([out["head"], out["joined"]])  # type: ignore[index]
    # The heavy run lost with the node ran again, on the joined node's new heavy worker.
    assert out["heavy_after_fault"] == {"state": "SUCCEEDED", "node": True, "runs": 2}
