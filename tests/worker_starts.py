"""``pytest --worker-starts``: how many Ray worker processes each test file started.

Every engine actor is a process of its own, and each costs ~0.5-0.7 s of CPU to start
here (Python, ``import ray``, kmpray's modules): in session 54 the suite started 767 of
them in the shared Ray alone, about 40 % of what its two cores had to give. This counts
them per test (the raylet logs each start) and prints the files that start the most:
where to look first when the suite nears its time budget. Processes of clusters a test
starts itself (test_auth, test_multinode, the hard-restart chaos run) are not counted.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

STARTED = "Started worker process"  # the raylet's line for each worker process it starts


def count_started(log_text: str) -> int:
    """Worker processes the raylet log ``log_text`` records as started."""
    return sum(1 for line in log_text.splitlines() if STARTED in line)


def _raylet_log() -> str | None:
    try:
        import ray

        node = ray._private.worker._global_node
    except Exception:
        return None
    return os.path.join(node.get_session_dir_path(), "logs", "raylet.out") if node is not None else None


class WorkerStarts:
    """The plugin: the raylet log is read as each test starts and ends."""

    def __init__(self) -> None:
        self.by_file: Counter[str] = Counter()
        self._read = 0  # bytes of the raylet log already counted
        self._log: str | None = None

    def _new_starts(self) -> int:
        log = _raylet_log()
        if log is None or not os.path.exists(log):
            return 0
        if log != self._log:  # a new Ray session: its log from the start
            self._log, self._read = log, 0
        with open(log, encoding="utf-8", errors="replace") as f:
            f.seek(self._read)
            text = f.read()
        cut = text.rfind("\n") + 1  # whole lines only: the rest is counted next time
        self._read += len(text[:cut].encode("utf-8", errors="replace"))
        return count_started(text[:cut])

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self._new_starts()  # what happened before this test is not its

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        self.by_file[nodeid.split("::")[0]] += self._new_starts()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        total = sum(self.by_file.values())
        title = f"Ray worker processes started: {total} (the files that started most)"
        terminalreporter.write_sep("=", title)
        for path, n in self.by_file.most_common(15):
            if n:
                terminalreporter.write_line(f"{n:5d}  {path}")
