"""The core's time and capacity queues: when each task is due, and which due task goes next.

A task is in at most one of them at a time: on a timer (``rec.timer_seq``) until it is
due, then in a ready queue (``rec.ready_seq``) until an executor takes it. Re-arming or
finishing a task never searches a heap: its sequence number changes, and the entry left
behind is skipped when it surfaces (lazy deletion). -1 means "in neither".
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Iterator, Mapping

from .enums import TaskState
from .records import TaskRecord

#: Ready-queue order: (0 if expedited else 1, due + qos rank * aging, qos rank, seq, key).
ReadyEntry = tuple[int, int, int, int, str]


class TimerQueue:
    """Due times of ENQUEUED tasks, earliest first."""

    def __init__(self, seq: Iterator[int]) -> None:
        self._heap: list[tuple[int, int, str]] = []
        self._seq = seq

    def set(self, rec: TaskRecord, due: int) -> None:
        """``rec`` is due at ``due`` (any earlier timer or ready entry of it goes stale)."""
        rec.next_run_at_ms = due
        rec.timer_seq = seq = next(self._seq)
        rec.ready_seq = -1
        heapq.heappush(self._heap, (due, seq, rec.key))

    def next_due(self, tasks: Mapping[str, TaskRecord]) -> int | None:
        heap = self._heap
        while heap:
            due, seq, key = heap[0]
            rec = tasks.get(key)
            if rec is not None and rec.timer_seq == seq:
                return due
            heapq.heappop(heap)
        return None

    def pop_due(self, until: int, tasks: Mapping[str, TaskRecord]) -> Iterator[TaskRecord]:
        """Every ENQUEUED task whose live timer is due by ``until``, taken off its timer."""
        heap = self._heap
        while heap and heap[0][0] <= until:
            _due, seq, key = heapq.heappop(heap)
            rec = tasks.get(key)
            if rec is not None and rec.timer_seq == seq and rec.state is TaskState.ENQUEUED:
                yield rec


class ReadyQueue:
    """Due tasks waiting for an executor: expedited first, then by due time with each qos
    class below HIGH counted ``aging_ms`` later (equal due times order HIGH > DEFAULT >
    LOW, yet a LOW task that waited long enough wins), then first come first served."""

    def __init__(self, seq: Iterator[int], aging_ms: int) -> None:
        self._heap: list[ReadyEntry] = []
        self._seq = seq
        self._aging_ms = aging_ms

    def __len__(self) -> int:
        """Entries, counting stale ones (an upper bound of the tasks waiting)."""
        return len(self._heap)

    def entry(self, rec: TaskRecord, seq: int) -> ReadyEntry:
        c = rec.constraints
        due = rec.next_run_at_ms if rec.next_run_at_ms is not None else 0
        rank = c.qos.rank  # (a property: once, not twice per entry)
        return (0 if c.expedited else 1, due + rank * self._aging_ms, rank, seq, rec.key)

    def push(self, rec: TaskRecord) -> None:
        rec.ready_seq = seq = next(self._seq)
        rec.timer_seq = -1
        heapq.heappush(self._heap, self.entry(rec, seq))

    def push_many(self, recs: list[TaskRecord]) -> None:
        """``push`` each; more entries than the queue holds make the heap again at once
        (O(n), against O(k log n) pushed one by one: a chain's 50,000-task first step)."""
        entries = []
        for rec in recs:
            rec.ready_seq = seq = next(self._seq)
            rec.timer_seq = -1
            entries.append(self.entry(rec, seq))
        heap = self._heap
        if len(entries) > len(heap):
            heap.extend(entries)
            heapq.heapify(heap)
        else:
            for entry in entries:
                heapq.heappush(heap, entry)

    def pop(self, tasks: Mapping[str, TaskRecord]) -> TaskRecord | None:
        """The next live task, taken off the queue; None when there is none."""
        heap = self._heap
        while heap:
            *_, seq, key = heapq.heappop(heap)
            rec = tasks.get(key)
            if rec is not None and rec.ready_seq == seq and rec.state is TaskState.ENQUEUED:
                rec.ready_seq = -1
                return rec
        return None

    def live(self, tasks: Mapping[str, TaskRecord]) -> list[ReadyEntry]:
        """The live entries, in the order they will be taken (O(n log n))."""
        return sorted(entry for entry in self._heap if is_queued(tasks.get(entry[4]), entry[3]))

    def ahead_of_each(self, mine: list[ReadyEntry], tasks: Mapping[str, TaskRecord]) -> list[int]:
        """For each of ``mine`` (sorted), how many live entries come before it: one pass
        over the queue for all of them (O(n log k)), no sort of the whole queue."""
        before = [0] * (len(mine) + 1)
        for entry in self._heap:
            if is_queued(tasks.get(entry[4]), entry[3]):
                before[bisect.bisect_right(mine, entry)] += 1
        return list(itertools.accumulate(before[:-1]))

    def ahead_of(self, rec: TaskRecord, tasks: Mapping[str, TaskRecord]) -> int:
        """How many live entries come before ``rec``'s (O(n))."""
        return self.ahead_of_each([self.entry(rec, rec.ready_seq)], tasks)[0]


class Deadlines:
    """Windowed tasks' ends: one not run by then FAILS ("window expired")."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []

    def __bool__(self) -> bool:
        return bool(self._heap)

    def add(self, end_ms: int, key: str) -> None:
        heapq.heappush(self._heap, (end_ms + 1, key))  # expires after its end

    def next(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def passed(self, now: int) -> Iterator[str]:
        while self._heap and self._heap[0][0] <= now:
            yield heapq.heappop(self._heap)[1]


def is_queued(rec: TaskRecord | None, seq: int | None = None) -> bool:
    """Is this task in a ready queue now (due, waiting only for capacity)?"""
    if rec is None or rec.state is not TaskState.ENQUEUED or rec.ready_seq == -1:
        return False
    return seq is None or rec.ready_seq == seq


def sequence() -> Iterator[int]:
    """One counter shared by a core's timer and ready queues (entries never tie)."""
    return itertools.count()
