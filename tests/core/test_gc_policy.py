"""When the scheduler collects its whole heap (kmpray/timing.py): a whole collection holds
its loop ~0.1 s per 100,000 tasks held, so it runs only when it can pay."""

from __future__ import annotations

from kmpray.timing import GC_FULL_GROWTH, GC_FULL_S, full_collection_due

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
