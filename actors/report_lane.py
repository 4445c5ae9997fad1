"""Reports over the local lane (kmpray/lane.py): an executor or heavy worker on the
scheduler's node writes its results, progress and "began" notices to the scheduler's Unix
socket the moment it has them, without waiting for the answers to earlier batches (one
connection: the scheduler reads the batches in order and answers them in order).

Why: a result that lives only in this process dies with it. Through Ray's report call (one
call in flight, the next batch waiting for its answer) a finished run's result waited
~1-3 ms in this process, and a kill in that window ran a finished run again (chaos
``executors``: 10 of 32 runs executed twice were such). Written to the socket, it is in
the kernel before this process goes on, and the scheduler reads it even after this
process is gone. It also spares the scheduler Ray's ~0.8 ms of CPU per message received.

What the lane cannot carry (output with object-store references, a value msgpack refuses,
another node, no lane, a lost connection, an error answer) goes through Ray's report call
(``fallback``), which first waits until every batch written before it has been answered:
order is kept. Batches written and not answered when the connection breaks are sent again
through Ray; a report applied twice changes nothing (the scheduler ignores results of
runs that are no longer running, and a "began" or progress notice said twice is said).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from kmpray.lane import EXECUTOR, REPORT, FrameError, open_stream, pack, read_stream_frame
from kmpray.protocol import Began, Done, Progress
from kmpray.timing import LANE_CONNECT_TIMEOUT_S, LANE_LOST_RECHECK_S, LANE_NONE_RECHECK_S

Report = Done | Progress | Began


def split_reports(items: list[Report]) -> tuple[list[Done], list[Progress], list[Began]]:
    """A batch as the scheduler's ``report`` takes it: results, progress, "began" notices."""
    done = [item for item in items if isinstance(item, Done)]
    progress = [item for item in items if isinstance(item, Progress)]
    began = [item for item in items if isinstance(item, Began)]
    return done, progress, began


class LaneReports:
    def __init__(
        self,
        fetch: Callable[[], Awaitable[dict[str, Any] | None]],
        node_id: str,
        on_reply: Callable[[Any, list[Report]], None],
        fallback: Callable[[list[Report]], None],
        hello: list[Any] | None = None,
        on_push: Callable[[str, list[Any]], None] | None = None,
    ) -> None:
        self._fetch = fetch  # the scheduler's lane() over Ray: address, secret, node
        self._node = node_id
        self._hello = hello  # said first on each connection: who this process is
        self._on_push = on_push  # frames the scheduler pushes (submits, actors/submit_lane.py)
        self._on_reply = on_reply
        self._fallback = fallback
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None  # held: the loop keeps only weak refs
        self._connecting: asyncio.Task[None] | None = None
        self._next_check = 0.0
        self._buffer: list[Report] = []  # added this turn, written at its end (or at once)
        self._flush_soon: asyncio.Handle | None = None
        self._pending: deque[list[Report]] = deque()  # written, not answered, in order
        self._drained = asyncio.Event()
        self._drained.set()
        self.batches = 0  # written to the lane

    def add(self, items: list[Report], eager: bool) -> bool:
        """Take ``items`` for the lane (True), or say it cannot carry them now (False:
        the caller sends them through Ray). ``eager``: written at once, else at the end of
        this turn with whatever else is added in it."""
        if self._writer is None:
            self.connect_soon()
            return False
        if any(isinstance(item, Done) and item.stored for item in items):
            return False  # object-store references: Ray's call carries them
        self._buffer.extend(items)
        self._drained.clear()
        if eager:
            self._flush()
        elif self._flush_soon is None:
            self._flush_soon = asyncio.get_running_loop().call_soon(self._flush)
        return True

    def request(self, method: str, args: list[Any]) -> bool:
        """A request of its own (no reports to hand on if it is lost), after what was added
        before it; False: no lane now."""
        if self._writer is None or self._writer.is_closing():
            return False
        self._flush()
        try:
            frame = pack([method, args])
        except Exception:
            return False
        self._writer.write(frame)
        self._pending.append([])
        self._drained.clear()
        return True

    @property
    def idle(self) -> bool:
        """Nothing taken and unanswered."""
        return self._drained.is_set()

    async def drained(self) -> None:
        """Until every batch taken so far is answered (or handed to the fallback)."""
        while not self._drained.is_set():
            await self._drained.wait()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    # ------------------------------------------------------------- internals
    def _flush(self) -> None:
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None
        items, self._buffer = self._buffer, []
        if not items:
            return
        writer = self._writer
        if writer is None or writer.is_closing():  # lost meanwhile: _lost hands them on, after the unanswered
            self._buffer[:0] = items
            return
        try:
            frame = pack([REPORT, list(split_reports(items))])
        except Exception:  # not msgpack or too large (is_plain checked it: should not happen): Ray carries it
            self._settle_if_idle()
            self._fallback(items)
            return
        writer.write(frame)  # in the kernel now, unless its buffer is full (then at once after)
        self._pending.append(items)
        self.batches += 1

    def _settle_if_idle(self) -> None:
        if not self._pending and not self._buffer:
            self._drained.set()

    def connect_soon(self) -> None:
        """Look for the lane now unless connected, looking, or looked too recently."""
        now = time.monotonic()
        if self._writer is not None or self._connecting is not None or now < self._next_check:
            return
        self._next_check = now + LANE_LOST_RECHECK_S
        self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(LANE_CONNECT_TIMEOUT_S):
                info = await self._fetch()
                if info is None or info.get("node") != self._node:
                    self._next_check = time.monotonic() + LANE_NONE_RECHECK_S
                    return
                _sock, reader, writer = await open_stream(info["address"], info["secret"],
                                                          LANE_CONNECT_TIMEOUT_S)
        except Exception:  # Ray unreachable, the scheduler restarting, no lane (or a refused
            return  # hello): Ray's calls carry it
        finally:
            self._connecting = None
        self._writer = writer
        if self._hello is not None:
            writer.write(pack([EXECUTOR, self._hello]))
            self._pending.append([])
            self._drained.clear()
        self._reader = asyncio.ensure_future(self._answers(reader, writer))

    async def _answers(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                answer = await read_stream_frame(reader)
                if isinstance(answer, list) and len(answer) == 2 and isinstance(answer[0], str):
                    if self._on_push is not None:  # pushed by the scheduler, not an answer
                        self._on_push(answer[0], answer[1])
                    continue
                items = self._pending.popleft()
                if not (isinstance(answer, list) and len(answer) == 2 and answer[0] is True):
                    self._pending.appendleft(items)  # an error: this and what follows go through Ray
                    return
                self._on_reply(answer[1], items)
                self._settle_if_idle()
        except (asyncio.IncompleteReadError, ConnectionError, FrameError, IndexError):
            pass  # the scheduler went away (or restarted): what is unanswered goes through Ray
        finally:
            self._lost(writer)

    def _lost(self, writer: asyncio.StreamWriter) -> None:
        if self._writer is writer:
            self._writer = None
            self._next_check = time.monotonic() + LANE_LOST_RECHECK_S
        with contextlib.suppress(Exception):
            writer.close()
        unanswered = [item for batch in self._pending for item in batch] + self._buffer
        self._pending.clear()
        self._buffer = []
        self._drained.set()
        if unanswered:
            self._fallback(unanswered)
