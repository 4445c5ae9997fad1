"""The shipped Grafana dashboard reads only metrics the engine publishes, and every metric
the engine publishes is on it."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _published() -> set[str]:
    source = "\n".join(p.read_text() for p in (ROOT / "actors").glob("*.py"))
    return set(re.findall(r'"(kmpray_[a-z_]+)"', source))


def test_every_panel_query_names_a_published_metric_and_every_metric_has_a_panel() -> None:
    dash = json.loads((ROOT / "kmpray" / "dashboard" / "grafana.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for e in exprs for m in re.findall(r"ray_(kmpray_[a-z_]+)", e)}
    published = _published()
    assert len(published) >= 15, published  # the names are found in actors/
    assert used <= published, used - published
    assert published <= used, published - used
    assert {p["id"] for p in dash["panels"]} == set(range(1, len(dash["panels"]) + 1))
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource", "namespace"]
