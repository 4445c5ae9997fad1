"""Results in the submit's answer: a run that ends within a moment of being handed over
is reported in the reply to the submit that brought it, not in a report call of its own.

Every message an async actor receives costs its process ~0.8 ms of CPU on this machine
(Ray's hand-over from its receiving thread to the event loop; a sync actor: ~0.47 ms),
so for a short run the report call was the scheduler's most expensive part of it. A
submit now waits up to ``REPLY_WINDOW_S`` for its runs and answers with the results of
those that ended by then; the others report as before (batched, in order). A run that
said anything else first (progress, "began") reports through the same batches, so its
result never overtakes its own progress.

A result sent in a reply is kept until the scheduler acknowledges it (with its next
submit or ping to this process): a reply can be lost with the scheduler that was to read
it, and a restarted scheduler asks what this process holds (``holding``); the results
still kept are reported to it again, so nothing finished runs a second time. Once it has
asked (or sent a batch), an answer to a submit of the scheduler before it may never be read
(it went to the dead one, or down the lane it was connected to): a run that ends after
that reports on its own, and results in an answer not yet sent are reported instead. (A
worker that blocked the event loop from within the window, through a restart, ended into
its submit's answer to the dead scheduler: the restarted one adopted the run and never
heard of it again.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from kmpray.protocol import Done, RunKey


class _Reply:
    __slots__ = ("done", "epoch", "pending", "ready")

    def __init__(self, keys: Iterable[RunKey], epoch: str | None, loop: asyncio.AbstractEventLoop) -> None:
        self.epoch = epoch  # the scheduler's that sent the submit (None: unfenced)
        self.pending = set(keys)
        self.done: list[Done] = []
        self.ready: asyncio.Future[None] = loop.create_future()

    def settle(self, key: RunKey, done: Done | None) -> None:
        self.pending.discard(key)
        if done is not None:
            self.done.append(done)
        if not self.pending and not self.ready.done():
            self.ready.set_result(None)


class Replies:
    """``report``: sends results by the executor's own report call. ``superseded(epoch)``:
    a later scheduler than ``epoch``'s has adopted this process (may be asked from the
    ``holding`` thread's side: it only reads)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        report: Callable[[list[Done]], None],
        superseded: Callable[[str], bool],
    ) -> None:
        self._loop = loop
        self._report = report
        self._superseded = superseded
        self._open: dict[RunKey, _Reply] = {}  # run -> the submit answer it may ride
        self.kept: dict[RunKey, Done] = {}  # sent in a reply, not acknowledged yet

    async def collect(self, keys: list[RunKey], window_s: float, epoch: str | None = None) -> list[Done]:
        """The results of ``keys`` that end within ``window_s`` (all of them, at once, if
        they all end sooner); the rest report on their own. ``epoch``: the submit's."""
        return await self.settle(self.open(keys, epoch), window_s)

    def open(self, keys: list[RunKey], epoch: str | None = None) -> _Reply:
        """An answer these runs may ride, from now (before their tasks first run)."""
        reply = _Reply(keys, epoch, self._loop)
        for key in keys:
            self._open[key] = reply
        return reply

    async def settle(self, reply: _Reply, window_s: float) -> list[Done]:
        """``collect``'s wait, for an answer ``open`` began."""
        try:
            await asyncio.wait((reply.ready,), timeout=window_s)
        finally:
            for key in reply.pending:
                if self._open.get(key) is reply:
                    del self._open[key]
        if reply.done and self._stale(reply):  # kept, they would wait for a question already asked
            done, reply.done = reply.done, []
            self._report(done)
            return []
        for d in reply.done:
            self.kept[(d.key, d.run_id)] = d
        return reply.done

    def finished(self, done: Done) -> bool:
        """A run ended: True if its result rides an open reply (else: report it)."""
        key = (done.key, done.run_id)
        reply = self._open.pop(key, None)
        if reply is None:
            return False
        if self._stale(reply):
            reply.settle(key, None)
            return False
        reply.settle(key, done)
        return True

    def _stale(self, reply: _Reply) -> bool:
        """The submit's scheduler has been succeeded: its answer may never be read."""
        return reply.epoch is not None and self._superseded(reply.epoch)

    def detach(self, key: RunKey) -> None:
        """The run reports on its own (it said something first, or ended with nothing to say)."""
        reply = self._open.pop(key, None)
        if reply is not None:
            reply.settle(key, None)

    def ack(self, keys: Iterable[RunKey]) -> list[RunKey]:
        """The scheduler stored these results: forget them; returns those that were kept."""
        return [key for key in map(tuple, keys) if self.kept.pop(key, None) is not None]  # type: ignore[misc]

    def take_kept(self) -> list[Done]:
        """For a restarted scheduler: every result whose reply may have been lost."""
        kept, self.kept = list(self.kept.values()), {}
        return kept
