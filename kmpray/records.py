"""TaskRecord: the scheduler's mutable row for one task, and its msgpack codec.

Records live in one owner (the scheduler core); everything handed out is a frozen
TaskInfo made from them. The codec writes plain msgpack maps, never pickle.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
from pydantic import TypeAdapter, ValidationError

from ._model import one_line, trusted
from .artifacts import public
from .constraints import DEFAULT_CONSTRAINTS, Constraints
from .enums import InputMerger, TaskState, shown_state
from .errors import DamagedRow
from .models import TaskInfo, WaitingFor
from .packing import pack
from .results import Failure, Result, Retry, Success, to_row
from .triggers import OneTime, Trigger


class Table(Protocol):
    """What a record tells the table holding it (task_table.TaskTable), named here so that
    this module need not import that one (which imports this one)."""

    def moved(self, rec: TaskRecord, before: TaskState, after: TaskState) -> None: ...

    def touched(self, rec: TaskRecord) -> None: ...


_TRIGGER: TypeAdapter[Trigger] = TypeAdapter(Trigger)
_RESULT: TypeAdapter[Success | Failure | Retry] = TypeAdapter(Result)
_ONE_TIME = OneTime()


@dataclass(slots=True, eq=False)
class TaskRecord:
    key: str  # unique row key: the task id, or "<id>#<n>" for work appended under a name
    name: str  # the id the user enqueued under (unique-work name)
    worker: str
    trigger: Trigger
    constraints: Constraints
    state: TaskState
    created_at_ms: int
    updated_at_ms: int
    input: str | None = None
    # Characters of an input kept in the store only (``store.INLINE_INPUT_CHARS``): then
    # ``input`` is None in memory (the store sets both, or neither) and a dispatch reads it
    # back (``TaskStore.read_input``).
    input_stored: int = 0
    run_attempt_count: int = 0
    run_count: int = 0
    result: Success | Failure | Retry | None = None
    progress: int | None = None
    next_run_at_ms: int | None = None
    deadline_ms: int | None = None  # a window's end: still not run by then -> FAILED
    chain_id: str | None = None
    prereqs: tuple[str, ...] = ()
    input_merger: InputMerger = InputMerger.OVERWRITE
    anchor_ms: int = 0  # periodic: period k ends at anchor + k*interval
    period: int = 0
    run_id: int = 0  # bumped at each dispatch; reports for older runs are stale
    refire: bool = False  # an event trigger fired while this task was running
    step: int = 0  # a chain task's step index
    upstream: dict[str, Any] | None = None  # a chain task's merged prerequisite data, set at promotion
    # Runs in a row lost with a process that died under them (os._exit, a fatal signal, a
    # memory kill): > 0 makes the next run go alone to an executor (exact blame); past
    # EngineConfig.max_system_reruns the task ends FAILED. Reset by any result.
    crashes: int = 0
    # Index bookkeeping, not persisted.
    timer_seq: int = field(default=-1, repr=False)
    ready_seq: int = field(default=-1, repr=False)
    # RUNNING and its worker began (not only handed to an executor): not stored, since a
    # restart re-queues or re-adopts every run.
    started: bool = field(default=False, repr=False)
    # Why it waits for an executor was noted (explain): once per spell of waiting, not
    # at every try (a suspect waiting to run alone is tried at each report).
    noted_wait: bool = field(default=False, repr=False)
    # The TaskTable holding it (None outside one): told of each change of its shown state.
    table: Table | None = field(default=None, repr=False)

    @property
    def shown_state(self) -> TaskState:
        """What users see: a run handed to an executor that has not begun (waiting for one
        of its slots) is still ENQUEUED, as in WorkManager; RUNNING means ``do_work`` runs."""
        return shown_state(self.state, self.started)

    def info(self, waiting_for: WaitingFor | None = None, when_due: bool = True) -> TaskInfo:
        """What users see of it; ``waiting_for`` and ``when_due`` (False: no
        ``next_run_at_ms``, it waits for something else than time) from explain.py. Built
        without validation (``trusted``: listing 200,000 tasks built 200,000 of these)."""
        state = self.shown_state
        return trusted(TaskInfo, {  # type: ignore[no-any-return]
            "id": self.key,
            "worker_class_name": self.worker,
            "state": state,
            "run_attempt_count": self.run_attempt_count - (state is not self.state),  # counted once it begins
            "run_count": self.run_count,
            "result": _shown(self.result),
            "progress": shown_progress(state, self.progress),
            "next_run_at_ms": self.next_run_at_ms if when_due else None,
            "chain_id": self.chain_id,
            "trigger": self.trigger,
            "constraints": self.constraints,
            "created_at_ms": self.created_at_ms,
            "updated_at_ms": self.updated_at_ms,
            "waiting_for": waiting_for,
        })


def shown_progress(state: TaskState, progress: int | None) -> int | None:
    """A run's last progress report is shown while it runs; a finished task shows 100 on
    success and none otherwise, and a task waiting for its next run none (not the last
    run's 50 %, frozen as if it still went on)."""
    if state is TaskState.RUNNING:
        return progress
    return 100 if state is TaskState.SUCCEEDED else None


def _shown(result: Any) -> Any:
    """A result as users see it: an array in its data as a descriptor (kmpray/artifacts.py)."""
    if isinstance(result, Success) and result.data and (shown := public(result.data)) is not result.data:
        return Success.model_construct(message=result.message, data=shown)
    return result


@functools.lru_cache(maxsize=1024)
def _dump_constraints(constraints: Constraints) -> dict[str, Any]:
    """Constraints are frozen and hashable, and most tasks share a few: dump each once."""
    return constraints.model_dump(mode="json", exclude_defaults=True)


def encode(rec: TaskRecord) -> bytes:
    row: dict[str, Any] = {
        "k": rec.key,
        "n": rec.name,
        "w": rec.worker,
        "s": rec.state.value,
        "c0": rec.created_at_ms,
        "u": rec.updated_at_ms,
    }
    trigger = rec.trigger  # a run-now one-time task (most rows) is never compared field by field
    if trigger is not _ONE_TIME and not (type(trigger) is OneTime and not trigger.initial_delay_ms):
        row["t"] = rec.trigger.model_dump(mode="json")
    if rec.constraints is not DEFAULT_CONSTRAINTS:
        dumped = _dump_constraints(rec.constraints)
        if dumped:
            row["c"] = dumped
    # The optional fields, each only when set (falsy: left out), in this order: a test
    # holds the bytes to what a dict of them filtered by truth gave. Written out, not a
    # dict built and filtered per row (~1 µs of the ~3 this costs, twice per task).
    if rec.input:
        row["i"] = rec.input
    if rec.input_stored:
        row["is"] = rec.input_stored
    if rec.run_attempt_count:
        row["a"] = rec.run_attempt_count
    if rec.run_count:
        row["rc"] = rec.run_count
    if rec.progress:
        row["p"] = rec.progress
    if rec.next_run_at_ms:
        row["nx"] = rec.next_run_at_ms
    if rec.deadline_ms:
        row["dl"] = rec.deadline_ms
    if rec.chain_id:
        row["ch"] = rec.chain_id
    if rec.anchor_ms:
        row["an"] = rec.anchor_ms
    if rec.period:
        row["pe"] = rec.period
    if rec.run_id:
        row["ri"] = rec.run_id
    if rec.refire:
        row["rf"] = rec.refire
    if rec.step:
        row["st"] = rec.step
    if rec.upstream:
        row["up"] = rec.upstream
    if rec.crashes:
        row["cr"] = rec.crashes
    if rec.result is not None:
        row["r"] = to_row(rec.result)
    if rec.prereqs:
        row["pr"] = list(rec.prereqs)
    if rec.input_merger is not InputMerger.OVERWRITE:
        row["m"] = rec.input_merger.value
    return seal(pack(row))


def seal(packed: bytes) -> bytes:
    """A stored row: its msgpack bytes and their CRC-32, so a flipped byte is detected."""
    return packed + zlib.crc32(packed).to_bytes(4, "big")


def _unseal(blob: bytes) -> bytes | memoryview:
    """The msgpack bytes of a sealed row. A row from before seals (no CRC) is its own
    msgpack; a sealed row whose CRC does not match then fails to unpack (extra bytes)."""
    body = memoryview(blob)[:-4]
    if len(blob) > 4 and zlib.crc32(body) == int.from_bytes(blob[-4:], "big"):
        return body
    return blob


_STATES = {s.value: s for s in TaskState}
_MERGERS = {m.value: m for m in InputMerger}
_shared: dict[tuple[str, bytes], Any] = {}  # ("t" | "c", packed value) -> the (frozen) model


def _decode_shared(field_: str, value: Any, parse: Any) -> Any:
    """Triggers and constraints are frozen and most rows repeat a few: parse each once
    (a restore of 100,000 rows spent half its decode time in pydantic otherwise)."""
    key = (field_, msgpack.packb(value))
    model = _shared.get(key)
    if model is None:
        try:
            model = parse(value)
        except ValidationError as exc:  # one this version refuses (a time out of range, say)
            raise DamagedRow(one_line(exc, "trigger" if field_ == "t" else "constraints")) from None
        if len(_shared) < 4096:
            _shared[key] = model
    return model


# Field -> the types a stored value may have (msgpack gives str, int, bool, float,
# bytes, list, dict, None). Anything else is a damaged row, refused before use.
_ROW_TYPES: dict[str, tuple[type, ...]] = {
    "k": (str,), "n": (str,), "w": (str,), "s": (str,), "c0": (int,), "u": (int,),
    "t": (dict,), "c": (dict,), "i": (str,), "a": (int,), "rc": (int,), "p": (int,),
    "nx": (int,), "dl": (int,), "ch": (str,), "an": (int,), "pe": (int,), "ri": (int,),
    "rf": (bool,), "st": (int,), "up": (dict,), "r": (dict,), "pr": (list,), "m": (str,), "cr": (int,),
    "is": (int,),
}
_REQUIRED = ("k", "n", "w", "s", "c0", "u")
# Counters with their largest sane value (progress is a percentage).
_COUNTERS = {"a": 2**62, "rc": 2**62, "ri": 2**62, "pe": 2**62, "st": 2**62, "p": 100, "cr": 2**62,
             "is": 2**62}
_COUNTER_NAMES = frozenset(_COUNTERS)


def _exact(types: dict[str, tuple[type, ...]]) -> dict[str, frozenset[type]]:
    """The exact classes each field may have (a set lookup is the restore's hot path)."""
    extra: dict[type, tuple[type, ...]] = {int: (bool,)}  # msgpack gives no bool for an int; allowed anyway
    return {k: frozenset((*v, *(x for t in v for x in extra.get(t, ())), type(None))) for k, v in types.items()}


_EXACT: dict[int, dict[str, frozenset[type]]] = {}
_NOTHING: frozenset[type] = frozenset()
# (field names..., value classes...) already checked -> the counters among those fields
_SHAPES: dict[tuple[Any, ...], tuple[str, ...]] = {}


def unpack_row(blob: object, required: tuple[str, ...], types: dict[str, tuple[type, ...]]) -> dict[str, Any]:
    """msgpack only (never pickle), then the shape: a map of known fields of the right types."""
    if not isinstance(blob, bytes):
        raise DamagedRow(f"not a byte string ({type(blob).__name__})")
    try:
        row = msgpack.unpackb(_unseal(blob), raw=False)
    except msgpack.ExtraData:
        raise DamagedRow("checksum mismatch: not the bytes this store wrote") from None
    except Exception as exc:
        raise DamagedRow(f"not msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(row, dict):
        raise DamagedRow(f"not a map ({type(row).__name__})")
    exact = _EXACT.get(id(types))
    if exact is None:
        exact = _EXACT[id(types)] = _exact(types)
    shape = (id(types), *row, *map(type, row.values()))  # rows repeat a few shapes: check each once
    counters = _SHAPES.get(shape)
    if counters is None:
        allowed = exact.get
        for name, value in row.items():
            if value.__class__ not in allowed(name, _NOTHING):
                if name not in types:
                    raise DamagedRow(f"unknown field {name!r}")
                raise DamagedRow(f"field {name!r} is {type(value).__name__}, expected {types[name][0].__name__}")
        missing = [f for f in required if f not in row]
        if missing:
            raise DamagedRow(f"missing field(s) {missing}")
        counters = tuple(name for name in row if name in _COUNTER_NAMES)
        if len(_SHAPES) < 4096:
            _SHAPES[shape] = counters
    for name in counters:  # the shape's counters, found once per shape (not a set built per row)
        value = row[name]
        if value is not None and not 0 <= value <= _COUNTERS[name]:
            raise DamagedRow(f"field {name!r} is out of range ({value})")
    return row


def decode(blob: bytes) -> TaskRecord:
    """A stored row back into a record; raises DamagedRow, naming what is wrong."""
    row = unpack_row(blob, _REQUIRED, _ROW_TYPES)
    try:
        return _record(row)
    except DamagedRow:
        raise
    except Exception as exc:  # a result that fails validation
        raise DamagedRow(f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def _record(row: dict[str, Any]) -> TaskRecord:
    t, c = row.get("t"), row.get("c")
    if row["s"] not in _STATES:
        raise DamagedRow(f"unknown state {row['s']!r}")
    if row.get("m", "OVERWRITE") not in _MERGERS:
        raise DamagedRow(f"unknown input merger {row['m']!r}")
    prereqs = row.get("pr") or []
    if prereqs and not all(isinstance(p, str) for p in prereqs):
        raise DamagedRow("field 'pr' holds a non-string key")
    return TaskRecord(
        key=row["k"],
        name=row["n"],
        worker=row["w"],
        trigger=_decode_shared("t", t, _TRIGGER.validate_python) if t is not None else _ONE_TIME,
        constraints=_decode_shared("c", c, Constraints.model_validate) if c is not None else DEFAULT_CONSTRAINTS,
        state=_STATES[row["s"]],
        created_at_ms=row["c0"],
        updated_at_ms=row["u"],
        input=row.get("i"),
        input_stored=row.get("is") or 0,
        run_attempt_count=row.get("a") or 0,
        run_count=row.get("rc") or 0,
        result=_RESULT.validate_python(row["r"]) if row.get("r") is not None else None,
        progress=row.get("p"),
        next_run_at_ms=row.get("nx"),
        deadline_ms=row.get("dl"),
        chain_id=row.get("ch"),
        prereqs=tuple(prereqs),
        input_merger=_MERGERS[row.get("m") or "OVERWRITE"],
        anchor_ms=row.get("an") or 0,
        period=row.get("pe") or 0,
        run_id=row.get("ri") or 0,
        refire=bool(row.get("rf")),
        step=row.get("st") or 0,
        upstream=row.get("up"),
        crashes=row.get("cr") or 0,
    )
