"""``bench plot``: each benchmark's JSON drawn against its same-run baseline (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="pictures need kmpray[bench]")

from bench.__main__ import main  # noqa: E402
from bench.plots import plot  # noqa: E402

CDF = [float(i) for i in range(101)]
RESULTS = {
    "dispatch": {"tasks": 10_000, "engine_tasks_per_s": 9000.0, "engine_durability_full_tasks_per_s": 8000.0,
                 "raw_ray_tasks_per_s": 1800.0, "ratio": 5.0},
    "latency": {"rate_per_s": 3000.0, "cdf_ms": {"engine": CDF, "raw Ray": [c * 10 for c in CDF]}},
    "timers": {"timers": 10_000, "target_p99_ms": 10, "cdf_ms": {"engine": CDF, "asyncio baseline": CDF}},
    "chains": {"sequential_steps": 1000, "engine_ms_per_step": 0.56, "in_process_ms_per_step": 0.5,
               "raw_ray_ms_per_step": 2.2, "parallel_width": 5000, "engine_fanout_tasks_per_s": 5500.0,
               "raw_ray_fanout_tasks_per_s": 1500.0, "fanout_ratio": 3.7},
    "chaos-scheduler": {"nemesis": "kills the scheduler every 2 s", "kills": 2, "lost": 0, "executed_twice": 0,
                        "timeline": {"starts_per_s": [900, 1000, 0, 800, 1000], "kills": [[1.5, 1.2], [3.2, 0.5]]}},
}


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_each_benchmark_draws_a_png_next_to_its_json(name: str, tmp_path: Path) -> None:
    [png] = plot(name, RESULTS[name], tmp_path / f"{name}.json")
    assert png == tmp_path / f"{name}.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nothing_to_draw_draws_nothing(tmp_path: Path) -> None:
    assert plot("latency", {"rate_per_s": 1.0}, tmp_path / "latency.json") == []  # an old JSON: no CDF
    assert plot("memory", {}, tmp_path / "memory.json") == []


def test_bench_plot_draws_saved_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import bench.plots

    (tmp_path / "dispatch.json").write_text(json.dumps({"benchmark": "dispatch", **RESULTS["dispatch"]}))
    monkeypatch.setattr(bench.plots, "RESULTS", tmp_path)
    assert main(["plot", "dispatch"]) == 0
    assert (tmp_path / "dispatch.png").exists() and "dispatch.png" in capsys.readouterr().out
