"""Triggers: when a task becomes due. Value objects plus the pure timing rules."""

from __future__ import annotations

import posixpath
from typing import Annotated, ClassVar, Literal, Self, Union
from urllib.parse import unquote, urlsplit

from pydantic import Field

from ._model import Frozen
from .millis import DurationMs, InstantMs, PositiveDurationMs


class OneTime(Frozen):
    kind: Literal["one_time"] = "one_time"
    initial_delay_ms: DurationMs = 0
    _positional: ClassVar[tuple[str, ...]] = ("initial_delay_ms",)


class Periodic(Frozen):
    kind: Literal["periodic"] = "periodic"
    interval_ms: PositiveDurationMs
    flex_ms: PositiveDurationMs | None = None
    _positional: ClassVar[tuple[str, ...]] = ("interval_ms", "flex_ms")


class Exact(Frozen):
    kind: Literal["exact"] = "exact"
    at_epoch_millis: InstantMs
    _positional: ClassVar[tuple[str, ...]] = ("at_epoch_millis",)


class Windowed(Frozen):
    """Runs once inside [start, end]; relational checks happen at enqueue (REJECTED_INVALID_PARAMS)."""

    kind: Literal["windowed"] = "windowed"
    start_epoch_millis: InstantMs
    end_epoch_millis: InstantMs
    _positional: ClassVar[tuple[str, ...]] = ("start_epoch_millis", "end_epoch_millis")


class ContentUri(Frozen):
    kind: Literal["content_uri"] = "content_uri"
    uri_string: Annotated[str, Field(min_length=1, max_length=4096)]
    trigger_for_descendants: bool = True
    _positional: ClassVar[tuple[str, ...]] = ("uri_string", "trigger_for_descendants")


class _Singleton(Frozen):
    """A device trigger: one instance, ``TaskTrigger.BatteryLow``. Called, as the other
    triggers are written (``TaskTrigger.BatteryLow()``), it is itself."""

    def __call__(self) -> Self:
        return self


class BatteryLowTrigger(_Singleton):
    kind: Literal["battery_low"] = "battery_low"


class BatteryOkayTrigger(_Singleton):
    kind: Literal["battery_okay"] = "battery_okay"


class StorageLowTrigger(_Singleton):
    kind: Literal["storage_low"] = "storage_low"


class DeviceIdleTrigger(_Singleton):
    kind: Literal["device_idle"] = "device_idle"


Trigger = Annotated[
    Union[
        OneTime,
        Periodic,
        Exact,
        Windowed,
        ContentUri,
        BatteryLowTrigger,
        BatteryOkayTrigger,
        StorageLowTrigger,
        DeviceIdleTrigger,
    ],
    Field(discriminator="kind"),
]

DEVICE_TRIGGER_KINDS = frozenset({"battery_low", "battery_okay", "storage_low", "device_idle"})
EVENT_TRIGGER_KINDS = DEVICE_TRIGGER_KINDS | {"content_uri"}


class TaskTrigger:
    """The namespace users write triggers with: ``TaskTrigger.OneTime(initial_delay_ms=5_000)``."""

    OneTime = OneTime
    Periodic = Periodic
    Exact = Exact
    Windowed = Windowed
    ContentUri = ContentUri
    BatteryLow = BatteryLowTrigger()
    BatteryOkay = BatteryOkayTrigger()
    StorageLow = StorageLowTrigger()
    DeviceIdle = DeviceIdleTrigger()


def periodic_next(
    anchor_ms: int, interval_ms: int, flex_ms: int | None, last_period: int, now_ms: int
) -> tuple[int, int]:
    """The period to run after ``last_period`` and when it is due, as ``(period, due_ms)``.

    Period k ends at ``anchor + k*interval`` (no drift: it never depends on when a run
    finished); with a flex window it may start ``flex`` before that end. Periods whose
    end has already passed (downtime, a late run) are skipped: the overdue run that just
    finished stood for all of them, so missed periods coalesce into one run.
    """
    period = max(last_period + 1, (now_ms - anchor_ms) // interval_ms + 1)
    end = anchor_ms + period * interval_ms
    start = end - flex_ms if flex_ms is not None and flex_ms < interval_ms else end
    return period, max(start, now_ms)


def _local_file(uri: str) -> str | None:
    """A ``file:`` URI of this machine as its path, decoded and normalised (``file:///a%20b``,
    ``file:/a b``, ``file://localhost/a/./b/`` are one path); None for any other URI."""
    if not uri.startswith("file:"):
        return None
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    if parts.netloc not in ("", "localhost") or not parts.path:
        return None
    return posixpath.normpath(unquote(parts.path))


def uri_matches(pattern: str, changed: str, descendants: bool) -> bool:
    """An equal URI, or (with ``descendants``) one below it by whole path segment. Two local
    ``file:`` URIs are compared by path: the file watcher reports changes as ``Path.as_uri()``
    spells them (percent-encoded), so a trigger on ``file:///data/Müller`` (or ``file:/tmp/d``,
    ``file://localhost/tmp/d``, ``…/d/./``) never fired on a real change below it until session 46."""
    here, there = _local_file(pattern), _local_file(changed)
    if here is not None and there is not None:
        return there == here or (descendants and (here == "/" or there.startswith(here + "/")))
    pattern = pattern.rstrip("/") or pattern
    changed_norm = changed.rstrip("/") or changed
    if changed_norm == pattern:
        return True
    return descendants and changed_norm.startswith(pattern + "/")
