"""The chaos driver's double-execution count (bench/chaos_common.py): a task started again
after its process was killed is the kill's; any other second start is a bug."""

from __future__ import annotations

from pathlib import Path

from kmpray.bench.chaos_common import ledger_starts, rerun_after_kills


def test_only_reruns_after_a_killed_process_are_the_kills(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    ledger.write_text("".join(f"start {task} 0 {pid} {t}.0\n" for task, pid, t in [
        ("a", 10, 1), ("b", 10, 1), ("a", 11, 2),          # a: began in killed 10, ran again
        ("c", 12, 3), ("c", 13, 4),                         # c: its first process was never killed
        ("d", 10, 1), ("d", 14, 2), ("d", 11, 5),           # d: two starts after each other, 14 alive
        ("e", 10, 1), ("e", 15, 2), ("e", 16, 3),           # e: killed 10, killed 15, then ran
        ("x", 10, 1), ("x", 11, 2),                         # not acknowledged: not counted
    ]))
    ids = {"a", "b", "c", "d", "e"}
    starts = ledger_starts(ledger)
    assert sum(1 for t in ids if starts[t] > 1) == 4
    assert rerun_after_kills(ledger, ids, killed_pids={10, 15}) == 2  # a and e; c and d are not the kills'
    assert rerun_after_kills(ledger, ids, killed_pids=set()) == 0
