"""msgpack on the scheduler's hot path: one ``Packer`` per thread, reused.

``msgpack.packb`` builds a Packer at every call (1.6 µs for a stored row against 0.9 µs
packed by one kept); a row is packed twice per task and its completion event once.
Per thread, as a Packer holds its buffer between the calls of one ``pack``; a pack that
raises leaves it reset (msgpack does so), so the next one starts clean.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

_local = threading.local()

#: msgpack's compiled packer is in use (not its pure-Python fallback, which an old msgpack
#: without a wheel for this Python falls back to: session 52 measured ``bench core`` at 91
#: against 45 µs a task, msgpack 1.0.0 against 1.1.0 on Python 3.11).
ACCELERATED = msgpack.Packer.__module__ != "msgpack.fallback"


def slow_packer_warning(accelerated: bool = ACCELERATED) -> str | None:
    """What ``connect()`` logs (once a process) when msgpack runs its pure-Python packer."""
    if accelerated:
        return None
    return (f"msgpack {'.'.join(map(str, msgpack.version))} runs its pure-Python packer here (no compiled "
            "extension for this Python): every message and stored row of the engine is packed about "
            "twice as slowly; pip install -U 'msgpack>=1.1'")


def pack(value: Any) -> bytes:
    """``msgpack.packb(value, use_bin_type=True)``, the same bytes."""
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(value)  # type: ignore[no-any-return]
