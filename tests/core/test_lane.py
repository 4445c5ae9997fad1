"""The local lane (kmpray/lane.py) without Ray: the scheduler's server (actors/lane.py)
in an event loop of its own thread, the client's Lane (kmpray/client/lane.py) against it,
and what each failure makes the client do (fall back to Ray: LaneDown, sent or not)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kmpray.actors.lane import LaneServer
from kmpray.actors.report_lane import LaneReports

from kmpray.client import lane as client_lane
from kmpray.client.lane import Lane, LaneDown
from kmpray.lane import (
    LARGE_BODY,
    MAX_FRAME,
    FrameError,
    body_size,
    connect,
    kernel_timeouts,
    pack,
    read_frame,
    read_stream_frame,
    sock_address,
    unpack,
)


class Served:
    """A LaneServer in its own loop thread; ``applied`` lists what its methods received."""

    def __init__(self, new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop) -> None:
        self.applied: list[Any] = []
        self.loop = new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def enqueue_many(items: list[Any], token: str) -> list[list[Any]]:
            self.applied.append((items, token))
            return [["SUCCESS", None] for _ in items]

        async def enqueue_chain(payload: Any, token: str) -> Any:
            raise RuntimeError("chain refused")

        self.server = LaneServer({"enqueue_many": enqueue_many, "enqueue_chain": enqueue_chain})
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)

    def info(self, node: str = "here") -> dict[str, Any]:
        return {"address": self.server.address, "secret": self.server.secret, "node": node}

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await asyncio.sleep(0.05)  # its connections' handlers see the close and end

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    yield s
    s.stop()


def _lane(info: Any, lookups: list[int] | None = None) -> Lane:
    def fetch() -> Any:
        if lookups is not None:
            lookups.append(1)
        return info() if callable(info) else info

    async def fetch_async() -> Any:
        return fetch()

    return Lane(fetch, fetch_async, lambda: "here")


def test_frames_round_trip_and_refuse_oversize_and_garbage() -> None:
    frame = pack(["enqueue_many", [[{"id": "a", "input": None}], "tok"]])
    assert body_size(frame[:4]) == len(frame) - 4
    assert unpack(frame[4:]) == ["enqueue_many", [[{"id": "a", "input": None}], "tok"]]
    assert unpack(pack({1: "int keys stay, as through Ray"})[4:]) == {1: "int keys stay, as through Ray"}
    with pytest.raises(FrameError, match="over"):
        body_size((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(FrameError, match="not a msgpack frame"):
        unpack(b"\xc1")  # a byte msgpack never uses


def test_a_large_body_is_unpacked_without_the_cyclic_collector_running() -> None:
    """300,000 enqueue items in one frame are 1.2 million dicts: built with the collector
    on, its collections scanned the structure being built again and again (~3 s of the
    scheduler's loop against ~0.3). A large body is unpacked with it off, and on after."""
    import gc

    items = [{"id": f"t{i}", "trigger": {"kind": "one_time"}, "constraints": None} for i in range(40_000)]
    body = pack(["enqueue_many", [items, "tok"]])[4:]
    assert len(body) >= LARGE_BODY
    runs: list[str] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            runs.append(phase)

    gc.collect()
    gc.callbacks.append(seen)
    try:
        assert unpack(body)[1][0][-1]["id"] == "t39999"
        assert runs == [] and gc.isenabled()
        unpack(pack([[{"x": [i]} for i in range(2_000)]])[4:])  # small: as before, the collector may run
    finally:
        gc.callbacks.remove(seen)


class _Pieces:
    """A socket whose reads return the given pieces in turn (each cut to what was asked)."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)
        self.reads: list[int] = []

    def recv(self, n: int) -> bytes:
        self.reads.append(n)
        piece = self.pieces.pop(0) if self.pieces else b""
        if len(piece) > n:
            self.pieces.insert(0, piece[n:])
        return piece[:n]


def test_an_answer_is_read_whole_in_pieces_and_one_frame_at_a_time() -> None:
    small = pack(["ok", 1])
    one = _Pieces(small)
    assert read_frame(one) == ["ok", 1] and len(one.reads) == 1  # type: ignore[arg-type]  # header and body: one read
    big = pack(["big", "x" * 300_000])
    split = _Pieces(big[:3], big[3:70_000], big[70_000:])  # the header itself in two pieces
    assert read_frame(split) == ["big", "x" * 300_000]  # type: ignore[arg-type]
    assert split.pieces == [] and split.reads[:2] == [64 * 1024, 1]
    with pytest.raises(FrameError, match="more than one frame"):
        read_frame(_Pieces(small + small))  # type: ignore[arg-type]
    with pytest.raises(ConnectionResetError):
        read_frame(_Pieces(big[:100]))  # type: ignore[arg-type]  # closed mid-frame
    a, b = socket.socketpair()  # and a real socket with the kernel's timeouts
    try:
        kernel_timeouts(a, 5)
        mid = pack(["mid", "z" * 100_000])  # over the first read, under the socket's buffer
        b.sendall(mid)
        assert read_frame(a) == ["mid", "z" * 100_000]
    finally:
        a.close()
        b.close()


async def _read_async(sock: socket.socket) -> Any:
    """Two answers as the async client reads them (``read_stream_frame`` over ``sock``)."""
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        return [await read_stream_frame(reader), await read_stream_frame(reader)]
    finally:
        writer.close()


def test_the_async_read_takes_the_same_frames_one_at_a_time() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        big = pack(["big", "y" * 100_000])  # over the socket's first read
        b.sendall(pack(["ok", 2]) + big[:2])  # one frame and a piece of the next together
        b.sendall(big[2:])
        assert asyncio.run(_read_async(a)) == [["ok", 2], ["big", "y" * 100_000]]
    finally:
        a.close()
        b.close()


def test_a_silent_peer_times_the_read_out_in_the_kernel() -> None:
    a, b = socket.socketpair()
    try:
        kernel_timeouts(a, 0.2)
        assert a.gettimeout() is None  # blocking: no poll before each call
        started = time.monotonic()
        with pytest.raises(OSError):
            read_frame(a)  # nothing comes: the kernel ends the wait
        assert time.monotonic() - started < 10  # bounded (it waits ~0.2 s), not for ever
    finally:
        a.close()
        b.close()


def test_sync_calls_reuse_one_connection_and_keep_their_order(served: Served) -> None:
    lane = _lane(served.info())
    for i in range(5):
        assert lane.call("enqueue_many", [[{"id": f"t{i}"}], f"tok{i}"], 5) == [["SUCCESS", None]]
    assert [token for _items, token in served.applied] == [f"tok{i}" for i in range(5)]
    assert lane.calls == 5 and served.server.calls["enqueue_many"] == 5
    assert served.server.accepted == 1  # one connection, reused
    lane.close()  # shutdown(): connections closed, the lane forgotten
    assert lane._idle == [] and lane._info is None


def test_async_calls_from_two_event_loops(served: Served) -> None:
    lane = _lane(served.info())

    async def three(tag: str) -> list[Any]:
        calls = (lane.call_async("enqueue_many", [[{"id": f"{tag}{i}"}], f"{tag}{i}"], 5) for i in range(3))
        return list(await asyncio.gather(*calls))

    assert asyncio.run(three("a")) == [[["SUCCESS", None]]] * 3
    assert asyncio.run(three("b")) == [[["SUCCESS", None]]] * 3  # a new loop: connections of its own
    assert sorted(token for _items, token in served.applied) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert served.server.accepted <= 6  # at most one connection per call in flight, per loop
    loops = {conn.loop for conn in lane._idle_async}  # "a"'s were let go by "b"'s first call
    assert len(loops) == 1 and all(loop.is_closed() for loop in loops)  # "b"'s, kept until a call comes

    async def one_by_one(tags: str) -> None:  # one loop, calls one after another: one connection
        for tag in tags:
            assert await lane.call_async("enqueue_many", [[{"id": tag}], tag], 5) == [["SUCCESS", None]]

    before = served.server.accepted
    asyncio.run(one_by_one("cde"))
    assert served.server.accepted == before + 1
    assert len(lane._idle_async) == 1  # the closed loops' connections were let go on the way


def test_the_lane_serves_and_is_called_on_uvloop_too() -> None:
    """Ray runs every actor on uvloop when it is installed (common beside web stacks), and
    uvloop's open_unix_connection refuses an abstract-namespace address (EINVAL): every
    executor's report lane (and the submits pushed down it) was off on such a machine,
    silently (Ray's calls carried it all). Its socket is now connected by kmpray/lane.py
    and handed to the loop. The scheduler's server and the clients' calls worked there."""
    import uvloop

    served = Served(uvloop.new_event_loop)  # the scheduler's loop
    try:
        assert served.server.address.startswith("@")  # the abstract namespace, as before
        lane = _lane(served.info())

        async def three() -> list[Any]:
            calls = (lane.call_async("enqueue_many", [[{"id": f"u{i}"}], f"u{i}"], 5) for i in range(3))
            return list(await asyncio.gather(*calls))

        assert uvloop.run(three()) == [[["SUCCESS", None]]] * 3  # a client on uvloop
        assert sorted(token for _items, token in served.applied) == ["u0", "u1", "u2"]
        assert lane.call("enqueue_many", [[{"id": "sync"}], "sync"], 5) == [["SUCCESS", None]]

        async def reports_connect() -> bool:  # an executor's report lane, on uvloop
            async def fetch() -> dict[str, Any]:
                return served.info()

            lane = LaneReports(fetch, "here", lambda _answer, _batch: None, lambda _batch: None)
            lane.connect_soon()
            assert lane._connecting is not None
            await lane._connecting
            connected = lane._writer is not None
            lane.close()
            return connected

        assert uvloop.run(reports_connect())  # was refused: EINVAL, and its runs went through Ray
    finally:
        served.stop()


def test_a_wrong_secret_is_refused_and_nothing_is_applied(served: Served) -> None:
    with pytest.raises((ConnectionError, FrameError)):
        connect(served.server.address, b"x" * 32, 5)
    wrong = dict(served.info(), secret=b"y" * 32)
    lane = _lane(wrong)
    with pytest.raises(LaneDown) as down:
        lane.call("enqueue_many", [[{"id": "t"}], "tok"], 5)
    assert down.value.sent is False  # the request never left: Ray's first try is a first try
    assert served.applied == [] and served.server.refused == 2


def test_an_error_answer_and_an_unknown_method_send_the_call_to_ray_as_a_retry(served: Served) -> None:
    lane = _lane(served.info())
    with pytest.raises(LaneDown, match="chain refused") as down:
        lane.call("enqueue_chain", [{"id": "c"}, "tok"], 5)
    assert down.value.sent is True
    with pytest.raises(LaneDown, match="does not carry 'cancel_all'"):
        lane.call("cancel_all", [], 5)
    assert lane.call("enqueue_many", [[{"id": "t"}], "tok"], 5) == [["SUCCESS", None]]  # still serving


def test_values_msgpack_cannot_carry_go_to_ray_unsent(served: Served) -> None:
    lane = _lane(served.info())
    for value in (object(), 2**70, -(2**64)):  # a type, ints past 64 bits (OverflowError, not TypeError)
        with pytest.raises(LaneDown, match="not for the lane") as down:
            lane.call("enqueue_many", [[{"id": "t", "constraints": {"x": value}}], "tok"], 5)
        assert down.value.sent is False
    assert served.applied == []


def test_another_node_never_connects_and_asks_again_only_after_a_while(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[int] = []
    lane = _lane(served.info(node="elsewhere"), lookups)
    for _ in range(3):
        with pytest.raises(LaneDown) as down:
            lane.call("enqueue_many", [[{"id": "t"}], "tok"], 5)
        assert down.value.sent is False
    assert len(lookups) == 1 and served.applied == []
    monkeypatch.setattr(client_lane, "NO_LANE_RECHECK_S", 0.0)
    lane._next_check = 0.0
    with pytest.raises(LaneDown):
        lane.call("enqueue_many", [[{"id": "t"}], "tok"], 5)
    assert len(lookups) == 2


def test_a_lost_scheduler_is_a_lost_lane_and_a_new_one_is_looked_up(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    current = {"info": served.info()}
    lookups: list[int] = []
    lane = _lane(lambda: current["info"], lookups)
    assert lane.call("enqueue_many", [[{"id": "a"}], "t1"], 5) == [["SUCCESS", None]]
    served.stop()  # the scheduler's process is gone: its connections and its address
    with pytest.raises(LaneDown) as down:
        lane.call("enqueue_many", [[{"id": "b"}], "t2"], 5)
    assert down.value.sent is True  # it may have arrived: Ray's try goes as a retry
    with pytest.raises(LaneDown) as down:  # within LOST_RECHECK_S: no look-up, straight to Ray
        lane.call("enqueue_many", [[{"id": "c"}], "t3"], 5)
    assert down.value.sent is False and len(lookups) == 1
    restarted = Served()
    try:
        current["info"] = restarted.info()
        monkeypatch.setattr(client_lane, "LOST_RECHECK_S", 0.0)
        lane._next_check = 0.0
        assert lane.call("enqueue_many", [[{"id": "d"}], "t4"], 5) == [["SUCCESS", None]]
        assert len(lookups) == 2 and [t for _i, t in restarted.applied] == ["t4"]
    finally:
        restarted.stop()


def test_nonsense_on_the_socket_closes_that_connection_only(served: Served) -> None:
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(5)
    raw.connect(sock_address(served.server.address))
    raw.sendall(pack(served.server.secret))
    assert read_frame(raw) == [True, None]
    raw.sendall(b"\x00\x00\x00\x02\xc1\xc1")  # a frame whose body is not msgpack
    assert raw.recv(16) == b""  # closed
    raw.close()
    lane = _lane(served.info())
    assert lane.call("enqueue_many", [[{"id": "t"}], "tok"], 5) == [["SUCCESS", None]]


def test_a_client_can_turn_its_lane_off_from_the_environment(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KMPRAY_LOCAL_LANE", "0")
    lane = _lane(served.info())
    with pytest.raises(LaneDown) as down:
        lane.call("enqueue_many", [[{"id": "t"}], "tok"], 5)
    assert down.value.sent is False and served.applied == []
    monkeypatch.setenv("KMPRAY_LOCAL_LANE", "1")
    assert _lane(served.info()).call("enqueue_many", [[{"id": "t"}], "tok"], 5) == [["SUCCESS", None]]
