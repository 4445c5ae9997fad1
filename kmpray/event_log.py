"""The event log behind the EventBroker: append-only rows whose number is the cursor a
subscriber resumes from (SQLite, or in memory when the file was refused). Completion
events arrive tagged with their scheduler outbox number, so one re-sent after a restart
is appended once (see ``SqliteTaskStore.write``'s ``events``). Each row says whether it
is a progress event: ``trim`` keeps the newest completions and the newest progress
events by separate counts, so a flood of progress never pushes completions out."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from .store_files import _connect, _refusing, _transaction, release
from .timing import STORE_LOCK_WAIT_S
from .wal import sync_quietly


class EventLog(Protocol):
    def append(
        self, events: list[bytes], origins: Sequence[int | None] | None = None, source: int = 0,
        progress: Sequence[bool] | None = None,
    ) -> list[int]: ...

    def read(self, after: int, limit: int) -> list[tuple[int, bytes]]: ...

    def last_cursor(self) -> int: ...

    def first_cursor(self) -> int: ...

    def last_origin(self, source: int = 0) -> int: ...

    def trim(self, keep: int, progress: bool = False) -> None: ...

    def trimmed_to(self) -> int:
        """The newest cursor of a completion event trimmed (0: none ever was): a reader
        behind it missed completions (client/subscription.py says so)."""
        ...

    def sync_if_quiet(self, max_rows: int) -> bool:
        """As ``TaskStore.sync_if_quiet``."""
        ...

    def close(self) -> None: ...


def first_sends(
    events: list[bytes], origins: Sequence[int | None] | None, last: int,
    progress: Sequence[bool] | None = None,
) -> tuple[list[tuple[bytes, bool]], int]:
    """The events to append with their progress flags (None: none is progress), and the
    newest origin after them: an event whose origin (its scheduler outbox number) is at or
    below ``last`` was appended before (a re-send; None: no origins, none is)."""
    flags = progress if progress is not None else [False] * len(events)
    numbers = origins if origins is not None else [None] * len(events)
    keep = [(e, o, f) for e, o, f in zip(events, numbers, flags, strict=True) if o is None or o > last]
    return [(e, f) for e, _o, f in keep], max([last, *(o for _e, o, _f in keep if o is not None)])


def as_lists(rows: list[tuple[int, bytes]]) -> list[list[Any]]:
    """Rows as a poll answers them through Ray: ``[cursor, body]`` lists, which Ray packs
    in C, where it pickles each tuple apart (1,000 rows: 1.4 ms against 0.15, and 0.2 to
    make the lists)."""
    return [[cursor, body] for cursor, body in rows]


def jumped_trimmed(after: int, first_read: int, trimmed_to: int) -> bool:
    """Whether a read after cursor ``after`` whose first row is ``first_read`` jumped over
    completions the retention trimmed (``trimmed_to``: EventLog.trimmed_to). The newest
    trimmed completion lying in the jump is one it missed; past the first row read, a
    trim came after the read and nothing is said. Not after cursor 0: ``since=0`` asks
    for what is retained."""
    return 0 < after < trimmed_to < first_read


_EVENT_TABLES = {
    # progress: 1 for a progress event (trimmed by a count of its own). Files written before
    # it existed get the column at open (SqliteEventLog): their rows count as completions.
    "events": "CREATE TABLE IF NOT EXISTS events (cursor INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL, "
              "progress INTEGER NOT NULL DEFAULT 0)",
    # The last scheduler outbox number appended: a re-sent event is appended once.
    "origin": "CREATE TABLE IF NOT EXISTS origin (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL)",
    # The same for scheduler shards 1, 2, ... (each numbers its own outbox); shard 0's is above.
    "origins": "CREATE TABLE IF NOT EXISTS origins (source INTEGER PRIMARY KEY, seq INTEGER NOT NULL)",
    # The newest cursor of a completion event trimmed (retention): what a reader behind it missed.
    "trimmed": "CREATE TABLE IF NOT EXISTS trimmed (id INTEGER PRIMARY KEY CHECK (id = 1), "
               "upto INTEGER NOT NULL)",
}


class SqliteEventLog:
    """Append-only event rows; the rowid is the cursor subscribers resume from."""

    def __init__(
        self, path: str | Path, durability: str = "normal", lock_wait_s: float = STORE_LOCK_WAIT_S,
        engine: str | None = None,
    ) -> None:
        self._conn = conn = _connect(Path(path), _EVENT_TABLES, durability, lock_wait_s, engine)
        self._lock = threading.Lock()
        self._path = Path(path)
        self._written = 0  # rows appended or trimmed since the last sync_if_quiet
        with _refusing(Path(path)):
            if "progress" not in {row[1] for row in conn.execute("PRAGMA table_info(events)")}:
                # A file from before progress had a count of its own: its rows are completions.
                conn.execute("ALTER TABLE events ADD COLUMN progress INTEGER NOT NULL DEFAULT 0")
            # trim's "the newest N progress events": a walk down this index (progress rows
            # only: appending a completion costs no index entry), not a scan of the log...
            conn.execute("CREATE INDEX IF NOT EXISTS progress_events ON events (cursor) WHERE progress = 1")
            # ...and the completions' cursors, oldest first (~4 MB at 100,000), so a trim knows
            # where to cut without walking 100,000 rows back (~15 ms per trim here).
            self._completions = deque(c for (c,) in conn.execute(
                "SELECT cursor FROM events WHERE progress = 0 ORDER BY cursor"))
            row = conn.execute("SELECT upto FROM trimmed WHERE id = 1").fetchone()
            self._trimmed_to = int(row[0]) if row else 0

    def append(
        self, events: list[bytes], origins: Sequence[int | None] | None = None, source: int = 0,
        progress: Sequence[bool] | None = None,
    ) -> list[int]:
        """Append in order; an event with an ``origin`` (its scheduler outbox number) at or
        below the last one appended from the same ``source`` (scheduler shard) is a re-send
        after a restart: skipped. ``progress`` flags the progress events (None: none is)."""
        if not events:
            return []
        with self._lock:
            with _transaction(self._conn) as conn:
                last = self.last_origin(source) if origins is not None else 0
                rows, newest = first_sends(events, origins, last, progress)
                if newest > last and source:
                    conn.execute("INSERT OR REPLACE INTO origins (source, seq) VALUES (?, ?)", (source, newest))
                elif newest > last:
                    conn.execute("INSERT OR REPLACE INTO origin (id, seq) VALUES (1, ?)", (newest,))
                start = self.last_cursor()
                conn.executemany("INSERT INTO events (body, progress) VALUES (?, ?)", rows)
            # Committed. AUTOINCREMENT never reuses a cursor: the batch owns start+1..start+n.
            cursors = list(range(start + 1, start + 1 + len(rows)))
            self._written += len(rows)
            self._completions.extend(c for c, (_body, flag) in zip(cursors, rows, strict=True) if not flag)
        return cursors

    def read(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        return list(
            self._conn.execute(
                "SELECT cursor, body FROM events WHERE cursor > ? ORDER BY cursor LIMIT ?", (after, limit)
            )
        )

    def last_cursor(self) -> int:
        row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return int(row[0]) if row else 0

    def last_origin(self, source: int = 0) -> int:
        """The newest scheduler outbox number appended from ``source`` (0: none yet)."""
        if source:
            row = self._conn.execute("SELECT seq FROM origins WHERE source = ?", (source,)).fetchone()
        else:
            row = self._conn.execute("SELECT seq FROM origin WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def first_cursor(self) -> int:
        row = self._conn.execute("SELECT MIN(cursor) FROM events").fetchone()
        return int(row[0]) if row and row[0] is not None else self.last_cursor() + 1

    def trim(self, keep: int, progress: bool = False) -> None:
        """Keep the newest ``keep`` completion events (``progress``: progress events); the
        other kind's rows stay as they are."""
        with self._lock, _transaction(self._conn) as conn:
            self._written += 1
            if progress:
                row = conn.execute("SELECT cursor FROM events WHERE progress = 1 ORDER BY cursor DESC "
                                   "LIMIT 1 OFFSET ?", (keep,)).fetchone()
                if row is not None:  # the newest past the `keep` kept: it and older go
                    conn.execute("DELETE FROM events WHERE progress = 1 AND cursor <= ?", (row[0],))
                return
            done = self._completions
            if len(done) > keep:
                cut = done[-keep - 1]
                conn.execute("DELETE FROM events WHERE progress = 0 AND cursor <= ?", (cut,))
                conn.execute("INSERT OR REPLACE INTO trimmed (id, upto) VALUES (1, ?)", (cut,))
                for _ in range(len(done) - keep):
                    done.popleft()
                self._trimmed_to = cut

    def trimmed_to(self) -> int:
        return self._trimmed_to

    def sync_if_quiet(self, max_rows: int) -> bool:
        with self._lock:
            written, self._written = self._written, 0
            with _refusing(self._path):
                return sync_quietly(self._conn, written, max_rows)

    def close(self) -> None:
        self._conn.close()
        release(self._path)


class MemoryEventLog:
    def __init__(self) -> None:
        self._rows: list[tuple[int, bytes]] = []
        self._last = 0
        self._origins: dict[int, int] = {}  # source (scheduler shard) -> last origin appended
        self._progress: set[int] = set()  # the cursors of progress events
        self._trimmed = 0  # see EventLog.trimmed_to

    def append(
        self, events: list[bytes], origins: Sequence[int | None] | None = None, source: int = 0,
        progress: Sequence[bool] | None = None,
    ) -> list[int]:
        rows, newest = first_sends(events, origins, self._origins.get(source, 0), progress)
        if origins is not None:
            self._origins[source] = newest
        cursors = []
        for body, flag in rows:
            self._last += 1
            self._rows.append((self._last, body))
            if flag:
                self._progress.add(self._last)
            cursors.append(self._last)
        return cursors

    def read(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        return [r for r in self._rows if r[0] > after][:limit]

    def last_cursor(self) -> int:
        return self._last

    def last_origin(self, source: int = 0) -> int:
        return self._origins.get(source, 0)

    def first_cursor(self) -> int:
        return self._rows[0][0] if self._rows else self._last + 1

    def trim(self, keep: int, progress: bool = False) -> None:
        kind = [c for c, _b in self._rows if (c in self._progress) == progress]
        gone = set(kind[:-keep] if keep else kind)
        self._rows = [r for r in self._rows if r[0] not in gone]
        self._progress -= gone
        if gone and not progress:
            self._trimmed = max(self._trimmed, *gone)

    def trimmed_to(self) -> int:
        return self._trimmed

    def sync_if_quiet(self, max_rows: int) -> bool:
        return False  # nothing to sync

    def close(self) -> None:
        pass
