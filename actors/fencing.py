"""Fencing: which runs an executor with a blocked event loop must not begin.

When a worker blocks an executor's loop, the scheduler withdraws the runs queued there
(they go to other executors) and answers with a fence: the number of the last batch it
sent that executor under its epoch (a scheduler process's id). The executor then never
begins a run from a batch at or below the fence. A scheduler that restarted has a new
epoch; every batch of an earlier epoch was sent before the fence, so a fence covers those
too (a restarted scheduler adopts the runs an executor holds, and withdraws the queued
ones like its own: without this the executor would still begin them, and they would run
twice). Epochs compare by value: the scheduler's start time comes first in each.

Adoption fences too. A restarted scheduler asks each executor and heavy worker what it
holds (``holding(epoch)``) and runs again whatever is not held. A submit its predecessor
sent just before dying may still be on its way (Ray does not order one caller's calls
against another's, and a lane's frames outlive the process that wrote them): taken after
that answer, it would run here while its successor runs it elsewhere. So once a scheduler
has asked, batches of earlier epochs are refused (``refused``). Epochs compare by value
(how many schedulers the store has seen start, then the start time: actors/scheduler.py,
executor_pool.py), not by when they were seen: a late batch may be the first this process
sees of its epoch. The question is answered on a thread of its own (executor.py
``CONTROL``), so a worker blocking the loop neither makes it time out (the runs held here,
the blocker first, would run again elsewhere) nor lets a batch queued behind the block be
taken when the loop frees. A batch of a later scheduler counts as its question would (its
predecessors are gone), so one whose question did time out (the whole process stalled)
still fences them.
"""

from __future__ import annotations

from typing import TypeAlias

Key: TypeAlias = tuple[str, int]


class Fencing:
    def __init__(self) -> None:
        self._batch_of: dict[Key, tuple[str, int]] = {}  # run -> (epoch, batch)
        self._fence: tuple[str, int] = ("", 0)
        self._adopter = ""  # the newest scheduler's epoch: it asked what this process holds, or sent a batch
        self._given_back: set[Key] = set()  # runs handed back to the scheduler (actors/stealing.py)

    def took(self, key: Key, epoch: str, batch: int) -> None:
        self._batch_of[key] = (epoch, batch)
        self._adopter = max(self._adopter, epoch)  # a later scheduler: the earlier ones are gone

    def fence(self, epoch: str, batch: int) -> None:
        self._fence = (epoch, batch)

    def adopted_by(self, epoch: str) -> None:
        """A restarted scheduler asked what this process holds: batches of earlier epochs
        are refused from now on (a question of an earlier one, arriving late, changes
        nothing)."""
        self._adopter = max(self._adopter, epoch)

    def refused(self, epoch: str) -> bool:
        """A batch of a scheduler earlier than the one that adopted this process's runs:
        sent before that one asked, arriving after; it runs again there, not here."""
        return epoch < self._adopter

    def give_back(self, key: Key) -> None:
        """The scheduler took this queued run back to run it elsewhere (stealing.py)."""
        self._given_back.add(key)

    def withdrawn(self, key: Key) -> bool:
        """Not begun yet and at or below the fence, or given back: it runs elsewhere, never here."""
        if key in self._given_back:
            return True
        taken = self._batch_of.get(key)
        epoch, batch = self._fence
        if taken is None or not epoch:
            return False
        if taken[0] == epoch:
            return taken[1] <= batch
        return taken[0] < epoch  # sent by an earlier scheduler

    def forget(self, key: Key) -> None:
        self._batch_of.pop(key, None)
        self._given_back.discard(key)
