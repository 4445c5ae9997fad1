"""``pytest --worker-starts`` (tests/worker_starts.py): counting the raylet's worker starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests import worker_starts
from tests.worker_starts import WorkerStarts, count_started

LINE = ("[2026-12-07 02:05:00,806 I 4684 4684] (raylet) worker_pool.cc:564: Started worker process "
        "with pid {pid} worker_id=aefa4927\n")
OTHER = "[2026-12-07 02:05:00,900 I 4684 4684] (raylet) node_manager.cc:1: Worker 4780 is idle\n"


def test_only_the_raylets_start_lines_count() -> None:
    assert count_started(LINE.format(pid=1) + OTHER + LINE.format(pid=2)) == 2
    assert count_started(OTHER) == 0


def test_each_file_gets_the_starts_between_its_tests_start_and_end(tmp_path: Path, monkeypatch: Any) -> None:
    log = tmp_path / "raylet.out"
    log.write_text(LINE.format(pid=1))  # before the first test: nobody's
    monkeypatch.setattr(worker_starts, "_raylet_log", lambda: str(log))
    plugin = WorkerStarts()

    def append(text: str) -> None:
        with open(log, "a") as f:
            f.write(text)

    plugin.pytest_runtest_logstart("tests/a.py::t1", None)
    append(LINE.format(pid=2) + OTHER + LINE.format(pid=3) + "[partial line")  # the rest comes later
    plugin.pytest_runtest_logfinish("tests/a.py::t1", None)
    append(" Started worker process with pid 4\n")  # the partial line's end: counted once whole
    plugin.pytest_runtest_logstart("tests/b.py::t2", None)  # between tests: nobody's
    append(LINE.format(pid=5))
    plugin.pytest_runtest_logfinish("tests/b.py::t2", None)
    plugin.pytest_runtest_logstart("tests/a.py::t3", None)
    plugin.pytest_runtest_logfinish("tests/a.py::t3", None)
    assert plugin.by_file == {"tests/a.py": 2, "tests/b.py": 1}
