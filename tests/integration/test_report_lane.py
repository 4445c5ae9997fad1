"""Reports over the local lane (actors/report_lane.py) against a real lane server
(actors/lane.py) in this process, no Ray: batches are written without waiting for
earlier answers, answered in order; what is unanswered when the connection breaks goes
to the fallback (Ray's call) in order; what the lane cannot carry is refused at once."""

from __future__ import annotations

import asyncio
from typing import Any

from kmpray.actors.lane import LaneServer
from kmpray.actors.report_lane import LaneReports, Report

from kmpray.lane import REPORT
from kmpray.protocol import Began, Done, Progress, Stored

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


async def _until(check: Any, what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_batches_go_without_waiting_for_answers_and_are_answered_in_order() -> None:
    async def scenario() -> None:
        sched = Scheduler()
        await sched.server.start()
        replies: list[list[Report]] = []
        fallback: list[list[Report]] = []
        lane = await _connected(sched, replies, fallback)
        sched.gate.clear()  # the scheduler is busy: nothing is answered yet
        assert lane.add([Began("a", 1)], eager=True)
        assert lane.add([Progress("a", 1, 50, "half")], eager=True)
        assert lane.add([_done("a")], eager=False)  # at the end of this turn, with the next one
        assert lane.add([_done("b")], eager=False)
        await asyncio.sleep(0.05)
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
        sched = Scheduler()
        await sched.server.start()
        replies: list[list[Report]] = []
        fallback: list[list[Report]] = []
        lane = await _connected(sched, replies, fallback)
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
        sched = Scheduler()
        await sched.server.start()
        replies: list[list[Report]] = []
        fallback: list[list[Report]] = []
        lane = await _connected(sched, replies, fallback)
        stored = Stored("d" * 64, "ndarray", 8, object(), True, "Success.data['a']")
        assert lane.add([_done("big")._replace(stored=[stored])], eager=True) is False  # an object ref
        other = await _connected(sched, [], [], node="node-b")  # another node's process: no lane
        assert other._writer is None and other.add([_done("c")], eager=True) is False
        assert lane.batches == 0 and sched.heard == []
        lane.close()
        sched.server.close()

    asyncio.run(scenario())
