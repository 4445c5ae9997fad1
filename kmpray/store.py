"""Durable state: the task store and the event log, as Protocols with SQLite and memory implementations.

Rows are msgpack maps (never pickle). Writes arrive in batches and commit in one
transaction, so a burst of enqueues costs one fsync-bounded commit, not one each.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import msgpack

from .chain import ChainRecord
from .records import TaskRecord, decode, encode


class TaskStore(Protocol):
    def load(self) -> list[TaskRecord]: ...

    def load_chains(self) -> list[ChainRecord]: ...

    def write(
        self,
        put: Iterable[TaskRecord],
        delete: Iterable[str] = (),
        chains: Iterable[ChainRecord] = (),
        delete_chains: Iterable[str] = (),
    ) -> None: ...

    def get_meta(self, key: str) -> object | None: ...

    def put_meta(self, key: str, value: object) -> None: ...

    def close(self) -> None: ...


class EventLog(Protocol):
    def append(self, events: list[bytes]) -> list[int]: ...

    def read(self, after: int, limit: int) -> list[tuple[int, bytes]]: ...

    def last_cursor(self) -> int: ...

    def first_cursor(self) -> int: ...

    def trim(self, keep: int) -> None: ...

    def close(self) -> None: ...


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One explicit transaction: committed whole, or rolled back whole."""
    conn.execute("BEGIN")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives a process crash; only an OS crash may lose
    # the last transactions. FULL via KMPRAY_SQLITE_SYNC=FULL for power-loss durability.
    conn.execute(f"PRAGMA synchronous={os.environ.get('KMPRAY_SQLITE_SYNC', 'NORMAL')}")
    return conn


class SqliteTaskStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn = _connect(self.path)
        self._conn.execute("CREATE TABLE IF NOT EXISTS tasks (key TEXT PRIMARY KEY, row BLOB NOT NULL)")
        self._conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        self._conn.execute("CREATE TABLE IF NOT EXISTS chains (id TEXT PRIMARY KEY, row BLOB NOT NULL)")

    def load(self) -> list[TaskRecord]:
        return [decode(blob) for (blob,) in self._conn.execute("SELECT row FROM tasks")]

    def load_chains(self) -> list[ChainRecord]:
        return [ChainRecord.decode(blob) for (blob,) in self._conn.execute("SELECT row FROM chains")]

    def write(
        self,
        put: Iterable[TaskRecord],
        delete: Iterable[str] = (),
        chains: Iterable[ChainRecord] = (),
        delete_chains: Iterable[str] = (),
    ) -> None:
        rows = [(rec.key, encode(rec)) for rec in put]
        gone = [(k,) for k in delete]
        chain_rows = [(c.id, c.encode()) for c in chains]
        chains_gone = [(k,) for k in delete_chains]
        if not (rows or gone or chain_rows or chains_gone):
            return
        with _transaction(self._conn) as conn:
            if gone:
                conn.executemany("DELETE FROM tasks WHERE key = ?", gone)
            if rows:
                conn.executemany("INSERT OR REPLACE INTO tasks (key, row) VALUES (?, ?)", rows)
            if chains_gone:
                conn.executemany("DELETE FROM chains WHERE id = ?", chains_gone)
            if chain_rows:
                conn.executemany("INSERT OR REPLACE INTO chains (id, row) VALUES (?, ?)", chain_rows)

    def get_meta(self, key: str) -> object | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return msgpack.unpackb(row[0], raw=False) if row else None

    def put_meta(self, key: str, value: object) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            (key, msgpack.packb(value, use_bin_type=True)),
        )

    def close(self) -> None:
        self._conn.close()


class MemoryTaskStore:
    """Same contract, kept in a dict of encoded rows (so the codec is exercised too)."""

    def __init__(self) -> None:
        self._rows: dict[str, bytes] = {}
        self._chains: dict[str, bytes] = {}
        self._meta: dict[str, bytes] = {}

    def load(self) -> list[TaskRecord]:
        return [decode(b) for b in self._rows.values()]

    def load_chains(self) -> list[ChainRecord]:
        return [ChainRecord.decode(b) for b in self._chains.values()]

    def write(
        self,
        put: Iterable[TaskRecord],
        delete: Iterable[str] = (),
        chains: Iterable[ChainRecord] = (),
        delete_chains: Iterable[str] = (),
    ) -> None:
        for key in delete:
            self._rows.pop(key, None)
        for rec in put:
            self._rows[rec.key] = encode(rec)
        for key in delete_chains:
            self._chains.pop(key, None)
        for chain in chains:
            self._chains[chain.id] = chain.encode()

    def get_meta(self, key: str) -> object | None:
        raw = self._meta.get(key)
        return msgpack.unpackb(raw, raw=False) if raw is not None else None

    def put_meta(self, key: str, value: object) -> None:
        self._meta[key] = msgpack.packb(value, use_bin_type=True)

    def close(self) -> None:
        pass


class SqliteEventLog:
    """Append-only event rows; the rowid is the cursor subscribers resume from."""

    def __init__(self, path: str | Path) -> None:
        self._conn = _connect(Path(path))
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS events (cursor INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)"
        )
        self._lock = threading.Lock()

    def append(self, events: list[bytes]) -> list[int]:
        if not events:
            return []
        with self._lock, _transaction(self._conn) as conn:
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

    def append(self, events: list[bytes]) -> list[int]:
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

    def first_cursor(self) -> int:
        return self._rows[0][0] if self._rows else self._last + 1

    def trim(self, keep: int) -> None:
        self._rows = [r for r in self._rows if r[0] > self._last - keep]

    def close(self) -> None:
        pass
