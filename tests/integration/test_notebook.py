"""The shipped quickstart notebook, executed on a real Jupyter kernel (nbclient)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_quickstart_notebook_submits_and_watches_a_chain(
    ray_session: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient

    source = resources.files("kmpray") / "examples" / "quickstart.ipynb"
    nb = nbformat.reads(source.read_text(), as_version=4)
    monkeypatch.setenv("RAY_ADDRESS", ray_session.get_runtime_context().gcs_address)
    monkeypatch.setenv("KMPRAY_STATE_DIR", str(tmp_path))
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "chain quickstart-report" in html and "SUCCEEDED" in html  # ChainInfo rendered as tables
    assert "<td>heartbeat</td>" in html  # list_tasks() rendered as a table
    text = "".join(o.get("text", "") for o in outputs)
    assert "quickstart done: 80 rows" in text
