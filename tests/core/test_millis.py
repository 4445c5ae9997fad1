"""Times in milliseconds have a range (kmpray/millis.py): an instant up to the end of the
year 9999, a duration up to 100 years. Past it a value is refused naming the field (and the
likely unit), where before ``Exact(time.time_ns())`` was a task due in the year 56,930,173,
and a due time past 2**64 ms failed its store write with ``FAILED_UNKNOWN`` and no reason."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from kmpray import Constraints, ScheduleResult, TaskState, TaskTrigger, WorkerResult, intake
from kmpray.clock import ManualClock
from kmpray.driver import step_through
from kmpray.millis import MAX_DURATION_MS, MAX_EPOCH_MS, utc_text
from kmpray.records import TaskRecord
from kmpray.store import SqliteTaskStore

from .conftest import START, Harness

NOW_NS = 1_796_480_590_638_000_000  # 2026-12-05 in nanoseconds, as time.time_ns() gives it


def _refusal(make: object) -> str:
    with pytest.raises(ValidationError) as caught:
        make()  # type: ignore[operator]
    return str(caught.value)


def test_an_instant_past_the_year_9999_is_refused_naming_the_field_and_the_likely_unit() -> None:
    said = _refusal(lambda: TaskTrigger.Exact(NOW_NS))
    assert "at_epoch_millis" in said and "after the year 9999" in said and "looks like nanoseconds" in said
    said = _refusal(lambda: TaskTrigger.Windowed(START, NOW_NS // 1000))
    assert "end_epoch_millis" in said and "looks like microseconds" in said
    assert "looks like" not in _refusal(lambda: TaskTrigger.Exact(10**30))
    assert TaskTrigger.Exact(MAX_EPOCH_MS).at_epoch_millis == MAX_EPOCH_MS  # the last instant is fine
    assert utc_text(MAX_EPOCH_MS) == "9999-12-31 23:59:59"


@pytest.mark.parametrize("make", [
    lambda v: TaskTrigger.OneTime(initial_delay_ms=v),
    lambda v: TaskTrigger.Periodic(v),
    lambda v: TaskTrigger.Periodic(MAX_DURATION_MS, flex_ms=v),
    lambda v: Constraints(backoff_delay_ms=v),
    lambda v: Constraints(timeout_ms=v),
    lambda v: WorkerResult.Retry(delay_ms=v),
], ids=["initial_delay_ms", "interval_ms", "flex_ms", "backoff_delay_ms", "timeout_ms", "retry_delay_ms"])
def test_a_duration_over_100_years_is_refused_naming_the_field(make: object) -> None:
    make(MAX_DURATION_MS)  # type: ignore[operator]  # 100 years is allowed
    said = _refusal(lambda: make(MAX_DURATION_MS + 1))  # type: ignore[operator]
    assert "over 100 years" in said


def test_over_the_wire_an_out_of_range_time_is_rejected_in_one_line_and_nothing_is_stored() -> None:
    h = Harness()
    task = {"id": "t", "worker": "Ok"}
    cases = [
        ({"trigger": {"kind": "exact", "at_epoch_millis": NOW_NS}},
         "trigger.exact.at_epoch_millis: 1796480590638000000 is after the year 9999: epoch "
         "milliseconds expected (this looks like nanoseconds)"),
        ({"trigger": {"kind": "one_time", "initial_delay_ms": 10**20}},
         "trigger.one_time.initial_delay_ms: 100000000000000000000 ms is over 100 years"),
        ({"trigger": {"kind": "one_time"}, "constraints": {"timeout_ms": 2**64}},
         "constraints.timeout_ms: 18446744073709551616 ms is over 100 years"),
    ]
    for change, reason in cases:
        out = intake.submit(h.core, {**task, **change})
        assert out.result is ScheduleResult.REJECTED_INVALID_PARAMS
        assert (out.reason or "").startswith(reason) and "\n" not in (out.reason or ""), out.reason
    assert not h.core.tasks.keys()
    # The longest allowed: stored, listed, shown.
    far = {"kind": "one_time", "initial_delay_ms": MAX_DURATION_MS}
    assert intake.submit(h.core, {**task, "trigger": far}).result is ScheduleResult.SUCCESS
    h.flush()
    info = h.core.info(h.core.latest("t"))  # type: ignore[arg-type]
    assert info.next_run_at_ms == START + MAX_DURATION_MS and "due at 2123-" in info.waiting_for.message  # type: ignore[union-attr]


def test_virtual_time_stops_at_the_year_9999() -> None:
    h = Harness()
    clock = ManualClock(START)
    with pytest.raises(ValueError, match="past the year 9999"):
        next(step_through(h.core, clock, MAX_EPOCH_MS - START + 1))
    assert clock.now_ms() == START
    assert list(step_through(h.core, clock, MAX_EPOCH_MS - START)) == [START, MAX_EPOCH_MS]


def test_a_row_stored_out_of_range_by_an_earlier_version_is_quarantined_saying_why(tmp_path: Path) -> None:
    """A task due in the year 56,930,173 (stored before the range existed) is refused at
    the restore in one line naming the field, and every other row is served."""
    far = TaskTrigger.Exact.model_construct(at_epoch_millis=NOW_NS)  # what an earlier version accepted
    rows = [TaskRecord(key=k, name=k, worker="Ok", trigger=t, constraints=Constraints(),
                       state=TaskState.ENQUEUED, created_at_ms=START, updated_at_ms=START, next_run_at_ms=at)
            for k, t, at in [("far", far, NOW_NS), ("ok", TaskTrigger.Exact(START + 5), START + 5)]]
    store = SqliteTaskStore(tmp_path / "tasks.db")
    store.write(rows)
    assert [r.key for r in store.load()] == ["ok"]
    (quarantined,) = store.quarantined()
    said = quarantined.reason
    assert quarantined.key == "far"
    assert said.startswith("trigger.exact.at_epoch_millis: 1796480590638000000 is after"), said
    store.close()
    with pytest.raises(OSError):
        time.gmtime(10**20 / 1000)  # what waiting_for raised for a due time this far out
    assert utc_text(10**20) == "100000000000000000000 ms after the epoch"  # shown instead
