"""A benchmark's or chaos run's state dir is gone when its process ends (bench/common.py
``scratch_dir``). Before session 52 each run left it in the temp folder: a fresh-clone
suite run left ~280 MB there each time (a 200 MB step-data artifact of the multinode run,
every chaos scenario's store and ledger), ``bench chains`` 100 MB a run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

MAKE = (
    "import pathlib; from bench.common import discard, scratch_dir\n"
    "kept = scratch_dir('kmpray-t-'); (pathlib.Path(kept) / 'tasks.db').write_bytes(b'x' * 100)\n"
    "gone = scratch_dir('kmpray-t-'); discard(gone)\n"
    "print(kept, gone, pathlib.Path(gone).exists())\n"
)


def _run(tmp_path: Path, **env: str) -> tuple[Path, Path, str]:
    proc = subprocess.run([sys.executable, "-c", MAKE], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "TMPDIR": str(tmp_path), **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    kept, gone, gone_then = proc.stdout.split()
    assert Path(kept).parent == tmp_path and Path(gone).parent == tmp_path  # made in the temp folder
    return Path(kept), Path(gone), gone_then


def test_a_scratch_folder_is_removed_when_its_process_ends(tmp_path: Path) -> None:
    kept, _, gone_then = _run(tmp_path)
    assert gone_then == "False"  # discard() removed it at once
    assert not kept.exists()  # the other one at the process's exit
    assert list(tmp_path.iterdir()) == []


def test_kmpray_keep_state_keeps_both_for_a_look_after_the_run(tmp_path: Path) -> None:
    kept, _, gone_then = _run(tmp_path, KMPRAY_KEEP_STATE="1")
    assert gone_then == "True"
    assert (kept / "tasks.db").read_bytes() == b"x" * 100


# Every other bench and test module goes through scratch_dir (or a pytest tmp_path).
REMOVED_BY_THEIR_OWN = {"bench/common.py"}


def test_benches_and_tests_make_temp_folders_only_where_they_are_removed() -> None:
    makers = sorted(
        str(path.relative_to(ROOT))
        for top in ("bench", "tests")
        for path in (ROOT / top).rglob("*.py")
        if re.search(r"\bmkdtemp\(|TemporaryDirectory\(\)\.name", path.read_text())
    )
    assert set(makers) <= REMOVED_BY_THEIR_OWN, makers
