"""Events as stored bytes (msgpack, never pickle) and back.

The scheduler encodes every completion event it stores, and every subscriber decodes
every event it reads: both sit on the dispatch path, once per task. Decoding checks each
row before it becomes an event: a row exactly as ``encode_event`` writes it (every field
by name, each of its type) is built without pydantic's per-field work (``trusted``,
~1 µs); anything else — a damaged or hand-made row, camelCase keys, a string where a
number belongs — goes through pydantic's full validation, which builds what it can and
raises on the rest. Either way the result is what pydantic gives (tests/core/test_event_codec.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import msgpack
from pydantic import TypeAdapter

from ._model import MARK, trusted
from .errors import InvalidParameters
from .events import Event, TaskCompletionEvent, TaskProgressEvent
from .packing import pack

log = logging.getLogger("kmpray.events")

_EVENT: TypeAdapter[Any] = TypeAdapter(Event)
_COMPLETION = frozenset(TaskCompletionEvent.model_fields)
_PROGRESS = frozenset(TaskProgressEvent.model_fields)


def encode_event(event: TaskCompletionEvent | TaskProgressEvent) -> bytes:
    # Every field is a plain value already (output_data was checked msgpack-able), so the
    # model's own field dict packs as is: no model_dump, nor dict(event)'s per-field
    # iteration (~5 µs), on the hot path.
    return pack(event.__dict__)


#: The largest event the log stores: a subscriber reads up to 1,000 rows in one poll, and
#: the broker hands every event to every subscriber.
MAX_EVENT_BYTES = 1024 * 1024
#: How much of the message an event cut down to fit keeps.
MESSAGE_KEPT = 8 * 1024


def encode_emitted(event: TaskCompletionEvent | TaskProgressEvent) -> bytes:
    """An event that worker or driver code emits, encoded; one that cannot be stored raises
    ``InvalidParameters`` naming why (before: a value msgpack cannot carry raised its bare
    TypeError, and an event over MAX_EVENT_BYTES was accepted and never stored)."""
    try:
        body = encode_event(event)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidParameters(f"event {_unpackable(event, exc)} (events carry msgpack values: "
                                "str, 64-bit int, float, bool, None, bytes, lists and dicts)") from exc
    if len(body) > MAX_EVENT_BYTES:
        raise InvalidParameters(
            f"event of {len(body):,} bytes is over the {MAX_EVENT_BYTES:,}-byte limit of one event "
            "(large data belongs in a task's output: Success(data=...), read with get_output)")
    return body


def _unpackable(event: TaskCompletionEvent | TaskProgressEvent, exc: Exception) -> str:
    """Which value of an event msgpack refused, by key and type: msgpack's own words
    differ between its versions and its C and pure-Python packers."""
    data = getattr(event, "output_data", None)
    for key, value in (data or {}).items():
        try:
            pack(value)
        except (TypeError, ValueError, OverflowError) as err:
            return f"output_data[{key!r}]: {type(value).__name__} is not msgpack-serializable ({err})"
    return f"output_data: not msgpack-serializable ({exc})"


def fit_event(body: bytes) -> bytes:
    """``body``, or, if it is over MAX_EVENT_BYTES (a completion whose output_data the engine
    allows to be large: ``EngineConfig.max_output_bytes`` above 1 MiB), the same event with
    its output_data as ``{"$kmpray": "omitted", "nbytes": n}`` and its message cut to
    MESSAGE_KEPT characters: stored and delivered, not dropped (before session 42 the broker
    dropped it without a word). ``scheduler.get_output(task_id)`` still has the data."""
    if len(body) <= MAX_EVENT_BYTES:
        return body
    d = msgpack.unpackb(body, raw=False)
    data = d.get("output_data")
    if data is not None:
        why = f"over the {MAX_EVENT_BYTES:,}-byte limit of one event: get_output(task_id) has it"
        d["output_data"] = {MARK: "omitted", "nbytes": len(pack(data)), "why": why}
    message = d.get("message")
    if isinstance(message, str) and len(message) > MESSAGE_KEPT:
        d["message"] = message[:MESSAGE_KEPT] + f"… ({len(message) - MESSAGE_KEPT:,} characters cut)"
    return pack(d)


def _text(v: object) -> bool:
    return v is None or type(v) is str


def _checked(d: dict[str, Any]) -> TaskCompletionEvent | TaskProgressEvent | None:
    """The event, if ``d`` is exactly a row ``encode_event`` wrote; else None."""
    kind = d.get("kind")
    if kind == "completion":
        if d.keys() != _COMPLETION:
            return None
        data = d["output_data"]
        if (type(d["task_name"]) is str and type(d["success"]) is bool and type(d["timestamp"]) is int
                and _text(d["message"]) and _text(d["task_id"]) and _text(d["chain_id"])
                and (data is None or (type(data) is dict and all(type(k) is str for k in data)))):
            return trusted(TaskCompletionEvent, d)  # type: ignore[no-any-return]
        return None
    if kind == "progress":
        if d.keys() != _PROGRESS:
            return None
        pct = d["progress"]
        if (type(d["task_id"]) is str and type(d["task_name"]) is str and type(d["timestamp"]) is int
                and type(pct) is int and 0 <= pct <= 100 and _text(d["message"])):
            return trusted(TaskProgressEvent, d)  # type: ignore[no-any-return]
    return None


def decode_event(body: bytes) -> TaskCompletionEvent | TaskProgressEvent:
    """One stored row as its event; raises on a row that is not one."""
    d = msgpack.unpackb(body, raw=False)
    if type(d) is dict and (event := _checked(d)) is not None:
        return event
    return _EVENT.validate_python(d)  # type: ignore[no-any-return]


def decode_events(rows: Sequence[Sequence[Any]]) -> list[tuple[int, Any]]:
    """Stored rows as ``(cursor, event)``; a damaged row is skipped with a logged gap, so a
    subscriber replaying the log never raises on it (msgpack only, never pickle)."""
    out = []
    for cursor, body in rows:
        try:
            out.append((cursor, decode_event(body)))
        except Exception as exc:
            log.warning("event %d is damaged (%s: %s); skipped", cursor, type(exc).__name__, str(exc)[:200])
    return out
