"""TaskTable: the scheduler core's tasks by row key, the indexes ``status()`` reads, and
the finished rows that live in the store only (cold).

A finished row is read at once for a while (``wait()``, ``get_task_info``, a successor's
input); after ``EngineConfig.finished_in_memory_ms`` the core lets it go cold
(``unique_work.evict_finished``): memory keeps its name, worker, shown state and time of
last update (for ``status()``'s counts, listings and pruning), and a read of it decodes
the row from the store (``loader``). Rows that others still need stay in memory: chain
tasks, a prerequisite or a dependent, one whose output holds large values (artifacts).
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING, Any, NamedTuple

from .enums import FINISHED, TaskState, shown_state

if TYPE_CHECKING:
    from .records import TaskRecord

_FINISHED_STATES = tuple(s for s in TaskState if s in FINISHED)  # in declaration order

#: Reads finished rows back from the store: row keys -> the records found (detached).
Loader = Callable[[list[str]], dict[str, "TaskRecord"]]


_STATES = list(TaskState)
_STATE_IDS = {s: i for i, s in enumerate(_STATES)}
_WORKER_BITS = 16


class Cold(NamedTuple):
    """What memory keeps of a finished row that lives in the store only (its name is its
    key: only such rows go cold), unpacked from the one int it is kept as."""

    worker: str
    state: TaskState  # its shown state, a finished one
    updated_at_ms: int


class TaskTable(dict[str, "TaskRecord"]):
    """The core's tasks by row key, with how many are shown in each state (per worker
    class too), and each state's rows in the order they were last updated, all kept as
    rows come, go and change (lifecycle.py tells it): ``status()``, the metrics and the
    dashboard read them every second, and a scan of every row took 65 ms per 200,000
    tasks on the scheduler's one thread (the dashboard's table, ~1 s per refresh at a
    million tasks). Rows enter by ``table[key] = rec`` and leave by ``pop``.

    The dict holds the rows in memory; ``cold`` the finished ones that left it (counted,
    listed and pruned like the others; ``load`` reads them back), each as one int (last
    update, worker class, state: ``cold_info``), ~200 B a row with its key and index
    entries where a row in memory is ~1.4 KB. ``finishing``: keys of rows that finished,
    in that order, for the sweep that lets them go cold."""

    __slots__ = ("_worker_ids", "_workers", "by_worker", "cold", "finishing", "loader", "recent", "shown",
                 "unsorted")

    def __init__(self) -> None:
        super().__init__()
        self.shown: Counter[TaskState] = Counter()
        self.by_worker: Counter[tuple[str, TaskState]] = Counter()
        # Per shown state, its rows' keys, least recently updated first (a dict keeps the
        # order of insertion; a row updated moves to the end). ``unsorted``: rows came in
        # another order (a restore), so the order is made by ``updated_at_ms`` when read.
        self.recent: dict[TaskState, dict[str, None]] = {s: {} for s in TaskState}
        self.unsorted = False
        self.cold: dict[str, int] = {}  # key -> (updated_at_ms << 20) | (worker id << 4) | state id
        self._workers: list[str] = []
        self._worker_ids: dict[str, int] = {}
        self.finishing: deque[str] = deque()
        self.loader: Loader | None = None  # none: nothing goes cold (a core without a store)

    def __setitem__(self, key: str, rec: TaskRecord) -> None:
        old = self.get(key)
        if old is not None:
            self._leave(old)
            old.table = None
        elif key in self.cold:
            self.drop_cold(key)
        super().__setitem__(key, rec)
        rec.table = self
        state = rec.shown_state
        self._enter(key, rec.worker, state)
        if state in FINISHED and self.loader is not None:
            self.finishing.append(key)

    def add_new(self, rows: list[TaskRecord]) -> None:
        """Rows under keys the table holds neither in memory nor cold (a chain just
        admitted, checked for that), as ``table[key] = rec`` for each would, counted once
        per (worker, state) instead of once per row: that was ~40 % of admitting a
        99,000-task chain in one turn."""
        groups: dict[tuple[str, TaskState], list[str]] = {}
        for rec in rows:
            rec.table = self
            groups.setdefault((rec.worker, shown_state(rec.state, rec.started)), []).append(rec.key)
        before = len(self)
        self.update({rec.key: rec for rec in rows})  # dict's own update: no __setitem__ per row
        assert len(self) == before + len(rows), "add_new: a key was in the table already"
        for (worker, state), keys in groups.items():
            self.shown[state] += len(keys)
            self.by_worker[(worker, state)] += len(keys)
            self.recent[state].update(dict.fromkeys(keys))
            if state in FINISHED and self.loader is not None:
                self.finishing.extend(keys)

    def __delitem__(self, key: str) -> None:
        self.pop(key)

    def pop(self, key: str, *default: Any) -> Any:
        """A row in memory out of the table (a cold one stays: ``drop_cold``)."""
        rec = super().pop(key, *default)
        if getattr(rec, "table", None) is self:
            self._leave(rec)
            rec.table = None
        return rec

    def _enter(self, key: str, worker: str, state: TaskState) -> None:
        """A row counted in the indexes (in memory or cold alike)."""
        self.shown[state] += 1
        self.by_worker[(worker, state)] += 1
        self.recent[state][key] = None

    def _exit(self, key: str, worker: str, state: TaskState) -> None:
        self.shown[state] -= 1
        self.by_worker[(worker, state)] -= 1
        self.recent[state].pop(key, None)

    def _leave(self, rec: TaskRecord) -> None:
        self._exit(rec.key, rec.worker, rec.shown_state)

    def moved(self, rec: TaskRecord, before: TaskState, after: TaskState) -> None:
        self.shown[before] -= 1
        self.shown[after] += 1
        by_worker = self.by_worker
        by_worker[(rec.worker, before)] -= 1
        by_worker[(rec.worker, after)] += 1
        self.recent[before].pop(rec.key, None)
        self.recent[after][rec.key] = None
        if after in FINISHED and self.loader is not None:  # none: nothing ever goes cold
            self.finishing.append(rec.key)

    def touched(self, rec: TaskRecord) -> None:
        """``rec.updated_at_ms`` moved on: it is its state's most recently updated row."""
        order = self.recent[rec.shown_state]
        order.pop(rec.key, None)
        order[rec.key] = None

    # ------------------------------------------------------------------ cold rows
    def evict(self, rec: TaskRecord) -> bool:
        """A finished row, already in the store as it is, leaves memory (still counted).
        False (it stays) past 65,536 worker classes (the id's bits) or a negative time."""
        packed = self._packed(rec)
        if packed is None:
            return False
        dict.pop(self, rec.key)
        rec.table = None
        self.cold[rec.key] = packed
        return True

    def add_cold(self, rec: TaskRecord) -> bool:
        """A finished row read from the store at a restart, kept cold at once (counted as
        ``table[key] = rec`` would, never in memory). False: it cannot be (``evict``)."""
        packed = self._packed(rec)
        if packed is None:
            return False
        self.cold[rec.key] = packed
        self._enter(rec.key, rec.worker, rec.state)
        return True

    def _packed(self, rec: TaskRecord) -> int | None:
        wid = self._worker_ids.get(rec.worker)
        if wid is None:
            wid = len(self._workers)
            if wid >> _WORKER_BITS:
                return None
            self._worker_ids[rec.worker] = wid
            self._workers.append(rec.worker)
        if rec.updated_at_ms < 0:
            return None
        state = _STATE_IDS[rec.state]  # finished: shown as it is
        return (rec.updated_at_ms << (_WORKER_BITS + 4)) | (wid << 4) | state

    def cold_info(self, key: str) -> Cold:
        packed = self.cold[key]
        return Cold(self._workers[(packed >> 4) & ((1 << _WORKER_BITS) - 1)], _STATES[packed & 15],
                    packed >> (_WORKER_BITS + 4))

    def warm(self, rec: TaskRecord) -> None:
        """A cold row read back from the store, in memory again (to be changed or removed;
        it goes cold again at a later sweep if it stays as it is)."""
        del self.cold[rec.key]
        super().__setitem__(rec.key, rec)
        rec.table = self
        self.finishing.append(rec.key)

    def drop_cold(self, key: str) -> bool:
        """Forget a cold row (pruned, replaced): False if ``key`` is not one."""
        if key not in self.cold:
            return False
        c = self.cold_info(key)
        del self.cold[key]
        self._exit(key, c.worker, c.state)
        return True

    def load(self, keys: list[str]) -> dict[str, TaskRecord]:
        """Cold rows read from the store, not put back in memory (reads)."""
        return self.loader(keys) if keys and self.loader is not None else {}

    def brief(self, key: str) -> tuple[bool, int, str | None] | None:
        """(finished, last updated, chain id) of a row in memory or cold; None if unknown."""
        rec = self.get(key)
        if rec is not None:
            return rec.state.is_finished, rec.updated_at_ms, rec.chain_id
        return (True, self.cold_info(key).updated_at_ms, None) if key in self.cold else None

    def _updated(self, key: str) -> int:
        rec = self.get(key)
        return rec.updated_at_ms if rec is not None else self.cold[key] >> (_WORKER_BITS + 4)

    # ---------------------------------------------------------------------- reads
    def newest(self, state: TaskState | None, worker: str | None, limit: int) -> tuple[int, list[TaskRecord]]:
        """How many rows match, and the ``limit`` most recently updated of them, newest
        first: O(limit) per state, not a pass over every row (cold ones read back)."""
        self._sort()
        states = [state] if state is not None else list(TaskState)
        total, picked, cold = 0, [], []
        for s in states:
            matching = self.shown[s] if worker is None else self.by_worker[(worker, s)]
            total += matching
            want = min(limit, matching)
            if want == 0:
                continue
            for key in reversed(self.recent[s]):
                rec = self.get(key)
                if rec is None:
                    if worker is None or self.cold_info(key).worker == worker:
                        cold.append(key)
                        want -= 1
                elif worker is None or rec.worker == worker:
                    picked.append(rec)
                    want -= 1
                if want == 0:
                    break
        picked += self.load(cold).values()
        return total, heapq.nlargest(limit, picked, key=attrgetter("updated_at_ms"))

    def finished_before(self, horizon_ms: int) -> list[tuple[str, str, str | None]]:
        """(key, name, chain id) of finished rows last updated before ``horizon_ms``,
        oldest first per state: what a prune may drop, found without a pass over the rest."""
        self._sort()
        out: list[tuple[str, str, str | None]] = []
        for state in _FINISHED_STATES:
            for key in self.recent[state]:
                rec = self.get(key)
                if rec is None:
                    if self._updated(key) >= horizon_ms:
                        break
                    out.append((key, key, None))  # a cold row's name is its key
                    continue
                if rec.updated_at_ms >= horizon_ms:
                    break
                out.append((key, rec.name, rec.chain_id))
        return out

    def listing(self, state: TaskState | None = None) -> tuple[list[str], list[TaskRecord]]:
        """Every row (in ``state``) at this instant: the cold ones' keys, to be read from the
        store (in parts, between which the reader serves other calls), and the records in
        memory. Taken at one instant, before the reader awaits anything: a row that goes
        cold while the cold ones are read is then listed once, as it was when listed (taking
        the rows in memory after the reads missed every row a sweep let go meanwhile)."""
        in_memory = [rec for rec in self.values() if state is None or rec.shown_state is state]
        return self.cold_keys(state), in_memory

    def cold_keys(self, state: TaskState | None = None) -> list[str]:
        """Keys of the cold rows (in ``state``)."""
        if state is None:
            return list(self.cold)
        sid = _STATE_IDS[state]
        return [key for key, packed in self.cold.items() if packed & 15 == sid]

    def _sort(self) -> None:
        if self.unsorted:
            for s, order in self.recent.items():
                self.recent[s] = dict.fromkeys(sorted(order, key=self._updated))
            self.unsorted = False

    def workers(self) -> list[str]:
        """Every worker class with rows here."""
        return sorted({w for (w, _s), n in self.by_worker.items() if n > 0})
