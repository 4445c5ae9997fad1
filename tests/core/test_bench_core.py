"""``bench core``: the scheduler's per-task path without Ray, against SQLite alone."""

from __future__ import annotations

import json
from pathlib import Path

from bench import core


def test_the_core_path_runs_every_task_to_success_and_reports_its_phases() -> None:
    us, phases, (row_bytes, event_bytes) = core._core_run(1_200)  # raises unless all 1,200 SUCCEEDED
    assert set(phases) == {"submit", "take", "complete", "write"}
    assert 0 < sum(phases.values()) <= us * 1.01  # the phases are inside the total
    assert 40 < row_bytes < 400 and 40 < event_bytes < 400  # a run-now row and its completion event


def test_the_json_holds_both_figures_and_their_ratio(tmp_path: Path) -> None:
    out = tmp_path / "core.json"
    r = core.run(quick=True, json_path=str(out))
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "core" and saved["tasks"] == 5_000 and saved["repeats"] == 3
    floor, mine = saved["sqlite_floor_us_per_task"], saved["core_us_per_task"]
    assert 0 < floor["best"] <= floor["median"] and 0 < mine["best"] <= mine["median"]
    assert saved["ratio_to_floor"] == r["ratio_to_floor"]
    assert abs(saved["ratio_to_floor"] - mine["median"] / floor["median"]) < 0.02
    assert saved["target_met"] is (mine["best"] <= 25.0)
