"""Real device probes for one node: battery, storage, load (idle), network.

Runs on the node it describes (the oracle schedules it there). Missing sources mean a
server: no battery is charging and not low; unreadable network counts as connected.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

POWER = Path("/sys/class/power_supply")
NET = Path("/sys/class/net")


def battery() -> tuple[bool, int]:
    """(charging, level %). No battery: (True, 100)."""
    try:
        supplies = list(POWER.iterdir())
    except OSError:
        return True, 100
    levels, charging, on_mains = [], False, False
    for supply in supplies:
        try:
            kind = (supply / "type").read_text().strip()
            if kind == "Battery":
                levels.append(int((supply / "capacity").read_text().strip()))
                charging |= (supply / "status").read_text().strip() in ("Charging", "Full")
            elif kind == "Mains":
                on_mains |= (supply / "online").read_text().strip() == "1"
        except (OSError, ValueError):
            continue
    if not levels:
        return True, 100
    return charging or on_mains, min(levels)


def network_connected() -> bool:
    try:
        for iface in NET.iterdir():
            if iface.name == "lo":
                continue
            if (iface / "operstate").read_text().strip() in ("up", "unknown"):
                return True
    except OSError:
        return True
    return False


def probe(state_dir: str, battery_low_threshold: int, storage_low_free_fraction: float,
          idle_load_per_cpu: float) -> dict[str, Any]:
    charging, level = battery()
    try:
        usage = shutil.disk_usage(state_dir if os.path.exists(state_dir) else "/")
        storage_low = usage.free < usage.total * storage_low_free_fraction
    except OSError:
        storage_low = False
    try:
        idle = os.getloadavg()[0] / (os.cpu_count() or 1) < idle_load_per_cpu
    except OSError:
        idle = False
    return {
        "network_connected": network_connected(),
        "charging": charging,
        "battery_level": level,
        "battery_low_threshold": battery_low_threshold,
        "storage_low": storage_low,
        "idle": idle,
    }
