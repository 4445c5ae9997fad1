"""When the scheduler collects its whole heap (kmpray/timing.py): a whole collection holds
its loop ~0.1 s per 100,000 tasks held, so it runs only when it can pay. And when it
gives the freed pages of a burst of large inputs back to the OS."""

from __future__ import annotations

from kmpray.timing import GC_FULL_GROWTH, GC_FULL_S, TRIM_AFTER_INPUT_CHARS, full_collection_due, trim_due

MB = 2**20


def test_a_whole_collection_waits_for_its_interval_and_for_growth() -> None:
    grown = int(500 * MB * (1 + GC_FULL_GROWTH))
    assert not full_collection_due(GC_FULL_S - 1, grown, 500 * MB)  # too soon, however grown
    assert not full_collection_due(GC_FULL_S + 1, 550 * MB, 500 * MB)  # a steady table: never
    assert not full_collection_due(10 * GC_FULL_S, grown - 1, 500 * MB)
    assert full_collection_due(GC_FULL_S + 1, grown, 500 * MB)
    # Where the OS does not say how big the process is: on time alone, as before.
    assert full_collection_due(GC_FULL_S, None, 500 * MB) and full_collection_due(GC_FULL_S, 1, None)
    assert not full_collection_due(GC_FULL_S - 1, None, None)


def _trims(spilled_each_round: list[int]) -> list[bool]:
    """The housekeeping rounds' decisions, as actors/scheduler_housekeeping.py makes them."""
    trimmed_at = spilled = 0
    out = []
    for now in spilled_each_round:
        spilled, before = now, spilled
        due = trim_due(spilled, trimmed_at, before)
        if due:
            trimmed_at = spilled
        out.append(due)
    return out


def test_the_pages_of_a_burst_of_large_inputs_go_back_once_the_burst_is_over() -> None:
    line = TRIM_AFTER_INPUT_CHARS
    # The round that writes the burst's rows still holds their strings: not then (until
    # session 57 it trimmed there, got nothing back, and never again), the round after.
    assert _trims([0, 2 * line, 2 * line, 2 * line]) == [False, False, True, False]
    # A burst over several rounds: once, after its last.
    assert _trims([line, 2 * line, 3 * line, 3 * line, 3 * line]) == [False, False, False, True, False]
    # Under the line: never; a second burst: once more.
    assert _trims([line // 2, line // 2, line // 2]) == [False] * 3
    assert _trims([2 * line, 2 * line, 4 * line, 4 * line]) == [False, True, False, True]
