"""Reading a SQLite store's database file the way an OS crash would leave it: shared by the
core tests (the stores alone) and the integration tests (an engine's own files)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path


def main_file_rows(db: Path, tmp: Path, sql: str) -> list[tuple[object, ...]]:
    """What ``sql`` reads from the SQLite file ``db`` alone, without its WAL: what an OS
    crash before the WAL's next sync would leave (a copy in ``tmp``, so the WAL is not
    touched). None of it while even the table is in the WAL only."""
    copy = tmp / f"copy-{db.name}"
    shutil.copyfile(db, copy)
    conn = sqlite3.connect(str(copy))
    try:
        return list(conn.execute(sql))
    except sqlite3.OperationalError as exc:
        assert "no such table" in str(exc)
        return []
    finally:
        conn.close()
        copy.unlink()
