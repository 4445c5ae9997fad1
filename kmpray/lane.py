"""The local lane: enqueue calls from a client on the scheduler's own node, the reports of
executors and heavy workers on it and the runs sent to them, over a Unix
socket beside Ray's actor call (which stays the way for everything else, and for every
call the lane cannot carry).

Why: on this kind of machine one Ray actor message costs the receiving process ~0.8 ms
of CPU and a call's forward hop ~1.1 ms, where a Unix-socket round trip between two
Python processes costs ~55 us. A client's enqueue is the one call users make thousands of
times; Ray still places, restarts and names the scheduler, and carries the calls' retries.

The wire: frames of a 4-byte big-endian length and a msgpack body. The client's first
frame is the scheduler's secret (32 random bytes, handed out only through the
authenticated Ray call ``lane()``), the scheduler answers ``[true, null]`` or closes.
Then each request ``[method, args]`` gets one answer ``[true, value]`` or
``[false, "why"]``, in order: a client sends one request at a time per connection, an
executor's reports follow each other without waiting (actors/report_lane.py), and the
scheduler pushes ``[SUBMIT, args]`` frames down an executor's connection, answered by a
``TAKEN`` request (actors/submit_lane.py). On Linux the socket lives in the abstract
namespace (no file to leave behind when a process is killed); elsewhere it is a file in
a private temp folder.

This module is the pure part (framing, addresses); actors/lane.py serves it,
kmpray/client/lane.py and actors/report_lane.py call it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import socket
import struct
import sys
import tempfile
from typing import Any

import msgpack

HEADER = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024  # larger calls go through Ray
SECRET_BYTES = 32
LANE_METHODS = frozenset({"enqueue_many", "enqueue_chain"})  # what a client's lane may carry
# Reads it may carry too, with no request token (asked twice, a read is harmless): a call
# through Ray costs the scheduler ~0.8 ms of CPU, a lane frame ~0.1 ms, and enqueue() then
# wait() is what most callers do.
# Not list_tasks: its answer for a large engine can pass the frame limit, and a read the
# lane cannot carry is made twice. get_output: an output with large values answers with
# object-store references, which msgpack cannot carry; that one goes through Ray (its
# answer is a lookup: asked twice, it costs little).
LANE_READS = frozenset({"get_info", "get_chain_info", "get_output", "wait", "wait_many", "wait_chain",
                        "describe", "explain"})
REPORT = "report"  # an executor's or heavy worker's results and notices (actors/report_lane.py)
EXECUTOR = "executor"  # an executor's first request: [kind, index, incarnation] (actors/submit_lane.py)
SUBMIT = "submit"  # runs pushed to an executor down its lane: [call id, runs, fence, acks]
TAKEN = "taken"  # an executor's answer to a submit pushed down its lane: [call id, incarnation, done]


class FrameError(ValueError):
    """A frame too large, or a body that is not msgpack."""


def pack(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes over {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def body_size(header: bytes) -> int:
    n: int = HEADER.unpack(header)[0]
    if n > MAX_FRAME:
        raise FrameError(f"frame of {n} bytes over {MAX_FRAME}")
    return n


#: A body at least this large is unpacked with the cyclic garbage collector off: building
#: its objects (300,000 enqueue items: 1.2 million dicts) set off collections that scanned
#: the structure being built again and again, ~3 s of the scheduler's loop instead of ~0.3.
LARGE_BODY = 1 << 20


def unpack(body: bytes) -> Any:
    collecting = len(body) >= LARGE_BODY and gc.isenabled()
    if collecting:
        gc.disable()
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)  # int keys as Ray would keep them
    except Exception as exc:
        raise FrameError(f"not a msgpack frame: {exc}") from None
    finally:
        if collecting:
            gc.enable()


def new_address() -> str:
    """A fresh address for one scheduler's lane: an abstract-namespace name on Linux
    (written with a leading "@"), a file in a private temp folder elsewhere."""
    name = f"kmpray-lane-{os.getpid()}-{secrets.token_hex(8)}"
    if sys.platform.startswith("linux"):
        return "@" + name
    folder = os.path.join(tempfile.gettempdir(), f"kmpray-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return os.path.join(folder, name + ".sock")


def sock_address(address: str) -> str:
    """What socket.bind/connect take for ``address``."""
    return "\0" + address[1:] if address.startswith("@") else address


def _dial(address: str, timeout_s: float) -> socket.socket:
    """A blocking socket connected to ``address``, its connect bounded by ``timeout_s``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(sock_address(address))
    except BaseException:
        sock.close()
        raise
    return sock


def connect(address: str, secret: bytes, timeout_s: float) -> socket.socket:
    """A blocking connection that passed the hello (raises OSError or FrameError)."""
    sock = _dial(address, timeout_s)
    try:
        sock.sendall(pack(secret))
        ok, _ = read_frame(sock)
        if ok is not True:
            raise FrameError("the lane refused the hello")
    except BaseException:
        sock.close()
        raise
    return sock


async def open_stream(
    address: str, secret: bytes, timeout_s: float
) -> tuple[socket.socket, asyncio.StreamReader, asyncio.StreamWriter]:
    """An asyncio stream connection that passed the hello (raises OSError, FrameError or
    EOFError), with its socket. The socket is connected here and handed to the loop, not
    connected by the loop: Ray runs every actor on uvloop whenever it is installed, and
    uvloop's ``open_unix_connection`` refuses an abstract-namespace address (EINVAL; its
    ``start_unix_server`` and ``sock_connect`` take one). Until session 45 every executor's
    report lane, and with it the submits pushed down it, was off on such a machine,
    silently: Ray's calls carried everything."""
    sock = _dial(address, timeout_s)
    try:
        sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        writer.write(pack(secret))
        hello = await read_stream_frame(reader)
        if not (isinstance(hello, list) and hello and hello[0] is True):
            raise FrameError("the lane refused the hello")
    except BaseException:
        writer.close()
        raise
    return sock, reader, writer


def kernel_timeouts(sock: socket.socket, timeout_s: float) -> None:
    """Make ``sock`` blocking, each send and receive bounded by ``timeout_s`` in the kernel
    (SO_SNDTIMEO, SO_RCVTIMEO): a socket with Python's own timeout polls before every send
    and receive, two more system calls per round trip (26 against 17 µs of the caller's
    CPU per round trip here, with the single read below). Past the bound the call raises
    OSError as Python's timeout would; where the options are missing, Python's timeout."""
    if timeout_s > 0:
        seconds = int(timeout_s)
        bound = struct.pack("ll", seconds, int((timeout_s - seconds) * 1e6) or (0 if seconds else 1))
        try:
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bound)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bound)
            return
        except (OSError, AttributeError):
            pass
    sock.settimeout(timeout_s)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("the lane closed the connection")
        buf += chunk
    return bytes(buf)


#: The first read of an answer: its header and, for nearly every answer, its whole body.
FIRST_READ = 64 * 1024


def still_to_come(first: bytes) -> int:
    """How many bytes of the frame ``first`` begins (its header at least) are yet to be
    read; a connection that carries one answer at a time never holds more than it."""
    missing = HEADER.size + body_size(first[:HEADER.size]) - len(first)
    if missing < 0:
        raise FrameError("more than one frame where one answer was due")
    return missing


def read_frame(sock: socket.socket) -> Any:
    """One frame from a blocking socket that carries one answer at a time (a client's
    request, the hello): header and body in one read when they came together."""
    first = sock.recv(FIRST_READ)
    if not first:
        raise ConnectionResetError("the lane closed the connection")
    if len(first) < HEADER.size:
        first += _read_exactly(sock, HEADER.size - len(first))
    missing = still_to_come(first)
    return unpack(first[HEADER.size:] + _read_exactly(sock, missing) if missing else first[HEADER.size:])


async def read_stream_frame(reader: asyncio.StreamReader) -> Any:
    """One frame from an asyncio stream (the scheduler's server, an executor's connection)."""
    return unpack(await reader.readexactly(body_size(await reader.readexactly(HEADER.size))))
