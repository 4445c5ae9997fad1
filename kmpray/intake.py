"""Requests as they arrive from the client (plain dicts over the wire), turned into core
calls. Whatever a payload gets wrong is an answer (``REJECTED_INVALID_PARAMS`` naming
the field or the exception), never an exception out of the scheduler."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from ._model import more_errors, one_line
from .chain_intake import ChainIntake
from .constraints import DEFAULT_CONSTRAINTS, Constraints
from .effects import Outcome
from .engine import SchedulerCore
from .enums import ScheduleResult
from .errors import InvalidParameters
from .triggers import Trigger
from .validation import shown

log = logging.getLogger("kmpray.scheduler")
T = TypeVar("T")

_TRIGGER: TypeAdapter[Trigger] = TypeAdapter(Trigger)
_TRIGGERS: dict[tuple[tuple[str, Any], ...], Trigger] = {}
_CONSTRAINTS: dict[tuple[tuple[str, Any], ...], Constraints] = {}
_CACHED = 4096  # distinct payloads kept per kind


def _cached(cache: dict[tuple[tuple[str, Any], ...], T], raw: Any, validate: Callable[[Any], T]) -> T:
    """``validate(raw)``, kept for a flat dict payload: the payloads of a burst repeat, and
    what pydantic builds here is frozen, so one validation serves them all. The key is the
    sorted items: values equal as keys but not alike (``True``, ``1``, ``1.0``: what msgpack
    brings) validate alike too, so the cache answers as pydantic would. A nested
    (unhashable) value, or a payload pydantic refuses, is never cached."""
    if not isinstance(raw, dict):
        return validate(raw)
    try:
        key = tuple(sorted(raw.items()))
        cached = cache.get(key)
    except TypeError:  # a nested (unhashable) value: validated each time
        return validate(raw)
    if cached is None:
        cached = validate(raw)
        if len(cache) < _CACHED:
            cache[key] = cached
    return cached


def trigger(raw: Any) -> Trigger:
    """Validate a trigger payload (cached: ``_cached``)."""
    return _cached(_TRIGGERS, raw, _TRIGGER.validate_python)


def _constraints(raw: Any) -> Constraints:
    """Validate a constraints payload (cached as triggers are: pydantic's validation was
    half of a gated task's intake, 14.6 against 7.4 µs)."""
    return _cached(_CONSTRAINTS, raw, Constraints.model_validate) if raw else DEFAULT_CONSTRAINTS


def _one_line(field: str, exc: ValidationError, raw: Any) -> str:
    """Pydantic's complaint about ``raw`` (several lines, with a URL) as one line naming the
    field: ``trigger: must be a TaskTrigger (...), got str 'now'``,
    ``trigger.periodic.interval_ms: Input should be greater than 0``."""
    first = exc.errors(include_url=False)[0]
    if not first["loc"] and first["type"] in ("model_attributes_type", "model_type", "dict_type"):
        kind = "TaskTrigger (e.g. TaskTrigger.OneTime())" if field == "trigger" else "Constraints"
        return f"{field}: must be a {kind}, got {type(raw).__name__} {raw!r:.60}{more_errors(exc)}"
    return one_line(exc, field)


def _invalid(exc: ValidationError, task: dict[str, Any]) -> str:
    """Which of ``task``'s fields the error is about (parsed again: only a rejected payload
    pays for it), told in one line; pydantic's first line if none of them."""
    for field, parse in (("trigger", trigger), ("constraints", _constraints)):
        if field in task:
            try:
                parse(task[field])
            except ValidationError as again:
                return _one_line(field, again, task[field])
    return f"ValidationError: {str(exc).splitlines()[0]}"


def submit(core: SchedulerCore, item: dict[str, Any]) -> Outcome:
    """One ``enqueue`` payload: id, trigger, worker, input, constraints."""
    try:
        return core.submit(item["id"], trigger(item["trigger"]), item["worker"], item.get("input"),
                           _constraints(item.get("constraints")))
    except ValidationError as exc:
        return Outcome(ScheduleResult.REJECTED_INVALID_PARAMS, _invalid(exc, item))
    except (InvalidParameters, ValueError, KeyError, TypeError) as exc:
        return Outcome(ScheduleResult.REJECTED_INVALID_PARAMS, f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        log.exception("enqueue failed")
        return Outcome(ScheduleResult.FAILED_UNKNOWN, f"{type(exc).__name__}: {exc}")


def chain_intake(core: SchedulerCore, payload: dict[str, Any]) -> ChainIntake:
    """One ``enqueue_chain`` payload (id, policy, steps: lists of task dicts, or the client's
    own ``error`` about the chain it could not build) as a ``ChainIntake``: its tasks'
    constraints are parsed as they are checked, in the intake's slices."""
    if not isinstance(payload, dict):
        chain = ChainIntake(core, None, "REPLACE", [])
        chain.failed = Outcome(ScheduleResult.REJECTED_INVALID_PARAMS,
                               f"TypeError: a chain payload is a dict, got {type(payload).__name__}")
        return chain
    chain = ChainIntake(core, payload.get("id"), payload.get("policy", "REPLACE"), payload.get("steps"),
                        parse=_task)
    if payload.get("error"):  # says what and where, as every other rejection does
        chain.failed = Outcome(ScheduleResult.REJECTED_INVALID_PARAMS, str(payload["error"]))
    return chain


def submit_chain(core: SchedulerCore, payload: dict[str, Any]) -> Outcome:
    """One ``enqueue_chain`` payload taken in at once (``chain_intake``, every task checked, admitted)."""
    chain = chain_intake(core, payload)
    chain.check(chain.remaining)
    return chain.admit()


def _task(task: dict[str, Any]) -> dict[str, Any]:
    """One chain task's payload with its constraints parsed (their error named)."""
    try:
        return {**task, "constraints": _constraints(task.get("constraints"))}
    except ValidationError as exc:
        raise InvalidParameters(f"step task {shown(task.get('id'))}: {_invalid(exc, task)}") from None
