"""The shipped quickstart notebook, executed on a real Jupyter kernel (nbclient)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def run_notebook(name: str, ray_session: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Execute a shipped example against the session's Ray; its cells' outputs, none an error."""
    import nbformat
    from nbclient import NotebookClient

    source = resources.files("kmpray") / "examples" / name
    nb = nbformat.reads(source.read_text(), as_version=4)
    monkeypatch.setenv("RAY_ADDRESS", ray_session.get_runtime_context().gcs_address)
    monkeypatch.setenv("KMPRAY_STATE_DIR", str(tmp_path))
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"], outputs
    return outputs


def test_quickstart_notebook_submits_and_watches_a_chain(
    ray_session: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = run_notebook("quickstart.ipynb", ray_session, tmp_path, monkeypatch)
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "chain quickstart-report" in html and "SUCCEEDED" in html  # ChainInfo rendered as tables
    assert "<td>heartbeat</td>" in html  # list_tasks() rendered as a table
    text = "".join(o.get("text", "") for o in outputs)
    assert "quickstart done: 80 rows" in text


def test_numpy_pipeline_notebook_passes_arrays_between_steps(
    ray_session: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = run_notebook("numpy_pipeline.ipynb", ray_session, tmp_path, monkeypatch)
    shown = "".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "'$kmpray': 'ndarray'" in shown and "'shape': [4000, 500]" in shown  # the row holds a descriptor
    text = "".join(o.get("text", "") for o in outputs)
    assert "ndarray (4000, 500) float64 writeable: False" in text
    assert "pipeline done: 4000 rows" in text
    assert len(list(tmp_path.rglob("artifacts/*.npy"))) >= 6  # x, four quarters, z (cov is small: in the row)
