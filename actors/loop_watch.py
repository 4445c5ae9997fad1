"""LoopWatch: notices, from a thread, that an actor's event loop is blocked, and by whom.

An async ``do_work`` that calls something blocking (``time.sleep``, ``requests.get``, a
long numpy step) stops its executor's event loop: every run queued there waits behind
it, and the actor cannot even answer a ping. The loop cannot report that itself, so a
heartbeat callback runs on the loop every ``probe_s`` and a daemon thread measures how
late it is. Past ``block_s`` of lag the thread calls ``on_block(lag_s, blocker)``, and
``on_unblock(blocked_s, blocker)`` once the loop runs again; ``blocker`` is the run
whose coroutine is on the loop thread's stack, read from its frames.

The heartbeat also keeps when the loop last stood still (``stood_still``): a beat that
comes ``stood_still_s`` or more after the one before. The thread cannot tell that for a
stopped process (SIGSTOP, a frozen VM: it stood still too); the loop's own beat can.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

from kmpray.timing import STOOD_STILL_S

log = logging.getLogger("kmpray.loop_watch")

#: (run key, worker class name) of the run blocking the loop, or None when not found.
Blocker = tuple[tuple[str, int], str] | None


class LoopWatch:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        probe_s: float,
        block_s: float,
        run_code: CodeType,
        on_block: Callable[[float, Blocker], None],
        on_unblock: Callable[[float, Blocker], None],
        stood_still_s: float = STOOD_STILL_S,
    ) -> None:
        self._loop = loop
        self._probe_s = probe_s
        self._block_s = block_s
        # The thread samples less often than the heartbeat beats: waking it costs the loop a
        # GIL hand-over each time (a block is still seen within block_s + 2 samples).
        self._sample_s = max(probe_s, min(0.05, block_s / 2))
        self._run_code = run_code  # the executor coroutine whose frame names the run
        self._on_block = on_block
        self._on_unblock = on_unblock
        self._beat = time.monotonic()
        self._stood_still_s = stood_still_s
        self._stood_still_at = -float("inf")  # when the last beat after a stand-still came
        self._first = True  # (the first beat follows the actor's construction, not a beat)
        self._loop_thread = threading.get_ident()
        self.blocked_since: float | None = None
        loop.call_soon(self._tick)
        threading.Thread(target=self._watch, name="kmpray-loop-watch", daemon=True).start()

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._beat >= self._stood_still_s and not self._first:
            self._stood_still_at = now
        self._beat, self._first = now, False
        self._loop.call_later(self._probe_s, self._tick)

    def stood_still(self, within_s: float) -> bool:
        """Whether the loop stands still now (on the loop: a beat is overdue by
        ``stood_still_s``, as when the process was just resumed and this runs before the
        beat) or stood still within the last ``within_s``."""
        now = time.monotonic()
        overdue = now - self._beat >= self._stood_still_s and not self._first
        return overdue or now - self._stood_still_at < within_s

    def lag_s(self) -> float:
        """How far the loop is behind its heartbeat now (0 when it keeps up)."""
        return max(0.0, time.monotonic() - self._beat - self._probe_s)

    def blocker(self) -> Blocker:
        """The run on the loop thread's stack: the frame of the executor's run coroutine."""
        frame: FrameType | None = sys._current_frames().get(self._loop_thread)
        while frame is not None:
            if frame.f_code is self._run_code:
                found: Any = frame.f_locals
                key, worker = found.get("key"), found.get("worker")
                if isinstance(key, tuple) and isinstance(worker, str):
                    return key, worker
            frame = frame.f_back
        return None

    def _watch(self) -> None:
        blocker: Blocker = None
        suspect: Blocker = None
        while True:
            time.sleep(self._sample_s)
            lag = self.lag_s()
            try:
                if self.blocked_since is None and lag >= self._block_s:
                    # A worker blocks the loop only if its run is on the stack in two samples
                    # in a row: a loop merely busy with many short steps changes stacks.
                    seen = self.blocker()
                    if seen is None or seen != suspect:
                        suspect = seen
                        continue
                    self.blocked_since = self._beat + self._probe_s
                    blocker, suspect = seen, None
                    self._on_block(lag, blocker)
                elif self.blocked_since is None:
                    suspect = None
                elif lag < self._block_s:
                    blocked_s = self._beat - self.blocked_since
                    self.blocked_since = None
                    self._on_unblock(blocked_s, blocker)
            except Exception:
                log.exception("loop watch: reporting a blocked loop failed")
