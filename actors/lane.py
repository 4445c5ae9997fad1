"""The scheduler's side of the local lane (kmpray/lane.py): a Unix-socket server in the
actor's own event loop, so a call arriving on it joins the same turn and the same group
commit as one arriving through Ray."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
import os
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from kmpray.lane import SECRET_BYTES, FrameError, new_address, pack, read_stream_frame, sock_address

log = logging.getLogger("kmpray.lane")

Method = Callable[..., Awaitable[Any] | Any]


class Conn:
    """One connection, as the methods in ``LaneServer.attached`` see it: the scheduler can
    push frames down it (an executor's submits, actors/submit_lane.py) and hears it close."""

    __slots__ = ("_writer", "closed", "on_close", "waiting")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.closed = False
        self.on_close: list[Callable[[], None]] = []
        self.waiting: dict[int, asyncio.Future[Any]] = {}  # pushed submits not answered yet

    def push(self, frame: bytes) -> None:
        self._writer.write(frame)


class LaneServer:
    """Serves ``methods`` (name -> coroutine function) to clients that know the secret;
    ``attached`` ones are called with the connection (``Conn``) first."""

    def __init__(self, methods: dict[str, Method], attached: dict[str, Method] | None = None) -> None:
        self.methods = methods
        self.attached = attached or {}
        self.secret = secrets.token_bytes(SECRET_BYTES)
        self.address = new_address()
        self.calls: Counter[str] = Counter()  # by method
        self.accepted = 0  # connections that passed the hello
        self.refused = 0
        self._server: asyncio.AbstractServer | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, sock_address(self.address))
        if not self.address.startswith("@"):
            os.chmod(self.address, 0o600)

    def close(self) -> None:
        for writer in list(self._open):
            writer.close()
        if self._server is not None:
            self._server.close()
            if not self.address.startswith("@"):
                with contextlib.suppress(OSError):
                    os.unlink(self.address)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        conn = Conn(writer)
        try:
            hello = await read_stream_frame(reader)
            if not (isinstance(hello, bytes) and hmac.compare_digest(hello, self.secret)):
                self.refused += 1
                return
            self.accepted += 1
            writer.write(pack([True, None]))
            while True:
                answer = await self._answer(await read_stream_frame(reader), conn)
                try:
                    frame = pack(answer)
                except Exception as exc:  # the client asks Ray, whose retry finds the answer
                    frame = pack([False, f"answer not packable: {exc}"])
                writer.write(frame)
        except (asyncio.IncompleteReadError, ConnectionError, FrameError):
            pass  # the client went away or spoke nonsense: its calls fall back to Ray
        finally:
            self._open.discard(writer)
            writer.close()
            conn.closed = True
            for hook in conn.on_close:
                hook()

    async def _answer(self, request: Any, conn: Conn) -> list[Any]:
        if not (isinstance(request, list) and len(request) == 2 and isinstance(request[1], list)):
            return [False, "a request is [method, args]"]
        method, args = request
        if not isinstance(method, str) or (method not in self.methods and method not in self.attached):
            return [False, f"the lane does not carry {method!r}"]
        self.calls[method] += 1
        try:
            fn = self.attached.get(method)
            value = fn(conn, *args) if fn is not None else self.methods[method](*args)
            if inspect.isawaitable(value):  # the actor's async methods; a plain one answers at once
                value = await value
            return [True, value]
        except Exception as exc:  # the client makes the call again through Ray, which says it properly
            return [False, f"{type(exc).__name__}: {exc}"]
