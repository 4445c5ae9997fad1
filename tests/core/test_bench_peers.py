"""bench peers' arithmetic and its install list, without Ray, Redis or the peers."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bench import peers


def test_measure_reports_the_burst_rate_and_the_paced_latency_per_task() -> None:
    sent: dict[str, float] = {}

    def send(tid: str) -> None:
        sent[tid] = peers.time.time() * 1000

    def starts(ids: list[str]) -> dict[str, float]:  # each task starts 2 ms after its send
        return {t: sent[t] + 2.0 for t in ids}

    got = peers._measure(200, 20, send, starts)
    assert [t for t in sent if t.startswith("t")] == [f"t{i}" for i in range(200)]
    assert [t for t in sent if t.startswith("p")] == [f"p{i}" for i in range(20)]
    # 2 ms after the fake's own send stamp, which it takes just after the harness's
    assert 2.0 <= got["start_latency_ms"]["p50"] < 3.0 and 2.0 <= got["start_latency_ms"]["p99"] < 5.0
    assert got["tasks_per_s"] > 1_000  # 200 sends in well under 0.2 s, nothing else in the span
    span = (sent["p19"] - sent["p0"]) / 1000
    assert 19 / peers.PACED_RATE - 0.01 <= span < 19 / peers.PACED_RATE + 0.5  # the paced phase is paced


def test_install_asks_pip_for_the_peers_extra_and_apt_for_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr(peers.subprocess, "run", lambda argv, **kw: ran.append(list(argv)))
    monkeypatch.setattr(peers.shutil, "which", lambda name: None)
    peers.install()
    extra = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert ran[0][1:5] == ["-m", "pip", "install", "-q"]
    assert ran[0][5:] == extra["project"]["optional-dependencies"]["peers"] and "huey>=2.5" in ran[0]
    assert ran[1][:2] == ["apt-get", "install"] and ran[1][-1] == "redis-server"
