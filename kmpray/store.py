"""Durable state: the task store and the event log, as Protocols with SQLite and memory implementations.

Rows are msgpack maps (never pickle). Writes arrive in batches and commit in one
transaction, so a burst of enqueues costs one fsync-bounded commit, not one each.

Damage is contained, never fatal to the healthy rows: ``load`` decodes row by row and
moves a row that does not decode to the ``quarantine`` table (its bytes, the reason,
the time), logged once. A file that is not a SQLite database, is damaged beyond its
rows, or carries a newer schema is refused at open with one line saying what to do
(``StoreRefused``). Nothing read from a store is ever decoded with anything but msgpack.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgpack

from .chain_record import ChainRecord
from .errors import DamagedRow
from .records import TaskRecord, decode, encode
from .store_files import SCHEMA_VERSION, _connect, _refusing, _transaction, disk_error, fresh_reader, release
from .timing import STORE_LOCK_WAIT_S
from .wal import WAL_SIZE_LIMIT, sync_quietly

__all__ = ["INLINE_INPUT_CHARS", "SCHEMA_VERSION", "WAL_SIZE_LIMIT", "QuarantinedRow", "SqliteTaskStore",
           "TaskStore"]

log = logging.getLogger("kmpray.store")

READ_CHUNK = 500  # keys per query of read_tasks (SQLite allows 32,766 parameters)

#: An input longer than this (characters) is kept in the store only: the row says how
#: long it is, the record in memory drops it once written, and each dispatch reads it back
#: (``TaskStore.read_input``). A thousand 1 MiB inputs waiting cost the scheduler no GiB.
INLINE_INPUT_CHARS = 16 * 1024

_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class QuarantinedRow:
    """A stored row that did not decode, kept byte for byte (never decoded again)."""

    table: str  # "tasks", "chains", "meta" or "events"
    key: str
    reason: str
    at_ms: int
    size: int
    head: str  # the first 32 bytes, in hex

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "key": self.key, "reason": self.reason, "at_ms": self.at_ms,
                "size": self.size, "head": self.head}


def _quarantined(table: str, key: str, reason: str, blob: object) -> QuarantinedRow:
    raw = blob if isinstance(blob, bytes) else str(blob).encode()
    log.warning("store: %s row %r does not decode (%s); moved to quarantine (see `kmpray quarantine`)",
                table, key, reason)
    return QuarantinedRow(table, key, reason, time.time_ns() // 1_000_000, len(raw), raw[:32].hex())


def decode_rows(
    table: str, rows: Iterable[tuple[str, object]], parse: Callable[[bytes], _R], key_of: Callable[[_R], str]
) -> tuple[list[_R], list[tuple[QuarantinedRow, bytes]]]:
    """Decode ``(key, blob)`` rows one by one: the healthy ones, and the damaged ones with
    their original bytes. A row must also name the key it is stored under."""
    good: list[_R] = []
    bad: list[tuple[QuarantinedRow, bytes]] = []
    for key, blob in rows:
        try:
            value = parse(blob)  # type: ignore[arg-type]
            if key_of(value) != key:
                raise DamagedRow(f"stored under {key!r} but names {key_of(value)!r}")
            good.append(value)
        except DamagedRow as exc:
            raw = blob if isinstance(blob, bytes) else str(blob).encode()
            bad.append((_quarantined(table, str(key), str(exc), raw), raw))
    return good, bad


class TaskStore(Protocol):
    """Where the scheduler keeps its rows. ``load``/``load_chains`` return the rows that
    decode and move every other one to quarantine (``quarantined`` lists them, with the
    reason; ``drop_quarantined`` deletes one for good)."""

    def load(self, cold: Callable[[TaskRecord], bool] | None = None) -> list[TaskRecord]:
        """Every row that decodes; ``cold(rec)`` (the core's ``restore_cold``) may take a
        finished row as it is decoded, to be kept in the store only: it is not returned."""
        ...

    def load_chains(self) -> list[ChainRecord]: ...

    def read_tasks(self, keys: list[str]) -> dict[str, TaskRecord]:
        """The rows of ``keys`` the store has (a damaged one is left out, logged)."""
        ...

    def quarantined(self) -> list[QuarantinedRow]: ...

    def drop_quarantined(self, key: str) -> int: ...

    def take_fresh_quarantine(self) -> list[QuarantinedRow]:
        """The rows moved to quarantine since the last call (by ``load``, ``load_chains``,
        ``get_meta``): what the scheduler contains (see ``SchedulerCore.restore``)."""
        ...

    def write(
        self,
        put: Iterable[TaskRecord],
        delete: Iterable[str] = (),
        chains: Iterable[ChainRecord] = (),
        delete_chains: Iterable[str] = (),
        events: Sequence[bytes] = (),
        answers: Sequence[tuple[str, bytes, int]] = (),
        acked: int | None = None,
    ) -> list[int]:
        """One transaction; ``events`` (encoded completion events) go to the outbox in it,
        so a result stored is an event that will be published, and ``answers`` (request
        token, packed answer, epoch ms) record what the enqueue calls applied here were
        answered; ``acked``: forget outbox events up to it (the event log has them) in the
        same transaction. Returns the events' outbox numbers."""
        ...

    def read_input(self, key: str) -> str | None:
        """The input of task ``key`` kept out of its record (``TaskRecord.input_stored``)."""
        ...

    def answer(self, token: str) -> bytes | None:
        """The stored answer to an enqueue call already applied under ``token``."""
        ...

    def forget_answers(self, before_ms: int) -> int:
        ...

    def pending_events(self) -> list[tuple[int, bytes]]:
        """Outbox events not acknowledged by the event log yet, oldest first."""
        ...

    def ack_events(self, upto: int) -> None:
        """The event log holds every outbox event numbered up to ``upto``: forget them."""
        ...

    def get_meta(self, key: str) -> object | None: ...

    def put_meta(self, key: str, value: object) -> None: ...

    def sync_if_quiet(self, max_rows: int) -> bool:
        """Sync what was written since the last call if it is ≤ ``max_rows`` rows (``sync_quietly``)."""

    def close(self) -> None: ...


def _task_key(rec: TaskRecord) -> str:
    return rec.key


def _chain_id(chain: ChainRecord) -> str:
    return chain.id


_QUARANTINE = (
    "CREATE TABLE IF NOT EXISTS quarantine (tbl TEXT NOT NULL, key TEXT NOT NULL, reason TEXT NOT NULL,"
    " at_ms INTEGER NOT NULL, row BLOB NOT NULL, PRIMARY KEY (tbl, key))"
)


def _scan(conn: sqlite3.Connection, path: Path, sql: str) -> list[Any]:
    """A whole-table read; a file damaged below the row level is refused, not half read."""
    with _refusing(path):
        return list(conn.execute(sql))


def _read_again(path: Path, table: str, bad: list[tuple[QuarantinedRow, bytes]]) -> None:
    """Rows about to go to quarantine, read again through a fresh connection: one that
    reads otherwise now was a failing disk's read, not a damaged row, and nothing is moved
    (an OSError, as any I/O error: the scheduler starts again and reads it again)."""
    if not bad:
        return
    columns = {"tasks": ("key", "row"), "chains": ("id", "row"), "meta": ("key", "value")}
    key_column, value_column = columns[table]
    try:
        with fresh_reader(path) as conn:
            for q, raw in bad:
                row = conn.execute(f"SELECT {value_column} FROM {table} WHERE {key_column} = ?",
                                   (q.key,)).fetchone()
                if row is not None and bytes(row[0]) != raw:
                    raise OSError(errno.EIO, f"store {path}: {table} row {q.key!r} reads otherwise a "
                                             "second time: a failing disk's read (nothing quarantined)")
    except sqlite3.Error as exc:
        if disk_error(exc):
            raise OSError(errno.EIO, f"store {path}: {exc} (reading rows again before quarantine)") from exc


def _move_to_quarantine(
    conn: sqlite3.Connection, path: Path, table: str, bad: list[tuple[QuarantinedRow, bytes]]
) -> None:
    if not bad:
        return
    key_column = {"tasks": "key", "chains": "id", "meta": "key"}[table]
    with _refusing(path), _transaction(conn):
        conn.executemany(
            "INSERT OR REPLACE INTO quarantine (tbl, key, reason, at_ms, row) VALUES (?, ?, ?, ?, ?)",
            [(q.table, q.key, q.reason, q.at_ms, raw) for q, raw in bad],
        )
        conn.executemany(f"DELETE FROM {table} WHERE {key_column} = ?", [(q.key,) for q, _raw in bad])


# An upsert rewrites a row where it stands; INSERT OR REPLACE deletes it and inserts it
# again (both B-trees: the table and its key's index): ~1.5 against ~2.9 µs per rewritten
# row here, and every task's row is rewritten at least once (when it finishes).
_UPSERT_TASK = "INSERT INTO tasks (key, row) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET row = excluded.row"
_UPSERT_CHAIN = "INSERT INTO chains (id, row) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET row = excluded.row"
_UPSERT_INPUT = ("INSERT INTO inputs (key, input) VALUES (?, ?)"
                 " ON CONFLICT (key) DO UPDATE SET input = excluded.input")
_UPSERT_ANSWER = ("INSERT INTO answers (token, answer, at_ms) VALUES (?, ?, ?)"
                  " ON CONFLICT (token) DO UPDATE SET answer = excluded.answer, at_ms = excluded.at_ms")


def _forget_events(conn: sqlite3.Connection, upto: int) -> None:
    """The event log holds the outbox events numbered up to ``upto``."""
    conn.execute("DELETE FROM outbox WHERE seq <= ?", (upto,))


_TASK_TABLES = {
    "tasks": "CREATE TABLE IF NOT EXISTS tasks (key TEXT PRIMARY KEY, row BLOB NOT NULL)",
    "meta": "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "chains": "CREATE TABLE IF NOT EXISTS chains (id TEXT PRIMARY KEY, row BLOB NOT NULL)",
    "quarantine": _QUARANTINE,
    "outbox": ("CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL,"
               " first INTEGER)"),
    "answers": "CREATE TABLE IF NOT EXISTS answers (token TEXT PRIMARY KEY, answer BLOB NOT NULL, at_ms INTEGER NOT NULL)",
    "inputs": "CREATE TABLE IF NOT EXISTS inputs (key TEXT PRIMARY KEY, input TEXT NOT NULL)",
}


@contextlib.contextmanager
def spilling(put: Iterable[TaskRecord]) -> Iterator[tuple[list[TaskRecord], list[tuple[TaskRecord, str]]]]:
    """The records to write, and those whose input moves out of the record into the
    ``inputs`` table with this write (taken off the record here, put back if the write
    raises: nothing is lost from memory that did not reach the store)."""
    recs = list(put)
    spilled = [(rec, rec.input) for rec in recs
               if rec.input is not None and len(rec.input) > INLINE_INPUT_CHARS]
    for rec, text in spilled:
        rec.input, rec.input_stored = None, len(text)
    try:
        yield recs, spilled
    except BaseException:
        for rec, text in spilled:
            rec.input, rec.input_stored = text, 0
        raise


class SqliteTaskStore:
    def __init__(
        self, path: str | Path, durability: str = "normal", lock_wait_s: float = STORE_LOCK_WAIT_S,
        engine: str | None = None,
    ) -> None:
        self.path = Path(path)
        self._conn = _connect(self.path, _TASK_TABLES, durability, lock_wait_s, engine)
        with _refusing(self.path):  # a flipped byte in the schema's text: refused, not a traceback
            if "first" not in {c[1] for c in self._conn.execute("PRAGMA table_info(outbox)")}:  # version 3
                self._conn.execute("ALTER TABLE outbox ADD COLUMN first INTEGER")
        self._acked = 0  # outbox numbers the event log has (rows go when all of theirs are)
        self._fresh: list[QuarantinedRow] = []
        self._written = 0  # rows written since the last sync_if_quiet
        self.spilled_chars = 0  # inputs moved out of records since opened (the scheduler trims after many)

    def load(self, cold: Callable[[TaskRecord], bool] | None = None) -> list[TaskRecord]:
        # Row by row off the cursor: rows ``cold`` takes are let go as they come, so a store
        # of millions of finished rows is not held in memory whole at a restart.
        kept = {k for (k,) in _scan(self._conn, self.path, "SELECT key FROM inputs")}
        good: list[TaskRecord] = []
        bad: list[tuple[QuarantinedRow, bytes]] = []
        missing = "its input, kept out of the row, is missing"
        with _refusing(self.path):
            for key, blob in self._conn.execute("SELECT key, row FROM tasks"):
                one, damaged = decode_rows("tasks", ((key, blob),), decode, _task_key)
                if damaged:
                    bad += damaged
                    continue
                rec = one[0]
                if rec.input_stored and key not in kept:  # its input is gone: not run with none
                    bad.append((_quarantined("tasks", key, missing, blob), blob))
                elif cold is None or not cold(rec):
                    good.append(rec)
        self._quarantine("tasks", bad)
        with _refusing(self.path), _transaction(self._conn) as conn:  # of rows gone, or re-written small
            conn.execute("DELETE FROM inputs WHERE key NOT IN (SELECT key FROM tasks)")
        return good

    def load_chains(self) -> list[ChainRecord]:
        rows = _scan(self._conn, self.path, "SELECT id, row FROM chains")
        good, bad = decode_rows("chains", rows, ChainRecord.decode, _chain_id)
        self._quarantine("chains", bad)
        return good

    def _quarantine(self, table: str, bad: list[tuple[QuarantinedRow, bytes]]) -> None:
        _read_again(self.path, table, bad)
        _move_to_quarantine(self._conn, self.path, table, bad)
        self._fresh += [q for q, _raw in bad]

    def take_fresh_quarantine(self) -> list[QuarantinedRow]:
        fresh, self._fresh = self._fresh, []
        return fresh

    def quarantined(self) -> list[QuarantinedRow]:
        rows = self._conn.execute("SELECT tbl, key, reason, at_ms, row FROM quarantine ORDER BY at_ms, tbl, key")
        return [QuarantinedRow(t, k, r, at, len(raw), bytes(raw[:32]).hex()) for t, k, r, at, raw in rows]

    def drop_quarantined(self, key: str) -> int:
        return self._conn.execute("DELETE FROM quarantine WHERE key = ?", (key,)).rowcount

    def write(
        self,
        put: Iterable[TaskRecord],
        delete: Iterable[str] = (),
        chains: Iterable[ChainRecord] = (),
        delete_chains: Iterable[str] = (),
        events: Sequence[bytes] = (),
        answers: Sequence[tuple[str, bytes, int]] = (),
        acked: int | None = None,
    ) -> list[int]:
        with spilling(put) as (recs, spilled):
            numbers = self._write(recs, spilled, delete, chains, delete_chains, events, answers, acked)
        self.spilled_chars += sum(len(text) for _rec, text in spilled)
        return numbers

    def _write(
        self,
        put: list[TaskRecord],
        spilled: list[tuple[TaskRecord, str]],
        delete: Iterable[str],
        chains: Iterable[ChainRecord],
        delete_chains: Iterable[str],
        events: Sequence[bytes],
        answers: Sequence[tuple[str, bytes, int]],
        acked: int | None,
    ) -> list[int]:
        rows = [(rec.key, encode(rec)) for rec in put]
        gone = [(k,) for k in delete]
        chain_rows = [(c.id, c.encode()) for c in chains]
        chains_gone = [(k,) for k in delete_chains]
        if not (rows or gone or chain_rows or chains_gone or events or answers or acked):
            return []
        with _transaction(self._conn) as conn:
            if acked:
                _forget_events(conn, acked)
                self._acked = max(self._acked, acked)
            if answers:
                conn.executemany(_UPSERT_ANSWER, answers)
            if gone:
                conn.executemany("DELETE FROM tasks WHERE key = ?", gone)
                conn.executemany("DELETE FROM inputs WHERE key = ?", gone)
            if rows:
                conn.executemany(_UPSERT_TASK, rows)
            if spilled:
                conn.executemany(_UPSERT_INPUT,
                                 [(rec.key, text) for rec, text in spilled])
            if chains_gone:
                conn.executemany("DELETE FROM chains WHERE id = ?", chains_gone)
            if chain_rows:
                conn.executemany(_UPSERT_CHAIN, chain_rows)
            self._written += len(rows) + len(gone) + len(chain_rows) + len(chains_gone) + len(answers) + 1
            if not events:
                return []
            self._written += len(events)
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            start = int(row[0]) if row else 0
            # One row for them all (2.6 µs an event as rows of their own, 0.3 so): numbers start + 1
            # .. seq, the highest AUTOINCREMENT keeps, so none is used twice (the only writer).
            conn.execute("INSERT INTO outbox (seq, body, first) VALUES (?, ?, ?)",
                         (start + len(events), msgpack.packb(list(events)), start + 1))
            return list(range(start + 1, start + 1 + len(events)))

    def read_tasks(self, keys: list[str]) -> dict[str, TaskRecord]:
        out: dict[str, TaskRecord] = {}
        for i in range(0, len(keys), READ_CHUNK):
            part = keys[i:i + READ_CHUNK]
            sql = f"SELECT key, row FROM tasks WHERE key IN ({','.join('?' * len(part))})"
            for key, blob in self._conn.execute(sql, part):
                try:
                    out[key] = decode(blob)
                except DamagedRow as exc:  # it decoded at the start: a byte flipped since
                    log.warning("row %r does not decode (%s): left out", key, exc)
        return out

    def read_input(self, key: str) -> str | None:
        row = self._conn.execute("SELECT input FROM inputs WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def answer(self, token: str) -> bytes | None:
        with _refusing(self.path):
            row = self._conn.execute("SELECT answer FROM answers WHERE token = ?", (token,)).fetchone()
        return bytes(row[0]) if row else None

    def forget_answers(self, before_ms: int) -> int:
        self._written += 1
        with _refusing(self.path), _transaction(self._conn) as conn:
            return conn.execute("DELETE FROM answers WHERE at_ms < ?", (before_ms,)).rowcount

    def pending_events(self) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        for seq, body, first in _scan(self._conn, self.path, "SELECT seq, body, first FROM outbox ORDER BY 1"):
            try:  # a version-3 row (first NULL) holds one event
                bodies = [body] if first is None else msgpack.unpackb(body)
                out += zip(range(seq if first is None else first, seq + 1), map(bytes, bodies), strict=True)
            except Exception as exc:  # their task rows hold the results; the events cannot be re-sent
                log.warning("%s: outbox events %s..%d are damaged, skipped: %s", self.path, first, seq, exc)
        return [(n, body) for n, body in out if n > self._acked]  # a row's acknowledged first events

    def ack_events(self, upto: int) -> None:
        self._acked = max(self._acked, upto)
        self._written += 1
        with _refusing(self.path), _transaction(self._conn) as conn:
            _forget_events(conn, upto)

    def get_meta(self, key: str) -> object | None:
        """A meta value; a damaged one goes to quarantine and reads as absent."""
        with _refusing(self.path):
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            value: object = msgpack.unpackb(row[0], raw=False)
            return value
        except Exception as exc:
            bad = _quarantined("meta", key, f"not msgpack ({type(exc).__name__}: {exc})", row[0])
            self._quarantine("meta", [(bad, bytes(row[0]))])
            return None

    def put_meta(self, key: str, value: object) -> None:
        self._written += 1
        with _refusing(self.path):
            self._conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (key, msgpack.packb(value, use_bin_type=True)),
            )

    def sync_if_quiet(self, max_rows: int) -> bool:
        written, self._written = self._written, 0
        with _refusing(self.path):
            return sync_quietly(self._conn, written, max_rows)

    def close(self) -> None:
        self._conn.close()
        release(self.path)
