"""What the actors send each other through Ray goes as plain lists: Ray packs a call's lists,
dicts and scalars with msgpack in C, and hands every tuple (a NamedTuple too) to a Python
hook that pickles it apart, ~5 µs a record here (kmpray/protocol.py)."""

from __future__ import annotations

from typing import Any

import msgpack

from kmpray.protocol import (
    Began,
    Done,
    Progress,
    Run,
    Stored,
    Taken,
    done_from_wire,
    done_to_wire,
    run_from_wire,
    run_to_wire,
    taken_from_wire,
)
from kmpray.results import Success, to_wire


def plain(value: Any) -> Any:
    """Through Ray's packer without its hook (strict types: a tuple is refused)."""
    return msgpack.unpackb(msgpack.packb(value, strict_types=True, use_bin_type=True), raw=False)


def test_a_run_handed_on_with_its_successor_travels_as_lists() -> None:
    then = Run("b", 7, "Step", 2, None, {"x": [1]}, 0, None, None, None, None, "ARRAY", 5)
    run = Run("a", 3, "Step", 2, '{"k": 1}', None, 1, 5_000, 1_700_000_000_000, None, then, "OVERWRITE", 4)
    assert run_from_wire(plain(run_to_wire(run))) == run
    assert run_from_wire(run) is run  # a Run passes as it is
    ref = object()  # an object-store reference: Ray's hook carries it, as before
    with_refs = run._replace(refs={"digest": ref})
    assert run_from_wire(run_to_wire(with_refs)).refs == {"digest": ref}


def test_results_travel_as_lists_with_their_stored_values_and_the_successor_they_began() -> None:
    done = Done("a", 3, to_wire(Success(data={"n": 1, "b": b"\x00"})), None, ("b", 7, 0))
    back = done_from_wire(plain(done_to_wire(done)))
    assert back._replace(result=tuple(back.result)) == done
    ref = object()
    value = Stored("d" * 64, "ndarray", 800, ref, True, "Success.data['x']")
    stored = Done("c", 1, to_wire(Success()), [value])
    back = done_from_wire(done_to_wire(stored))
    assert back.stored == stored.stored and back.stored[0].ref is ref
    answer = Taken("inc", [done_to_wire(done)])
    incarnation, records = taken_from_wire(plain(list(answer)))
    assert incarnation == "inc" and [d.key for d in records] == ["a"] and records[0].followed == ("b", 7, 0)
    progress, began = Progress("a", 3, 50, "half"), Began("a", 3)
    assert Progress(*plain(list(progress))) == progress and Began(*plain(list(began))) == began


def test_an_event_poll_answers_lists_a_subscriber_decodes_as_before() -> None:
    from kmpray.event_codec import decode_events, encode_event
    from kmpray.event_log import as_lists
    from kmpray.events import TaskCompletionEvent

    body = encode_event(TaskCompletionEvent("Sync", True, "done", task_id="t"))
    rows = as_lists([(7, body), (9, b"\xc1damaged")])
    assert plain(rows) == [[7, body], [9, b"\xc1damaged"]]
    [(cursor, event)] = decode_events(plain(rows))  # the damaged row skipped, as before
    assert cursor == 7 and event.task_id == "t" and event.success is True
