"""The client's side of the local lane (kmpray/lane.py): one per scheduler shard.

A call goes over the lane when this process is on the shard's node and the scheduler
has one open; anything else — no lane, another node, a value msgpack cannot carry, a
broken connection, an error answer — raises ``LaneDown`` and the facade makes the call
through Ray instead, with the same request token marked as a retry when the lane may
have delivered it (the scheduler then answers a call it already applied from its stored
answer: nothing is applied twice). A lost lane is looked up again through Ray at most
once a second; a shard with no lane for this process, every NO_LANE_RECHECK_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..lane import (
    FrameError,
    connect,
    kernel_timeouts,
    open_stream,
    pack,
    read_frame,
    read_stream_frame,
)
from ..timing import LANE_CONNECT_TIMEOUT_S, LANE_LOST_RECHECK_S, LANE_NONE_RECHECK_S
from .remote import let_go_in_forked_child

# kmpray/timing.py's, bound here so a test may shorten them for this module
LOST_RECHECK_S = LANE_LOST_RECHECK_S
NO_LANE_RECHECK_S = LANE_NONE_RECHECK_S


class LaneDown(Exception):
    """The lane did not carry this call; ``sent``: the request may have reached the scheduler."""

    def __init__(self, why: str, sent: bool) -> None:
        super().__init__(why)
        self.sent = sent


Info = dict[str, Any]


class Lane:
    def __init__(
        self,
        fetch: Callable[[], Info | None],
        fetch_async: Callable[[], Awaitable[Info | None]],
        here: Callable[[], str],
    ) -> None:
        self._fetch = fetch
        self._fetch_async = fetch_async
        self._here = here
        self._info: Info | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()
        # blocking connections (threads), each with the timeout its kernel keeps (kernel_timeouts)
        self._idle: list[tuple[socket.socket, float]] = []
        # stream connections (coroutines), each of the event loop that opened it
        self._idle_async: list[AsyncConn] = []
        self.calls = 0
        # False: every call goes through Ray (KMPRAY_LOCAL_LANE=0 in the client's environment;
        # bench submit's same-run baseline)
        self.enabled = os.environ.get("KMPRAY_LOCAL_LANE", "1") != "0"
        let_go_in_forked_child(self)

    def _after_fork(self) -> None:
        """In a child forked from this process: the connections are the parent's (the same
        sockets: answers to one process's calls were read by the other, and each took them
        for its own), so the child lets them go and makes its own; a lock held by another
        thread at the fork is never released in the child, so it gets a new one."""
        self._lock = threading.Lock()
        stale = [s for s, _t in self._idle] + [conn.sock for conn in self._idle_async]
        self._idle, self._idle_async = [], []
        for sock in stale:
            sock.close()  # the child's descriptor only: the parent's connection stays open

    # ------------------------------------------------------------- where
    def _due(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._info is not None or now < self._next_check:
                return False
            self._next_check = now + LOST_RECHECK_S  # a failed look-up is tried again soon
            return True

    def _learned(self, info: Info | None) -> None:
        if info is None or info.get("node") != self._here():
            with self._lock:
                self._next_check = time.monotonic() + NO_LANE_RECHECK_S
            return
        self._info = info

    def _lost(self, info: Info) -> None:
        with self._lock:
            if self._info is info:
                self._info = None
                self._next_check = time.monotonic() + LOST_RECHECK_S
                stale, streams = [s for s, _t in self._idle], self._idle_async
                self._idle, self._idle_async = [], []
            else:
                stale, streams = [], []
        for sock in stale:
            sock.close()
        for conn in streams:
            conn.close()

    def _where(self) -> Info:
        if self._due():
            with contextlib.suppress(Exception):  # Ray unreachable, an older scheduler: no lane
                self._learned(self._fetch())
        return self._known()

    async def _where_async(self) -> Info:
        if self._due():
            with contextlib.suppress(Exception):
                self._learned(await self._fetch_async())
        return self._known()

    def _known(self) -> Info:
        info = self._info
        if info is None or not self.enabled:
            raise LaneDown("no lane to this shard from here", sent=False)
        return info

    def close(self) -> None:
        """Close every idle connection and forget the lane (the next call looks it up again)."""
        with self._lock:
            stale, streams = [s for s, _t in self._idle], self._idle_async
            self._idle, self._idle_async, self._info = [], [], None
        for sock in stale:
            sock.close()
        for conn in streams:
            conn.close()

    # ------------------------------------------------------------- calls
    def call(self, method: str, args: list[Any], timeout_s: float) -> Any:
        """``method(*args)`` on the scheduler over the lane, from a thread."""
        info = self._where()
        frame = _frame(method, args)
        with self._lock:
            sock, bound = self._idle.pop() if self._idle else (None, 0.0)
        if sock is None:
            try:
                sock = connect(info["address"], info["secret"], timeout_s)
            except (OSError, FrameError) as exc:
                self._lost(info)
                raise LaneDown(f"cannot connect: {exc}", sent=False) from None
        try:
            if bound != timeout_s:
                kernel_timeouts(sock, timeout_s)
            sock.sendall(frame)
            answer = read_frame(sock)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, (OSError, ValueError)):  # FrameError is a ValueError
                self._lost(info)
                raise LaneDown(f"connection lost: {exc}", sent=True) from None
            raise
        with self._lock:
            self._idle.append((sock, timeout_s))
        return self._value(answer)

    async def call_async(self, method: str, args: list[Any], timeout_s: float) -> Any:
        """The same from a coroutine, over an asyncio stream of this event loop. (Until
        session 45 over the loop's ``sock_sendall``/``sock_recv``, which register and
        unregister the socket for each read: 75-89 µs of the caller's CPU a call, against
        59-77 over a stream, measured on the same lane.)"""
        info = await self._where_async()
        frame = _frame(method, args)
        conn = self._idle_conn(asyncio.get_running_loop())
        sent = False
        try:
            async with asyncio.timeout(timeout_s):
                if conn is None:
                    conn = await AsyncConn.open(info, min(timeout_s, LANE_CONNECT_TIMEOUT_S))
                sent = True
                conn.writer.write(frame)
                if conn.writer.transport.get_write_buffer_size():  # a large frame: not all sent yet
                    await conn.writer.drain()
                answer = await read_stream_frame(conn.reader)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, (OSError, ValueError, TimeoutError, EOFError)):  # IncompleteReadError: EOF
                self._lost(info)
                raise LaneDown(f"connection lost: {exc}", sent=sent) from None
            raise
        self._idle_async.append(conn)
        return self._value(answer)

    def _idle_conn(self, loop: asyncio.AbstractEventLoop) -> AsyncConn | None:
        """An idle connection of ``loop``; those of loops since closed (a notebook's
        ``asyncio.run`` of each cell, a thread's own loop) are let go on the way."""
        found, keep = None, []
        for conn in self._idle_async:
            if conn.loop.is_closed() or conn.writer.is_closing():
                conn.close()
            elif conn.loop is loop and found is None:
                found = conn
            else:
                keep.append(conn)
        self._idle_async = keep
        return found

    def _value(self, answer: Any) -> Any:
        if not (isinstance(answer, list) and len(answer) == 2):
            raise LaneDown(f"not an answer: {answer!r:.80}", sent=True)
        ok, value = answer
        if ok is not True:
            raise LaneDown(str(value), sent=True)
        self.calls += 1
        return value


def _frame(method: str, args: list[Any]) -> bytes:
    try:
        return pack([method, args])
    except Exception as exc:  # not msgpack (a type, an int past 64 bits), or too large: Ray takes it
        raise LaneDown(f"not for the lane: {exc}", sent=False) from None


class AsyncConn:
    """One stream connection to the lane (kmpray/lane.py ``open_stream``), of the event
    loop that opened it: one request and one answer at a time."""

    __slots__ = ("loop", "reader", "sock", "writer")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.loop, self.sock, self.reader, self.writer = loop, sock, reader, writer

    @classmethod
    async def open(cls, info: Info, timeout_s: float) -> AsyncConn:
        sock, reader, writer = await open_stream(info["address"], info["secret"], timeout_s)
        return cls(asyncio.get_running_loop(), sock, reader, writer)

    def close(self) -> None:
        """From any thread: by its loop if that still runs (its selector forgets the socket
        first), else the socket itself."""
        if self.loop.is_closed():
            self.sock.close()
            return
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            self.loop.call_soon_threadsafe(self.writer.close)
