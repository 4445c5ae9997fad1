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
