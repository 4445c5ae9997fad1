"""The event log behind the EventBroker: append-only rows whose number is the cursor a
subscriber resumes from (SQLite, or in memory when the file was refused). Completion
events arrive tagged with their scheduler outbox number, so one re-sent after a restart
is appended once (see ``SqliteTaskStore.write``'s ``events``)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from .store import _connect, _transaction


class EventLog(Protocol):
    def append(
        self, events: list[bytes], origins: Sequence[int | None] | None = None, source: int = 0
    ) -> list[int]: ...

    def read(self, after: int, limit: int) -> list[tuple[int, bytes]]: ...

    def last_cursor(self) -> int: ...

    def first_cursor(self) -> int: ...

    def last_origin(self, source: int = 0) -> int: ...

    def trim(self, keep: int) -> None: ...

    def close(self) -> None: ...


def first_sends(
    events: list[bytes], origins: Sequence[int | None], last: int
) -> tuple[list[bytes], int]:
    """The events to append, and the newest origin after them: an event whose origin (its
    scheduler outbox number) is at or below ``last`` was appended before (a re-send)."""
    keep = [(e, o) for e, o in zip(events, origins, strict=True) if o is None or o > last]
    return [e for e, _o in keep], max([last, *(o for _e, o in keep if o is not None)])


_EVENT_TABLES = {
    "events": "CREATE TABLE IF NOT EXISTS events (cursor INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)",
    # The last scheduler outbox number appended: a re-sent event is appended once.
    "origin": "CREATE TABLE IF NOT EXISTS origin (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL)",
    # The same for scheduler shards 1, 2, ... (each numbers its own outbox); shard 0's is above.
    "origins": "CREATE TABLE IF NOT EXISTS origins (source INTEGER PRIMARY KEY, seq INTEGER NOT NULL)",
}


class SqliteEventLog:
    """Append-only event rows; the rowid is the cursor subscribers resume from."""

    def __init__(self, path: str | Path, durability: str = "normal") -> None:
        self._conn = _connect(Path(path), _EVENT_TABLES, durability)
        self._lock = threading.Lock()

    def append(
        self, events: list[bytes], origins: Sequence[int | None] | None = None, source: int = 0
    ) -> list[int]:
        """Append in order; an event with an ``origin`` (its scheduler outbox number) at or
        below the last one appended from the same ``source`` (scheduler shard) is a re-send
        after a restart: skipped."""
        if not events:
            return []
        with self._lock, _transaction(self._conn) as conn:
            if origins is not None:
                last = self.last_origin(source)
                events, newest = first_sends(events, origins, last)
                if newest > last and source:
                    conn.execute("INSERT OR REPLACE INTO origins (source, seq) VALUES (?, ?)", (source, newest))
                elif newest > last:
                    conn.execute("INSERT OR REPLACE INTO origin (id, seq) VALUES (1, ?)", (newest,))
            start = self.last_cursor()
            conn.executemany("INSERT INTO events (body) VALUES (?)", [(e,) for e in events])
            # AUTOINCREMENT never reuses a cursor, so the batch owns start+1..start+n.
            return list(range(start + 1, start + 1 + len(events)))

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

    def trim(self, keep: int) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM events WHERE cursor <= ?", (self.last_cursor() - keep,))

    def close(self) -> None:
        self._conn.close()


class MemoryEventLog:
    def __init__(self) -> None:
        self._rows: list[tuple[int, bytes]] = []
        self._last = 0
        self._origins: dict[int, int] = {}  # source (scheduler shard) -> last origin appended

    def append(
        self, events: list[bytes], origins: Sequence[int | None] | None = None, source: int = 0
    ) -> list[int]:
        if origins is not None:
            events, self._origins[source] = first_sends(events, origins, self._origins.get(source, 0))
        cursors = []
        for body in events:
            self._last += 1
            self._rows.append((self._last, body))
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

    def trim(self, keep: int) -> None:
        self._rows = [r for r in self._rows if r[0] > self._last - keep]

    def close(self) -> None:
        pass
