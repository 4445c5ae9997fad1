"""An executor's local lane against a real lane server (actors/lane.py) in this process,
no Ray. Reports (actors/report_lane.py): batches are written without waiting for
earlier answers, answered in order; what is unanswered when the connection breaks goes
to the fallback (Ray's call) in order; what the lane cannot carry is refused at once.
Submits (actors/submit_lane.py): pushed down the executor's connection only to the
process it said it is, answered on it; unanswered when it closes, they fail as a dead
actor's call does."""

from __future__ import annotations

import asyncio
from typing import Any

from kmpray.actors.lane import Conn, LaneServer
from kmpray.actors.report_lane import LaneReports, Report
from kmpray.actors.submit_lane import LaneLost, SubmitLanes

from kmpray.lane import EXECUTOR, REPORT, SUBMIT, TAKEN
from kmpray.protocol import Began, Done, Fence, Progress, Run, Stored, run_from_wire, taken_from_wire

NODE = "node-a"


def _done(key: str) -> Done:
    return Done(key, 1, ("s", None, {"k": key}))


class Scheduler:
    """The lane server with a ``report`` that records, and can be held."""

    def __init__(self) -> None:
        self.heard: list[tuple[list[Any], list[Any], list[Any]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.server = LaneServer({REPORT: self.report})

    async def report(self, done: list[Any], progress: list[Any], began: list[Any]) -> None:
        await self.gate.wait()
        self.heard.append((done, progress, began))

    def info(self) -> dict[str, Any]:
        return {"address": self.server.address, "secret": self.server.secret, "node": NODE}


async def _connected(sched: Scheduler, replies: list[list[Report]], fallback: list[list[Report]],
                     node: str = NODE) -> LaneReports:
    async def fetch() -> dict[str, Any]:
        return sched.info()

    lane = LaneReports(fetch, node, lambda _a, items: replies.append(items), fallback.append)
    assert lane.add([_done("first")], eager=True) is False  # no lane yet: looked up meanwhile
    await asyncio.wait_for(lane._connecting, 5)  # type: ignore[arg-type]
    return lane


async def _started() -> tuple[Scheduler, LaneReports, list[list[Report]], list[list[Report]]]:
    """A scheduler's lane server and an executor's reports connected to it; the batches
    answered and those handed to the fallback are recorded."""
    sched = Scheduler()
    await sched.server.start()
    replies: list[list[Report]] = []
    fallback: list[list[Report]] = []
    return sched, await _connected(sched, replies, fallback), replies, fallback


async def _until(check: Any, what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_batches_go_without_waiting_for_answers_and_are_answered_in_order() -> None:
    async def scenario() -> None:
        sched, lane, replies, fallback = await _started()
        sched.gate.clear()  # the scheduler is busy: nothing is answered yet
        assert lane.add([Began("a", 1)], eager=True)
        assert lane.add([Progress("a", 1, 50, "half")], eager=True)
        assert lane.add([_done("a")], eager=False)  # at the end of this turn, with the next one
        assert lane.add([_done("b")], eager=False)
        # the first report is held by the busy scheduler; the rest wait in the socket behind it
        await _until(lambda: sched.server.calls[REPORT] == 1, "the first report, held")
        assert lane.batches == 3 and not lane.idle and replies == []  # all three written, none answered
        sched.gate.set()
        await asyncio.wait_for(lane.drained(), 5)
        assert replies == [[Began("a", 1)], [Progress("a", 1, 50, "half")], [_done("a"), _done("b")]]
        wire = [[k, 1, ["s", None, {"k": k}], None, None] for k in ("a", "b")]  # msgpack's lists
        assert [h[0] for h in sched.heard] == [[], [], wire]
        assert sched.heard[1][1] == [["a", 1, 50, "half"]] and fallback == []
        lane.close()
        sched.server.close()

    asyncio.run(scenario())


def test_what_is_unanswered_when_the_lane_breaks_goes_to_the_fallback_in_order() -> None:
    async def scenario() -> None:
        sched, lane, replies, fallback = await _started()
        assert lane.add([_done("answered")], eager=True)
        await asyncio.wait_for(lane.drained(), 5)
        sched.gate.clear()
        assert lane.add([_done("x")], eager=True) and lane.add([_done("y")], eager=True)
        await _until(lambda: sched.server.calls[REPORT] >= 2, "the held report")
        sched.server.close()  # the scheduler goes away with both unanswered
        await _until(lambda: fallback, "the fallback")
        assert replies == [[_done("answered")]]
        assert fallback == [[_done("x"), _done("y")]] and lane.idle
        assert lane.add([_done("z")], eager=True) is False  # lost: Ray's call until it is found again

    asyncio.run(scenario())


def test_what_the_lane_cannot_carry_is_refused_at_once() -> None:
    async def scenario() -> None:
        sched, lane, replies, fallback = await _started()
        stored = Stored("d" * 64, "ndarray", 8, object(), True, "Success.data['a']")
        assert lane.add([_done("big")._replace(stored=[stored])], eager=True) is False  # an object ref
        other = await _connected(sched, [], [], node="node-b")  # another node's process: no lane
        assert other._writer is None and other.add([_done("c")], eager=True) is False
        assert lane.batches == 0 and sched.heard == [] and replies == fallback == []
        lane.close()
        sched.server.close()

    asyncio.run(scenario())


class Pool:
    """The scheduler's side of submits down the lane: a lane server with the executor's
    hello and ``taken`` attached to SubmitLanes, as SchedulerActor wires them."""

    def __init__(self) -> None:
        self.lanes = SubmitLanes()
        self.server = LaneServer({REPORT: self.report}, {EXECUTOR: self.hello, TAKEN: self.taken})

    async def report(self, *_: Any) -> None:
        return None

    async def hello(self, conn: Conn, kind: str, index: int, incarnation: str) -> None:
        self.lanes.opened(index, incarnation, conn)

    async def taken(self, conn: Conn, call_id: int, incarnation: str, done: list[Any]) -> None:
        SubmitLanes.taken(conn, call_id, incarnation, done)

    def info(self) -> dict[str, Any]:
        return {"address": self.server.address, "secret": self.server.secret, "node": NODE}


def _run(key: str, then: Run | None = None) -> Run:
    return Run(key, 1, "W", 1, '{"x": 1}', {"up": [1, 2]}, 0, None, None, None, then, "OVERWRITE", 123)


def test_runs_pushed_down_an_executors_lane_arrive_whole_and_are_answered_on_it() -> None:
    async def scenario() -> None:
        pool = Pool()
        await pool.server.start()
        pushed: list[tuple[str, list[Any]]] = []

        async def fetch() -> dict[str, Any]:
            return pool.info()

        lane = LaneReports(fetch, NODE, lambda *_: None, lambda _: None, ["light", 0, "inc-1"],
                           lambda method, args: pushed.append((method, args)))
        lane.connect_soon()
        await asyncio.wait_for(lane._connecting, 5)  # type: ignore[arg-type]
        await _until(lambda: pool.lanes._by_index, "the executor's hello")
        fence = Fence("epoch", 7)
        assert pool.lanes.submit(0, "inc-0", [_run("a")], fence, None) is None  # another process of it
        assert pool.lanes.submit(1, "inc-1", [_run("a")], fence, None) is None  # another executor
        with_refs = _run("r")._replace(refs={"d" * 64: object()})  # an object ref: Ray carries it
        assert pool.lanes.submit(0, "inc-1", [with_refs], fence, None) is None
        answer = pool.lanes.submit(0, "inc-1", [_run("a", then=_run("b"))], fence, [("old", 1)])
        assert answer is not None
        await _until(lambda: pushed, "the pushed submit")
        method, (call_id, runs, got_fence, acks) = pushed[0]
        assert method == SUBMIT and acks == [["old", 1]] and Fence(*got_fence) == fence
        assert run_from_wire(runs[0]) == _run("a", then=_run("b"))  # nested ``then`` too
        assert lane.request(TAKEN, [call_id, "inc-1", [_done("a")]])
        incarnation, done = await asyncio.wait_for(answer, 5)
        # the lane hands msgpack's lists on as they came, like a Ray submit's answer;
        # ``taken_from_wire`` makes records of them (once: the lane no longer converts too)
        assert incarnation == "inc-1" and isinstance(done[0], list)
        as_records = taken_from_wire((incarnation, done))[1]
        assert as_records == [_done("a")._replace(result=["s", None, {"k": "a"}])]
        # the lane closes with a submit unanswered: it fails as a dead actor's call would
        unanswered = pool.lanes.submit(0, "inc-1", [_run("c")], fence, None)
        assert unanswered is not None
        lane.close()
        try:
            await asyncio.wait_for(unanswered, 5)
            raise AssertionError("the submit should have failed")
        except LaneLost:
            pass
        assert pool.lanes.submit(0, "inc-1", [_run("d")], fence, None) is None and pool.lanes.sent == 2
        pool.server.close()

    asyncio.run(scenario())
