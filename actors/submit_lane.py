"""Submits down the local lane: the scheduler hands a batch of runs to a light executor (or
a run to a heavy worker) on its node over that process's own lane connection (the one it
reports over, actors/report_lane.py) instead of Ray's ``submit`` call; the process answers
with a ``taken`` request on the same connection, carrying what Ray's answer carries (its
incarnation and the results of runs that ended within the reply window).

Why: a run due now waited ~1.0-1.45 ms from the scheduler's hand-over to its worker's
start, nearly all of it Ray's forward hop to the executor and the executor's ~0.8 ms of
CPU per message received; a Unix-socket frame is ~0.1 ms. The start latency target of
#14 (p50 within 2x one actor round trip) was met in 3 of 8 runs with that hop.

An executor's connection says who it is first (``executor``: kind, index, incarnation);
a submit goes down it only while that incarnation is the one the pool knows (a process
Ray restarted answers pings with a new one; until then its submits go through Ray). A
batch msgpack cannot carry (object-store references of large step data) goes through
Ray. When the connection closes with submits unanswered, each fails with ``LaneLost``,
which the scheduler treats as Ray's "actor died" for a submit in flight: the batch runs
again elsewhere, counted as runs the process died under (a process killed is by far the
most common way an executor's connection closes).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from kmpray.lane import SUBMIT, pack
from kmpray.protocol import Fence, Run, RunKey, run_to_wire

from .lane import Conn


def ray_submit(handle: Any, runs: list[Run], fence: Fence, acks: list[RunKey] | None) -> Any:
    """An executor's or heavy worker's ``submit`` through Ray (another node's, or no lane):
    runs and acknowledgements as lists, which Ray packs in C where it would pickle each
    record apart (kmpray/protocol.py). Returns the call's ref."""
    return handle.submit.remote([run_to_wire(r) for r in runs], fence, [list(k) for k in acks] if acks else None)


class LaneLost(ConnectionError):
    """The executor's lane closed with this submit unanswered (its process most likely died)."""


class SubmitLanes:
    def __init__(self) -> None:
        self._by_index: dict[int, tuple[str, Conn]] = {}  # executor index -> (incarnation, connection)
        self._ids = itertools.count(1)
        self.sent = 0

    def opened(self, index: int, incarnation: str, conn: Conn) -> None:
        """Executor ``index``'s process ``incarnation`` connected (its first request)."""
        self._by_index[index] = (incarnation, conn)
        conn.on_close.append(lambda: self._closed(index, conn))

    def _closed(self, index: int, conn: Conn) -> None:
        if index in self._by_index and self._by_index[index][1] is conn:
            del self._by_index[index]
        waiting, conn.waiting = conn.waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(LaneLost("the executor's lane closed with this submit unanswered"))

    def submit(
        self, index: int, incarnation: str | None, runs: list[Run], fence: Fence | None,
        acks: list[RunKey] | None,
    ) -> asyncio.Future[Any] | None:
        """The batch pushed down executor ``index``'s lane: a future of its answer, as
        Ray's call would give (``(incarnation, done)``); None: no lane to that process,
        or a batch the lane cannot carry (the caller uses Ray's call)."""
        entry = self._by_index.get(index)
        if entry is None or entry[0] != incarnation or entry[1].closed:
            return None
        call_id = next(self._ids)
        try:
            frame = pack([SUBMIT, [call_id, runs, fence, acks]])
        except Exception:  # object-store references (Run.refs): Ray carries them
            return None
        conn = entry[1]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.waiting[call_id] = future
        conn.push(frame)
        self.sent += 1
        return future

    @staticmethod
    def taken(conn: Conn, call_id: int, incarnation: str, done: list[Any]) -> None:
        """The executor's answer to a pushed submit, as a Ray submit answers: its results
        as lists, which the awaiting side turns into records (``taken_from_wire``), once."""
        future = conn.waiting.pop(call_id, None)
        if future is not None and not future.done():
            future.set_result((incarnation, done))
