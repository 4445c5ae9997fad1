"""Stored events decode to exactly what pydantic gives (kmpray/event_codec.py): the checked
fast path for rows as the engine writes them, full validation for anything else."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from pydantic import TypeAdapter

from kmpray import event_codec
from kmpray.event_codec import decode_event, decode_events, encode_event
from kmpray.events import Event, TaskCompletionEvent, TaskProgressEvent

PYDANTIC: TypeAdapter[Any] = TypeAdapter(Event)

EVENTS = [
    TaskCompletionEvent(task_name="W", success=True),
    TaskCompletionEvent(task_name="W", success=False, message="boom", task_id="k", chain_id="c",
                        timestamp=7),
    TaskCompletionEvent(task_name="W", success=True,
                        output_data={"a": [1, 2], "b": {"c": None}, "d": b"\x00"}),
    TaskCompletionEvent(task_name="W", success=True, output_data={}),
    TaskProgressEvent(task_id="k", task_name="W", progress=0),
    TaskProgressEvent(task_id="k", task_name="W", progress=100, message="done", timestamp=3),
]


def pack(d: dict[str, Any]) -> bytes:
    return msgpack.packb(d, use_bin_type=True)


# ids that never vary: a repr held the default timestamp (now), and pytest-xdist's
# workers each collect the suite and must agree on every test's id
@pytest.mark.parametrize("event", EVENTS, ids=[f"{e.kind}-{i}" for i, e in enumerate(EVENTS)])
def test_a_row_the_engine_wrote_decodes_by_the_fast_path_to_pydantics_own_event(
    event: Any, monkeypatch: Any
) -> None:
    body = encode_event(event)
    checked = PYDANTIC.validate_python(msgpack.unpackb(body, raw=False))
    monkeypatch.setattr(event_codec, "_EVENT", None)  # the fallback would raise: the fast path must take it
    made = decode_event(body)
    assert made == event == checked and type(made) is type(event)
    assert made.model_dump() == checked.model_dump() and made.model_fields_set == checked.model_fields_set
    if event.kind == "progress" or event.output_data is None:  # a dict inside is unhashable either way
        assert hash(made) == hash(checked)


GOOD = {"kind": "completion", "task_name": "W", "success": True, "message": None, "timestamp": 5,
        "task_id": "k", "chain_id": None, "output_data": None}
PROGRESS = {"kind": "progress", "task_id": "k", "task_name": "W", "progress": 5, "message": None,
            "timestamp": 1}


@pytest.mark.parametrize("row", [
    {**GOOD, "timestamp": "5"},                      # lax: pydantic turns it into 5
    {**GOOD, "success": 1},                          # lax: True
    {("taskName" if k == "task_name" else k): v for k, v in GOOD.items()},  # by alias
    {k: v for k, v in GOOD.items() if k != "message"},  # a default left out
    {**PROGRESS, "progress": 5.0},
], ids=["str-timestamp", "int-success", "alias", "missing-default", "float-progress"])
def test_a_row_not_as_the_engine_writes_it_gets_pydantics_full_validation(row: dict[str, Any]) -> None:
    assert event_codec._checked(row) is None
    made = decode_event(pack(row))
    assert made == PYDANTIC.validate_python(row)


@pytest.mark.parametrize("row", [
    {**GOOD, "success": "maybe"},
    {**GOOD, "output_data": {1: "x"}},
    {**GOOD, "extra": 1},
    {**GOOD, "kind": "other"},
    {**PROGRESS, "progress": 101},
    {**PROGRESS, "task_id": None},
], ids=["bad-bool", "int-key", "extra-field", "unknown-kind", "progress-over-100", "no-task-id"])
def test_a_damaged_row_is_refused_by_both_paths(row: dict[str, Any]) -> None:
    assert event_codec._checked(row) is None
    with pytest.raises(ValueError):  # pydantic's ValidationError, or msgpack's own for an int key
        decode_event(pack(row))


def test_decode_events_skips_damaged_rows_and_keeps_cursors() -> None:
    rows = [(1, encode_event(EVENTS[0])), (2, b"\xc1garbage"), (3, pack({**GOOD, "extra": 1})),
            (4, pack([1, 2])), (5, encode_event(EVENTS[4]))]
    assert decode_events(rows) == [(1, EVENTS[0]), (5, EVENTS[4])]


def test_an_event_over_the_limit_is_cut_to_fit_not_dropped() -> None:
    """A completion the engine makes may carry up to max_output_bytes of output_data (which a
    user may raise past 1 MiB); the broker dropped such an event without a word. It is
    stored cut down now: output_data as a descriptor, the message to 8 KiB."""
    data = {"s": "x" * (2 << 20)}
    big = TaskCompletionEvent(task_name="W", success=True, message="m" * 20_000, task_id="k",
                              chain_id="c", output_data=data, timestamp=5)
    body = encode_event(big)
    cut = event_codec.fit_event(body)
    assert len(body) > event_codec.MAX_EVENT_BYTES >= len(cut)
    event = decode_event(cut)
    kept = (event.task_name, event.success, event.task_id, event.chain_id, event.timestamp)
    assert kept == ("W", True, "k", "c", 5)
    assert event.output_data is not None
    assert (event.output_data["$kmpray"], event.output_data["nbytes"]) == ("omitted", len(pack(data)))
    assert event.message == "m" * 8192 + "… (11,808 characters cut)"
    small = encode_event(EVENTS[2])
    assert event_codec.fit_event(small) is small  # what fits is stored as it came
    progress = encode_event(TaskProgressEvent(task_id="k", task_name="W", progress=5,
                                              message="p" * (2 << 20)))
    cut_progress = decode_event(event_codec.fit_event(progress))
    assert cut_progress.progress == 5 and len(cut_progress.message or "") < 8300


@pytest.mark.parametrize(("event", "why"), [
    (TaskCompletionEvent(task_name="W", success=True, output_data={"b": b"x" * (2 << 20)}),
     "over the 1,048,576-byte limit of one event"),
    (TaskCompletionEvent(task_name="W", success=True, output_data={"o": object()}),
     "event output_data['o']: object is not msgpack-serializable"),
    (TaskCompletionEvent(task_name="W", success=True, output_data={"n": 2**70}),
     "event output_data['n']: int is not msgpack-serializable"),
])
def test_an_emitted_event_that_cannot_be_stored_is_refused_naming_why(event: Any, why: str) -> None:
    """Before: the oversized one was accepted by emit() and never stored or delivered; the
    others raised msgpack's bare TypeError/OverflowError."""
    from kmpray.errors import InvalidParameters

    with pytest.raises(InvalidParameters) as info:
        event_codec.encode_emitted(event)
    assert why in str(info.value)
    assert event_codec.encode_emitted(EVENTS[2]) == encode_event(EVENTS[2])
