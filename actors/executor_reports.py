"""How an executor or heavy worker talks to its scheduler: results, progress and "began"
notices over the local lane when on the scheduler's node (actors/report_lane.py), through
Ray's report call otherwise and for what the lane cannot carry, in order either way; and
runs pushed down the lane (actors/submit_lane.py), answered there as ``submit`` answers
through Ray. A mixin of the executors (executor.py): the attributes below are the actor's."""

from __future__ import annotations

import asyncio
from typing import Any

from kmpray.lane import SUBMIT, TAKEN
from kmpray.protocol import Done, Fence, Run, RunKey, Taken, done_to_wire, run_from_wire
from kmpray.timing import REPLY_WINDOW_S

from .background import background
from .names import SCHEDULER, lookup
from .outbox import Outbox
from .replies import Replies
from .report_lane import LaneReports, Report, split_reports
from .spool import Spool


class Reporting:
    namespace: str
    incarnation: str
    _scheduler: Any
    _reports: Outbox[Report]
    _lane_reports: LaneReports
    _replies: Replies
    _tasks: dict[RunKey, asyncio.Task[None]]
    _unreported: dict[RunKey, None]
    _spool: Spool

    def _take(self, runs: list[Run], batch: Fence | None = None) -> list[RunKey]:
        raise NotImplementedError  # the executor's

    def _acked(self, keys: list[RunKey]) -> None:
        raise NotImplementedError  # the executor's

    @staticmethod
    def _from_wire(runs: list[Any]) -> list[Run]:
        """A submit's runs: through Ray, the lists of their fields (``run_to_wire``)."""
        return [run_from_wire(run) for run in runs]

    def _taken(self, done: list[Done]) -> Taken:
        """A submit's answer through Ray: its results as lists (``done_to_wire``)."""
        return Taken(self.incarnation, [done_to_wire(d) for d in done])

    def _send(self, items: list[Report]) -> None:
        """Results and notices to the scheduler: over the local lane when it can carry them
        and nothing waits for Ray's call (so their order is kept), else by Ray's call."""
        if not self._reports.busy and self._lane_reports.add(items, eager=not self._tasks):
            return
        self._to_ray(items)

    def _to_ray(self, items: list[Report]) -> None:
        """Through Ray's report call (also the lane's fallback: where results wait while the
        scheduler is down), their results spooled first on its node (actors/spool.py)."""
        self._spool.write(items)
        self._reports.add(items)

    def _report(self, items: list[Report]) -> Any:
        """Ray's report call (the Outbox's): after what the lane took before these."""
        if not self._lane_reports.idle:
            return self._report_after_lane(items)
        done, progress, began = split_reports(items)
        # As lists, which Ray packs in C (each record would be pickled apart: kmpray/protocol.py).
        return self._to_scheduler().report.remote(
            [done_to_wire(d) for d in done], [list(p) for p in progress], [list(b) for b in began])

    async def _report_after_lane(self, items: list[Report]) -> Any:
        await self._lane_reports.drained()
        return await self._report(items)

    async def _lane_info(self) -> dict[str, Any] | None:
        info: dict[str, Any] | None = await self._to_scheduler().lane.remote()
        return info

    def _to_scheduler(self) -> Any:
        """The scheduler's handle, looked up again if the first look-up failed."""
        if self._scheduler is None:
            self._scheduler = lookup(SCHEDULER, self.namespace)
        return self._scheduler

    def _reported(self, _answer: Any, items: list[Report]) -> None:
        for item in items:
            if isinstance(item, Done):
                self._unreported.pop((item.key, item.run_id), None)
        if self._spool.waiting:
            self._spool.answered((item.key, item.run_id) for item in items if isinstance(item, Done))

    def _pushed(self, method: str, args: list[Any]) -> None:
        """A submit down the local lane (actors/submit_lane.py): taken at once, answered
        with a ``taken`` request on the lane, as ``submit`` answers through Ray."""
        if method != SUBMIT:
            return
        call_id, runs, fence, acked = args
        if acked:
            self._acked([tuple(key) for key in acked])
        batch = Fence(*fence) if fence is not None else None
        taken = self._take(self._from_wire(runs), batch)
        # Opened now, as submit() does: a run that ends in its first step rides the answer.
        reply = self._replies.open(taken, batch.epoch if batch else None) if taken and REPLY_WINDOW_S else None
        background(self._answer_pushed(call_id, reply), "answering a pushed batch")

    async def _answer_pushed(self, call_id: int, reply: Any) -> None:
        done = await self._replies.settle(reply, REPLY_WINDOW_S) if reply is not None else []
        plain = [d for d in done if not d.stored]
        for d in done:
            if d.stored:  # object-store references: Ray's report call carries them
                self._replies.kept.pop((d.key, d.run_id), None)
                self._send([d])
        # If the lane went meanwhile, the scheduler sees it close and runs the batch again
        # elsewhere; the results kept here are reported to whoever asks what this holds.
        self._lane_reports.request(TAKEN, [call_id, self.incarnation, plain])
