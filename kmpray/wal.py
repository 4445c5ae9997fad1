"""The write-ahead log of kmpray's SQLite files: its cap, and syncing it when writing is light."""

from __future__ import annotations

import sqlite3

WAL_SIZE_LIMIT = 1000 * 4096  # SQLite's default wal_autocheckpoint (pages) x its default page size


def sync_quietly(conn: sqlite3.Connection, written: int, max_rows: int) -> bool:
    """``synchronous=NORMAL`` syncs the WAL only at a checkpoint, every ~1,000 pages: at a
    few rows a minute, hours of them for an OS crash to take back. If ``written`` (rows
    since the last look) is some but ≤ ``max_rows``, checkpoint now (~1 ms here; timing.py
    ``QUIET_SYNC_*``); heavier writing gets SQLite's own checkpoints within seconds anyway.
    The WAL is emptied too (``TRUNCATE``: else it kept the size of its largest second, a
    prune's), never waiting on a reader elsewhere: then it is checkpointed as far as it can be."""
    if not 0 < written <= max_rows:
        return False
    if int(conn.execute("PRAGMA synchronous").fetchone()[0]) >= 2:
        return False  # FULL: each commit is synced already
    wait_ms = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
    conn.execute("PRAGMA busy_timeout=0")
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.execute(f"PRAGMA busy_timeout={wait_ms}")
    return True


__all__ = ["WAL_SIZE_LIMIT", "sync_quietly"]
