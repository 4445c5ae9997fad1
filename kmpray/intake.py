"""Requests as they arrive from the client (plain dicts over the wire), turned into core
calls. Whatever a payload gets wrong is an answer (``REJECTED_INVALID_PARAMS`` naming
the field or the exception), never an exception out of the scheduler."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import TypeAdapter

from .constraints import DEFAULT_CONSTRAINTS, Constraints
from .effects import Outcome
from .engine import SchedulerCore
from .enums import ExistingPolicy, ScheduleResult
from .errors import InvalidParameters
from .triggers import Trigger

log = logging.getLogger("kmpray.scheduler")

_TRIGGER: TypeAdapter[Trigger] = TypeAdapter(Trigger)
_TRIGGERS: dict[tuple[tuple[str, Any], ...], Trigger] = {}


def trigger(raw: Any) -> Trigger:
    """Validate a trigger payload; the flat dicts of a burst repeat, so cache them."""
    if not isinstance(raw, dict):
        return _TRIGGER.validate_python(raw)
    try:
        key = tuple(sorted(raw.items()))
        cached = _TRIGGERS.get(key)
    except TypeError:  # a nested (unhashable) value
        return _TRIGGER.validate_python(raw)
    if cached is None:
        cached = _TRIGGER.validate_python(raw)
        if len(_TRIGGERS) < 4096:
            _TRIGGERS[key] = cached
    return cached


def _constraints(raw: Any) -> Constraints:
    return Constraints.model_validate(raw) if raw else DEFAULT_CONSTRAINTS


def submit(core: SchedulerCore, item: dict[str, Any]) -> Outcome:
    """One ``enqueue`` payload: id, trigger, worker, input, constraints."""
    try:
        return core.submit(item["id"], trigger(item["trigger"]), item["worker"], item.get("input"),
                           _constraints(item.get("constraints")))
    except (InvalidParameters, ValueError, KeyError, TypeError) as exc:
        return Outcome(ScheduleResult.REJECTED_INVALID_PARAMS, f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        log.exception("enqueue failed")
        return Outcome(ScheduleResult.FAILED_UNKNOWN, f"{type(exc).__name__}: {exc}")


def submit_chain(core: SchedulerCore, payload: dict[str, Any]) -> Outcome:
    """One ``enqueue_chain`` payload: id, policy, steps (lists of task dicts), or the
    client's own ``error`` about the chain it could not build."""
    try:
        if payload.get("error"):
            raise InvalidParameters(payload["error"])
        steps = [[{**task, "constraints": _constraints(task.get("constraints"))} for task in step]
                 for step in payload["steps"]]
        return core.submit_chain(payload.get("id"), ExistingPolicy(payload.get("policy", "REPLACE")), steps)  # type: ignore[arg-type]
    except (InvalidParameters, ValueError, KeyError, TypeError) as exc:
        return Outcome(ScheduleResult.REJECTED_INVALID_PARAMS, f"{type(exc).__name__}: {exc}")
