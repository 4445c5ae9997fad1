"""Why an unfinished task does not run yet, from state the scheduler core already holds.

``waiting_for(core, rec)`` answers the user's first question about background work ("why
isn't my task running?") the way ``kubectl describe`` answers it for a pod: one small
structured reason with a sentence. It reads the core's indexes (timers, gates, parked
workers, ready queues, device states) and writes nothing, so asking is cheap.

Kinds, each with what ``details`` holds:

==================  ===========================================================
``due_at``          not due yet: ``at_ms``
``window``          a Windowed task before its window opens: ``opens_at_ms``
``trigger``         an event trigger not fired yet: ``trigger``
``constraints``     no node satisfies its constraints now: ``nodes`` (node -> the
                    constraints it fails), ``satisfied``/``total``
``doze``            only Doze holds it back (not ``allow_while_idle``): ``nodes``
``prerequisites``   earlier work is unfinished: ``tasks`` (key -> its own state
                    and reason, one level deep)
``worker``          its worker class is not registered (again): ``worker``
``capacity``        due and eligible, waiting for an executor: ``queue`` (light or
                    heavy), ``ahead`` (runs before it), ``why``
==================  ===========================================================

Admission control and platform policy act at enqueue: a request they refuse is never
stored (``REJECTED_OS_POLICY`` with the reason), so they are never a waiting reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .device import in_trigger_state, unmet
from .enums import TaskState
from .millis import utc_text
from .models import WaitingFor
from .records import TaskRecord
from .triggers import EVENT_TRIGGER_KINDS, ContentUri, Windowed

if TYPE_CHECKING:
    from .core_protocol import Core


def _when(ms: int) -> str:
    return utc_text(ms, "%Y-%m-%d %H:%M:%S UTC")


def waiting_for(
    core: Core, rec: TaskRecord, depth: int = 1, places: Mapping[str, int | None] | None = None
) -> WaitingFor | None:
    """The reason ``rec`` waits, or None when it runs or is finished. ``places``: each
    queued task's place in line, computed once for a listing (else counted for this one);
    None there: not counted (a very long queue), the message says how many are due."""
    if rec.state.is_finished:
        return None
    if rec.state is TaskState.RUNNING:
        if rec.started:
            return None
        return WaitingFor(kind="capacity", message="handed to an executor; waiting there for a free run slot",
                          details={"queue": "executor", "ahead": None, "why": "executor_concurrency slots busy"})
    if rec.state is TaskState.BLOCKED:
        return _prerequisites(core, rec, depth)
    return _enqueued(core, rec, places)


# What entering each device trigger's state means, for a person (kmpray/device.py).
_ENTERS = {
    "battery_low": "'s battery becomes low (at or below its threshold, not charging)",
    "battery_okay": "'s battery stops being low",
    "storage_low": "'s storage becomes low",
    "device_idle": " becomes idle",
}


def _nodes_now(core: Core, kind: str) -> str:
    """For a device trigger, where the nodes stand: it fires when one enters the state, so a
    node charging at 10 % (a server counts as charging) is why a BatteryLow task never runs."""
    if kind not in _ENTERS or not core.devices:
        return ""
    states = core.devices.values()
    inside = sum(in_trigger_state(kind, s) for s in states)
    charging = sum(s.charging for s in states) if kind == "battery_low" else 0
    note = f", {charging} charging" if charging else ""
    return f" (fires when a node{_ENTERS[kind]}; {inside}/{len(states)} node(s) in that state now{note})"


def _enqueued(core: Core, rec: TaskRecord, places: Mapping[str, int | None] | None) -> WaitingFor:
    now = core.clock.now_ms()
    if core.is_parked(rec.key):
        return WaitingFor(
            kind="worker",
            message=f"worker class {rec.worker!r} is not registered since the engine restarted; "
            "it runs once the class is registered again",
            details={"worker": rec.worker},
        )
    if core.is_gated(rec.key):
        return _gate(core, rec)
    if core.is_queued(rec.key) or core.is_unplaced(rec.key):
        heavy = rec.constraints.is_heavy_task
        queue = "heavy" if heavy else "light"
        if core.is_unplaced(rec.key):
            why = "no executor room on the nodes that satisfy its constraints"
            ahead = None
            message = f"due, waiting for capacity: {why}"
        else:
            ahead = places[rec.key] if places is not None and rec.key in places else core.ahead_of(rec.key)
            why = "every heavy worker is busy or not placed yet" if heavy else "every light executor's window is full"
            where = f"{ahead} ahead of it" if ahead is not None else (
                f"one of up to {core.heavy_ready_count() if heavy else core.ready_count() - core.heavy_ready_count():,} due")
            message = f"due, waiting for a {queue} {'worker' if heavy else 'executor'}: {where} ({why})"
        return WaitingFor(kind="capacity", message=message, details={"queue": queue, "ahead": ahead, "why": why})
    trig = rec.trigger
    if rec.next_run_at_ms is None and trig.kind in EVENT_TRIGGER_KINDS:
        what = f"a content change under {trig.uri_string}" if isinstance(trig, ContentUri) else trig.kind
        message = f"waits for its trigger: {what}{_nodes_now(core, trig.kind)}"
        return WaitingFor(kind="trigger", message=message, details={"trigger": trig.kind})
    due = rec.next_run_at_ms if rec.next_run_at_ms is not None else now
    if isinstance(trig, Windowed) and due > now and rec.run_count == 0 and rec.run_attempt_count == 0:
        return WaitingFor(kind="window", message=f"its window opens at {_when(due)}", details={"opens_at_ms": due})
    if due > now:
        return WaitingFor(kind="due_at", message=f"due at {_when(due)}", details={"at_ms": due})
    return WaitingFor(kind="capacity", message="due now; the scheduler hands it over on its next turn",
                      details={"queue": "heavy" if rec.constraints.is_heavy_task else "light", "ahead": None,
                               "why": "not yet taken"})


def reason_kind(core: Core, rec: TaskRecord, gates: dict[tuple[int, str], str]) -> str | None:
    """``waiting_for(core, rec).kind`` without building the reason, for a task in one of the
    core's waiting sets: a gated task's kind
    depends only on its constraints, its trigger's kind and the devices, so ``gates``
    keeps it per pair for one pass over many tasks (by identity: rows share their
    frozen constraints, and hashing a pydantic model field by field costs more)."""
    if rec.state is not TaskState.ENQUEUED:
        reason = waiting_for(core, rec)
        return reason.kind if reason is not None else None
    if core.is_parked(rec.key):
        return "worker"
    if core.is_gated(rec.key):
        pair = (id(rec.constraints), rec.trigger.kind)
        kind = gates.get(pair)
        if kind is None:
            kind = gates[pair] = _gate(core, rec).kind
        return kind
    if core.is_queued(rec.key) or core.is_unplaced(rec.key):
        return "capacity"
    reason = waiting_for(core, rec)
    return reason.kind if reason is not None else None


def _gate(core: Core, rec: TaskRecord) -> WaitingFor:
    failing: dict[str, list[str]] = {}
    for node, state in core.devices.items():
        why = unmet(rec.constraints, state, rec.trigger.kind)
        if why:
            failing[node] = why
    total = len(core.devices)
    if failing and all(why == ["doze"] for why in failing.values()):
        return WaitingFor(
            kind="doze",
            message=f"paused by doze on {len(failing)}/{total} nodes (set allow_while_idle or expedited to run in doze)",
            details={"nodes": failing},
        )
    counts: dict[str, int] = {}
    for why in failing.values():
        for item in why:
            counts[item] = counts.get(item, 0) + 1
    summary = ", ".join(f"{n} {item}" for item, n in sorted(counts.items()))
    return WaitingFor(
        kind="constraints",
        message=f"constraints unmet: {total - len(failing)}/{total} nodes satisfy them ({summary})",
        details={"nodes": failing, "satisfied": total - len(failing), "total": total},
    )


def _prerequisites(core: Core, rec: TaskRecord, depth: int) -> WaitingFor:
    pending = [p for p in core.prerequisites(rec) if p.state is not TaskState.SUCCEEDED]
    tasks: dict[str, Any] = {}
    parts = []
    for pre in pending:
        inner = waiting_for(core, pre, depth - 1) if depth > 0 else None
        tasks[pre.key] = {"state": pre.shown_state.value, "waiting_for": inner.model_dump() if inner else None}
        parts.append(f"{pre.key} ({pre.shown_state.value}" + (f": {inner.message})" if inner else ")"))
    shown = "; ".join(parts[:5]) + (f"; and {len(parts) - 5} more" if len(parts) > 5 else "")
    return WaitingFor(kind="prerequisites", message=f"waits for {len(pending)} unfinished prerequisite(s): {shown}",
                      details={"tasks": tasks})
