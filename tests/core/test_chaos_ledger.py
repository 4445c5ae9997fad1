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


def test_kill_accounting_tells_runs_killed_mid_run_from_results_lost_after_a_finish(tmp_path: Path) -> None:
    from kmpray.bench.chaos_common import kill_accounting

    ledger = tmp_path / "ledger"
    ledger.write_text("".join(f"{what} {task} {attempt} {pid} {t}.0\n" for what, task, attempt, pid, t in [
        ("start", "a", 0, 10, 1), ("start", "a", 0, 11, 2), ("finish", "a", 0, 11, 3),  # killed mid-run in 10
        ("start", "b", 0, 10, 1), ("finish", "b", 0, 10, 1), ("start", "b", 0, 11, 2),  # finished in 10, lost
        ("start", "c", 0, 10, 1), ("finish", "c", 0, 10, 2),                           # finished, stored
        ("start", "d", 0, 12, 1), ("start", "d", 0, 13, 2),                            # 12 was never killed
        ("start", "e", 0, 10, 1),                                                      # in flight, not ack'd
    ]))
    got = kill_accounting(ledger, {"a", "b", "c", "d"}, killed_pids={10})
    assert got == {"runs_in_flight_at_kills": 1, "rerun_after_finish": 1}
    assert kill_accounting(ledger, {"a", "b", "c", "d"}, killed_pids=set()) == {
        "runs_in_flight_at_kills": 0, "rerun_after_finish": 0}
    # the start lines alone are what ledger_starts counts: finish lines are not starts
    from kmpray.bench.chaos_common import ledger_starts

    assert ledger_starts(ledger)["b"] == 2


def test_a_join_step_that_began_before_both_parallel_steps_were_done_breaks_the_barrier(tmp_path: Path) -> None:
    from kmpray.bench.chaos_common import barrier_violations

    ledger = tmp_path / "ledger"
    ledger.write_text("".join(f"{what} {task} 0 {pid} {t}\n" for what, task, pid, t in [
        # c1: both steps finished, then the join began: kept
        ("start", "c1-a", 10, 1.0), ("start", "c1-b", 10, 1.0), ("finish", "c1-a", 10, 1.1),
        ("finish", "c1-b", 10, 1.2), ("start", "c1-c", 10, 1.3), ("finish", "c1-c", 10, 1.4),
        # c2: the join began while b was still running
        ("start", "c2-a", 10, 2.0), ("start", "c2-b", 10, 2.0), ("finish", "c2-a", 10, 2.1),
        ("start", "c2-c", 10, 2.2), ("finish", "c2-b", 10, 2.3),
        # c3: a finished in a killed process, ran again after the join had begun
        ("start", "c3-a", 10, 3.0), ("finish", "c3-a", 10, 3.1), ("start", "c3-b", 11, 3.0),
        ("finish", "c3-b", 11, 3.1), ("start", "c3-c", 11, 3.2), ("start", "c3-a", 11, 3.3),
        ("finish", "c3-a", 11, 3.4),
        # c4: b never finished, the join began anyway
        ("start", "c4-a", 10, 4.0), ("finish", "c4-a", 10, 4.1), ("start", "c4-b", 10, 4.0),
        ("start", "c4-c", 10, 4.2),
        # c5: the join never began (lost or never started: counted elsewhere)
        ("start", "c5-a", 10, 5.0), ("finish", "c5-a", 10, 5.1),
        # c6: a re-run before the join (killed mid-run, then done): kept
        ("start", "c6-a", 10, 6.0), ("start", "c6-a", 11, 6.1), ("finish", "c6-a", 11, 6.2),
        ("start", "c6-b", 11, 6.0), ("finish", "c6-b", 11, 6.1), ("start", "c6-c", 11, 6.3),
    ]))
    chains = ["c1", "c2", "c3", "c4", "c5", "c6"]
    assert barrier_violations(ledger, chains) == 3  # c2, c3, c4
    assert barrier_violations(ledger, ["c1", "c5", "c6"]) == 0


def test_a_lost_task_is_reported_with_its_state_and_the_engines_account() -> None:
    """One no-wait run lost a task (session 58) and said only "lost 1": now each lost task
    comes with its state at the end (None: no row) and the last lines of ``explain``."""
    from kmpray.bench.chaos import _lost_detail

    from kmpray import TaskState
    from kmpray.client.waiting import TaskNotFound

    class Sched:
        def explain(self, task_id: str) -> str:
            if task_id == "gone":
                raise TaskNotFound("gone")
            return "\n".join(f"line {i}" for i in range(20))

    assert _lost_detail(Sched(), "t1", TaskState.ENQUEUED) == {
        "id": "t1", "state": "ENQUEUED", "explain": [f"line {i}" for i in range(4, 20)]}
    assert _lost_detail(Sched(), "gone", None) == {
        "id": "gone", "state": None, "explain": ["TaskNotFound: no task or chain 'gone'"]}
