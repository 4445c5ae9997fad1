"""Processes the engine ended itself, kept so that a run which ran again can be explained.

The engine stops a worker process on purpose in a few places: a restarted scheduler puts
down an executor or heavy worker of its predecessor's that answers nothing (it may be
stalled, and would finish runs that run again elsewhere: actors/adoption.py), a heavy run
that ignores its cancel past the grace has its worker stopped, a heavy worker unreachable
for ``heavy_unreachable_s`` is replaced, a probation executor that does not answer a
restarted scheduler is stopped, and a light executor ends its own process at its memory
cap. A run held in such a process runs again, as with any death, and from outside that
looks like a process dying by itself.

Each pool keeps the last ``STOPS_KEPT`` of these (when, which actor, the process id, why)
and ``status()["stopped_processes"]`` lists them, oldest first: the chaos driver counts
the re-runs they explain next to its own kills (bench/chaos.py), and an operator reading
``kmpray status`` learns why a worker's process is new. The list lives in the scheduler's
memory: a restarted scheduler starts an empty one (its predecessor's log lines remain).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

import ray

STOPS_KEPT = 200
PID_LOOKUP_TIMEOUT_S = 2.0


class Stops:
    """The processes one pool stopped, newest last (at most ``STOPS_KEPT``)."""

    def __init__(self) -> None:
        self._kept: deque[dict[str, Any]] = deque(maxlen=STOPS_KEPT)

    def add(self, what: str, reason: str, pid: int | None) -> None:
        self._kept.append({"at_ms": int(time.time() * 1000), "what": what, "pid": pid, "reason": reason})

    def describe(self) -> list[dict[str, Any]]:
        return [dict(entry) for entry in self._kept]


def pid_in(incarnation: str | None) -> int | None:
    """The process id an executor's incarnation names (actors/executor.py: ``PID-HEX``)."""
    head = (incarnation or "").partition("-")[0]
    return int(head) if head.isdigit() else None


async def actor_pid(handle: Any) -> int | None:
    """The process an actor has now, from Ray's actor table (None if unknown or slow to say).

    Read before a kill: once Ray restarts the actor, the table names the new process. Ray
    has no public call for it without its dashboard (``ray.util.state`` asks the dashboard's
    API server, which a local engine does not start), so this reads the table Ray's own
    ``ray._private.state.actors`` reads; any change there only costs the pid (None)."""
    try:
        from ray._private import state

        actor_id = handle._actor_id.hex()
        info = await asyncio.wait_for(asyncio.to_thread(state.actors, actor_id), PID_LOOKUP_TIMEOUT_S)
        pid = int(info.get("Pid") or 0)
    except Exception:
        return None
    return pid or None


async def stop(stops: Stops, what: str, handle: Any, reason: str, restart: bool) -> None:
    """Kill ``handle``'s process (Ray starts a new one when ``restart``) and note it."""
    pid = await actor_pid(handle)
    with contextlib.suppress(Exception):  # already dead, or restarting: Ray's to settle
        ray.kill(handle, no_restart=not restart)
    stops.add(what, reason, pid)
