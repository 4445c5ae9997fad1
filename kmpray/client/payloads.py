"""The wire payloads of enqueue calls: what ``enqueue``, ``enqueue_async`` and
``enqueue_many`` send for each task (plain dicts; the scheduler validates them again,
kmpray/intake.py). A malformed request raises here, before anything is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..constraints import Constraints
from ..errors import InvalidParameters
from ..models import TaskRequest
from ..triggers import OneTime, Trigger

NOW = OneTime()  # the trigger of every TaskRequest in a bulk enqueue (frozen: one will do)
_ITEM_KEYS = frozenset({"id", "trigger", "worker_class_name", "input", "constraints"})  # enqueue_many's dicts

# Payloads of the frozen models (triggers, constraints) dumped lately, by identity: a
# bulk's requests share instances (every TaskRequest without constraints of its own holds
# the same default; a producer reuses its trigger), and a frozen model's dump never
# changes. Saves model_dump's ~1.5 µs per use (a third of building a request's payload).
# Each entry holds its model, so an id is never reused while cached.
_DUMPS: dict[int, tuple[Any, dict[str, Any]]] = {}
_DUMPS_MAX = 64


def _dumped(model: Any, exclude_defaults: bool = False) -> dict[str, Any]:
    hit = _DUMPS.get(id(model))
    if hit is not None and hit[0] is model:
        return hit[1]
    dump: dict[str, Any] = model.model_dump(mode="json", exclude_defaults=exclude_defaults)
    if len(_DUMPS) >= _DUMPS_MAX:
        _DUMPS.clear()
    _DUMPS[id(model)] = (model, dump)
    return dump


def _constraints_payload(constraints: Constraints | dict[str, Any] | None) -> dict[str, Any] | None:
    if isinstance(constraints, Constraints):
        return _dumped(constraints, exclude_defaults=True)
    return constraints


def _trigger_payload(trigger: Any) -> Any:
    return _dumped(trigger) if hasattr(trigger, "model_dump") else trigger


def item(
    id: str,  # noqa: A002
    trigger: Trigger | dict[str, Any],
    worker_class_name: str,
    input: str | None,  # noqa: A002
    constraints: Constraints | dict[str, Any] | None,
) -> dict[str, Any]:
    """One enqueue's payload."""
    if constraints is not None and not isinstance(constraints, (Constraints, dict)):
        raise InvalidParameters(f"constraints: expected Constraints, got {type(constraints).__name__}")
    return {
        "id": id,
        "trigger": _trigger_payload(trigger),
        "worker": worker_class_name,
        "input": input,
        "constraints": _constraints_payload(constraints),
    }


def items(requests: Sequence[TaskRequest | dict[str, Any]]) -> list[dict[str, Any]]:
    """Payloads for ``requests``; a malformed item raises before anything is sent (a
    dict key misspelt, say ``constrains``, must not silently drop the constraints)."""
    out = []
    for i, req in enumerate(requests):
        if isinstance(req, TaskRequest):
            out.append(item(req.id, NOW, req.worker_class_name, req.input, req.constraints))
            continue
        if not isinstance(req, dict):
            raise InvalidParameters(
                f"requests[{i}]: expected a TaskRequest or a dict of enqueue()'s arguments, "
                f"got {type(req).__name__}")
        if unknown := sorted(set(req) - _ITEM_KEYS, key=str):
            raise InvalidParameters(
                f"requests[{i}]: unknown key(s) {', '.join(map(repr, unknown))} "
                f"(expected {', '.join(sorted(_ITEM_KEYS))})")
        id_: Any = req.get("id")  # missing: rejected by the scheduler, naming the field
        worker: Any = req.get("worker_class_name")
        out.append(item(id_, req.get("trigger", NOW), worker, req.get("input"), req.get("constraints")))
    return out
