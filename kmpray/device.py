"""Device state per node and the gate predicate: may a task with these constraints run here?

Pure: probes live in ``probes.py``, the oracle actor pushes state changes, the
scheduler core asks ``satisfies`` and ``transitions``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from ._model import Frozen
from .constraints import Constraints
from .enums import NetworkType

_UNMETERED = (NetworkType.UNMETERED, NetworkType.TEMPORARILY_UNMETERED)


class DeviceState(Frozen):
    """One node's state. A server without a battery counts as charging and not low."""

    network_connected: bool = True
    network_type: NetworkType = NetworkType.UNMETERED
    roaming: bool = False
    charging: bool = True
    battery_level: Annotated[int, Field(ge=0, le=100)] = 100
    battery_low_threshold: Annotated[int, Field(ge=0, le=100)] = 15
    storage_low: bool = False
    idle: bool = False  # load average under the idle threshold (Android's "device idle")
    doze: bool = False  # Android Doze, for simulation: only allow_while_idle/expedited work runs

    @property
    def battery_low(self) -> bool:
        return not self.charging and self.battery_level <= self.battery_low_threshold


DEVICE_FIELDS = frozenset(DeviceState.model_fields)


def network_ok(c: Constraints, s: DeviceState) -> bool:
    if c.requires_unmetered_network and not (s.network_connected and s.network_type in _UNMETERED):
        return False
    if not c.requires_network or c.network_type is NetworkType.NOT_REQUIRED:
        return True
    if not s.network_connected:
        return False
    wanted = c.network_type
    if wanted is NetworkType.CONNECTED:
        return True
    if wanted is NetworkType.UNMETERED:
        return s.network_type in _UNMETERED
    if wanted is NetworkType.NOT_ROAMING:
        return not s.roaming
    if wanted is NetworkType.METERED:
        return s.network_type is NetworkType.METERED
    return s.network_type is NetworkType.TEMPORARILY_UNMETERED


def satisfies(c: Constraints, s: DeviceState) -> bool:
    """Android's constraint semantics, per node."""
    if s.doze and not (c.allow_while_idle or c.expedited):
        return False
    if not network_ok(c, s):
        return False
    if c.requires_charging and not s.charging:
        return False
    if c.requires_battery_not_low and s.battery_low:
        return False
    if c.requires_storage_not_low and s.storage_low:
        return False
    return not (c.requires_device_idle and not s.idle)


def is_gated(c: Constraints) -> bool:
    """Does this task care about device state at all? (Most do not: they run anywhere.)"""
    return (
        (c.requires_network and c.network_type is not NetworkType.NOT_REQUIRED)
        or c.requires_unmetered_network
        or c.requires_charging
        or c.requires_battery_not_low
        or c.requires_storage_not_low
        or c.requires_device_idle
    )


# Trigger kind -> the state it fires on entering (and requires of the node it runs on).
TRIGGER_STATES: dict[str, str] = {
    "battery_low": "battery_low",
    "battery_okay": "battery_okay",
    "storage_low": "storage_low",
    "device_idle": "idle",
}


def in_trigger_state(kind: str, s: DeviceState) -> bool:
    if kind == "battery_low":
        return s.battery_low
    if kind == "battery_okay":
        return not s.battery_low
    if kind == "storage_low":
        return s.storage_low
    if kind == "device_idle":
        return s.idle
    return True


def transitions(old: DeviceState | None, new: DeviceState) -> list[str]:
    """The device trigger kinds whose state ``new`` has just entered (a first sighting is none)."""
    if old is None:
        return []
    return [k for k in TRIGGER_STATES if in_trigger_state(k, new) and not in_trigger_state(k, old)]


def parse_overrides(state: dict[str, Any], current: DeviceState) -> DeviceState:
    """Apply ``set_device_state(**state)``; unknown fields or bad values raise, naming the field."""
    unknown = set(state) - DEVICE_FIELDS
    if unknown:
        raise ValueError(f"set_device_state: unknown field(s) {sorted(unknown)}; known: {sorted(DEVICE_FIELDS)}")
    return DeviceState.model_validate({**current.model_dump(), **state})


def unmet(c: Constraints, s: DeviceState, trigger_kind: str | None = None) -> list[str]:
    """What keeps a task with constraints ``c`` off a node in state ``s``, in words (empty:
    it may run there). The same rules as ``satisfies``, spelt out for ``waiting_for``."""
    out = []
    if s.doze and not (c.allow_while_idle or c.expedited):
        out.append("doze")
    if not network_ok(c, s):
        out.append("no network" if not s.network_connected else f"network is {s.network_type.value}")
    if c.requires_charging and not s.charging:
        out.append("not charging")
    if c.requires_battery_not_low and s.battery_low:
        out.append("battery low")
    if c.requires_storage_not_low and s.storage_low:
        out.append("storage low")
    if c.requires_device_idle and not s.idle:
        out.append("not idle")
    if trigger_kind in TRIGGER_STATES and not in_trigger_state(trigger_kind, s):
        out.append(f"not in {trigger_kind.replace('_', ' ')} state")
    return out
