"""The dispatch path builds results and events without pydantic's per-field work
(kmpray/_model.py trusted, results.to_row): the objects and rows must be exactly what
pydantic itself gives."""

from __future__ import annotations

from typing import Any

import pytest

from kmpray._model import trusted
from kmpray.events import TaskCompletionEvent, TaskProgressEvent
from kmpray.results import Failure, Retry, Success, from_wire, to_row, to_wire

RESULTS = [
    Success(), Success("done"), Success(data={}), Success("m", {"a": [1, 2], "b": None}),
    Failure("no"), Failure("again", should_retry=True), Failure(""),
    Retry(), Retry("busy"), Retry(delay_ms=0), Retry("later", 250),
]


@pytest.mark.parametrize("result", RESULTS, ids=repr)
def test_a_stored_result_row_is_pydantics_own_dump(result: Any) -> None:
    assert to_row(result) == result.model_dump(exclude_defaults=True) | {"kind": result.kind}


@pytest.mark.parametrize("result", RESULTS, ids=repr)
def test_a_result_read_off_the_wire_equals_the_one_sent(result: Any) -> None:
    back = from_wire(to_wire(result))
    assert back == result and type(back) is type(result)
    if result.kind != "success" or result.data is None:  # a dict inside is unhashable either way
        assert hash(back) == hash(result)
    assert back.model_dump() == result.model_dump()
    assert back.model_fields_set == set(type(result).model_fields)


def test_a_trusted_event_is_equal_hashable_frozen_and_dumps_like_a_validated_one() -> None:
    values = {"kind": "completion", "task_name": "W", "success": True, "message": None, "timestamp": 5,
              "task_id": "k", "chain_id": "c", "output_data": None}
    made = trusted(TaskCompletionEvent, dict(values))
    checked = TaskCompletionEvent.model_validate(values)
    assert made == checked and hash(made) == hash(checked)
    assert made.model_dump() == checked.model_dump() and made.__dict__ == checked.__dict__
    with pytest.raises(Exception, match="frozen"):
        made.success = False


def test_trusted_without_every_field_falls_back_to_model_construct_defaults() -> None:
    made = trusted(TaskProgressEvent, {"kind": "progress", "task_id": "k", "task_name": "W", "progress": 5,
                                       "timestamp": 1})
    assert made.message is None and made.progress == 5


def test_a_task_info_built_without_validation_is_what_pydantic_builds() -> None:
    # records.TaskRecord.info builds TaskInfo with ``trusted`` (listing 200,000 tasks
    # built as many): field for field what validating the same values gives, and it
    # pickles and unpickles (list_tasks sends TaskInfo pickled) to an equal one.
    import pickle

    from kmpray import Constraints, TaskInfo, TaskState, TaskTrigger
    from kmpray.models import WaitingFor
    from kmpray.records import TaskRecord

    rec = TaskRecord(key="t", name="t", worker="W", trigger=TaskTrigger.OneTime(initial_delay_ms=5),
                     constraints=Constraints(max_retries=2), state=TaskState.SUCCEEDED, created_at_ms=1,
                     updated_at_ms=2, run_attempt_count=1, run_count=1, result=Success("ok", {"n": 1}))
    waiting = WaitingFor(kind="due_at", message="due at noon", details={"at_ms": 3})
    for info in (rec.info(), rec.info(waiting), rec.info(waiting, when_due=False)):
        again = TaskInfo.model_validate(info.model_dump())
        assert info == again and info.model_dump() == again.model_dump()
        assert pickle.loads(pickle.dumps(info, protocol=5)) == info
    assert rec.info().progress == 100 and rec.info().waiting_for is None
    assert rec.info(waiting, when_due=False).next_run_at_ms is None


def test_trusted_results_share_their_field_set_and_a_copy_with_an_update_never_touches_it() -> None:
    a, b = from_wire(to_wire(Success("a", {"x": 1}))), from_wire(to_wire(Success("b")))
    assert a.__pydantic_fields_set__ is b.__pydantic_fields_set__  # one per class, not per result
    shared = set(a.__pydantic_fields_set__)
    changed = a.model_copy(update={"message": "c"})
    assert changed.message == "c" and a.message == "a" and b.message == "b"
    assert changed.__pydantic_fields_set__ is not a.__pydantic_fields_set__
    assert a.__pydantic_fields_set__ == b.__pydantic_fields_set__ == shared == set(Success.model_fields)
    assert a.model_dump(exclude_unset=True) == {"kind": "success", "message": "a", "data": {"x": 1}}
