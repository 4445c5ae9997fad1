"""kmpray's SQLite files (the task store, the event log): opened checked, in WAL mode, and
held by one engine at a time; a file that is not one of them, or is damaged below its
rows, refused in one line (``StoreRefused``); one transaction per write.

One engine per file: a process that opens a store holds an OS lock on the file next to it
(``tasks.db.lock``, ``events.db.lock``) until it closes it or ends. Two engines on one
state dir — two notebooks that each ``connect()`` an embedded Ray with the default
``~/.kmpray/<namespace>``, or a script started beside a running engine — each restored
the other's rows and ran them, and wrote over the other's changes. The second to open a
store is refused, naming the process that holds it: at once when that is a live process
of another engine on this machine (the lock file says which engine, ``engine``: a
namespace in one Ray instance), else after waiting a little (a killed scheduler's process
may still be ending while Ray starts the next, and the OS frees its lock when it is gone;
a holder on another host cannot be looked at). ``flock`` locks belong to an open file, so the kernel
frees them however the holder dies; within one process a store may be opened again
(tests reopen one to play a restart), counted. Without ``fcntl`` (Windows) nothing is locked.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from . import timing
from .errors import StoreRefused
from .timing import STORE_LOCK_WAIT_S
from .wal import WAL_SIZE_LIMIT

log = logging.getLogger("kmpray.store")

#: The on-disk layout this version writes (SQLite ``user_version``). A newer file is refused.
#: 2: tasks.db has an ``outbox`` of completion events not yet in the event log, and the
#: ``answers`` to recent enqueue calls by request token (a retried call is answered, not
#: applied twice); events.db remembers the last outbox number it took (``origin``).
#: 3: tasks.db keeps inputs longer than ``INLINE_INPUT_CHARS`` in an ``inputs`` table,
#: out of the row (and out of the scheduler's memory: read back at dispatch).
#: 4: an outbox row holds one write's events, numbered ``first`` .. ``seq`` (``first`` NULL:
#: one event, a version-3 row). Files of versions 1 to 3 open and upgrade.
SCHEMA_VERSION = 4

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

_POLL_S = 0.05

#: SQLite's primary result codes for the disk rather than the file: it is full, an I/O call
#: failed, the file system went read-only (a write, or the open of the file or its WAL, was
#: refused: ext4's ``errors=remount-ro``). Not a damaged store: the write fails and may
#: succeed later. (Until session 63 a read-only disk at a start was a ``StoreRefused`` that
#: said "is not a readable SQLite database ... move the file aside": wrong of a sound store.)
SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN, SQLITE_FULL = 8, 10, 14, 13
_DISK_CODES = (SQLITE_READONLY, SQLITE_IOERR, SQLITE_CANTOPEN, SQLITE_FULL)
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26  # damage, or what a failing disk's short read looks like
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO)


def disk_error(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite saying the disk is full, an I/O call failed, or the file
    could not be opened or written for now (a read-only file system)."""
    code = getattr(exc, "sqlite_errorcode", None)  # None: raised by Python's side (a decode)
    return isinstance(code, int) and code & 0xFF in _DISK_CODES


def full_disk(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk is full (or the quota spent), by its errno or SQLite's code."""
    code = getattr(exc, "sqlite_errorcode", None)
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (
        isinstance(code, int) and code & 0xFF == SQLITE_FULL)


def disk_errno(exc: BaseException, store: Path) -> bool:
    """Whether the OSError ``exc`` met opening ``store`` is the disk's, for now: full, an I/O
    error, or a read-only file system under a store already there (one a new state dir
    cannot be made on is refused: pass another)."""
    no = getattr(exc, "errno", None)
    if no in _DISK_ERRNOS:
        return True
    try:
        return no == errno.EROFS and store.exists()
    except OSError:  # (the disk failing that too)
        return True


_held: dict[str, tuple[int, int]] = {}  # lock file -> (fd, opens in this process)


def _lock_file(store: Path) -> str:
    return str(store.resolve()) + ".lock"


def hold(store: Path, wait_s: float = STORE_LOCK_WAIT_S, engine: str | None = None) -> None:
    """Lock ``store`` for this process, waiting up to ``wait_s`` for another holder to end;
    raises StoreRefused naming that holder if it does not, or at once if the holder is a
    live process of an engine other than ``engine`` (see ``_other_live_engine``)."""
    if fcntl is None:
        return
    name = _lock_file(store)
    if name in _held:
        fd, opens = _held[name]
        _held[name] = (fd, opens + 1)
        return
    fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock(fd, store, wait_s, engine)
    except BaseException:  # (an I/O error writing the holder: the lock is not kept by a lost fd)
        os.close(fd)
        raise
    _held[name] = (fd, 1)


def _lock(fd: int, store: Path, wait_s: float, engine: str | None) -> None:
    """``hold``'s lock on the open lock file ``fd``, then this process written in it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            info = _holder_info(fd)
            if time.monotonic() >= deadline or _other_live_engine(info, engine):
                holder = _holder(info)
                raise StoreRefused(
                    f"store {store}: in use by another engine ({holder}). One state dir serves one "
                    "engine: connect to that one (connect(address='auto') from the machine it runs on, "
                    "or kmpray status to find it), stop it first, or pass another state_dir"
                ) from None
            time.sleep(_POLL_S)  # an OS lock tells no one when it frees: looked at again, bounded
        except OSError as exc:  # a filesystem without locks (some network mounts): open unlocked
            log.warning("store %s: not locked for this engine (%s); one engine per state dir is up to you",
                        store, exc)
            break
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "parent": os.getppid(),
                             "engine": engine, "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())


def release(store: Path) -> None:
    """This process's hold on ``store`` once its last open of it is closed."""
    name = _lock_file(store)
    if name not in _held:
        return
    fd, opens = _held.pop(name)
    if opens > 1:
        _held[name] = (fd, opens - 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _holder_info(fd: int) -> dict[str, object]:
    """What the lock file's holder wrote in it (nothing, from a holder still writing it)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _holder(info: dict[str, object]) -> str:
    """Who holds the lock: ``pid N on HOST since T`` (``, engine E``), or that it is unknown."""
    try:
        said = f"pid {info['pid']} on {info['host']} since {info['since']}"
    except KeyError:
        return "a process that did not say which"
    return said + (f", engine {info['engine']}" if info.get("engine") else "")


#: Linux's flag for a process that has begun to exit (``PF_EXITING``, /proc/PID/stat's 9th field).
_PF_EXITING = 0x4


def _other_live_engine(info: dict[str, object], engine: str | None) -> bool:
    """Whether the lock's holder is a process of another engine that is running here: to
    refuse at once rather than wait. Anything less certain waits, as a restarted
    scheduler must for its killed predecessor: the same engine (or an opener that did not
    say which), a holder on another host, one gone or exiting, or one whose parent (a
    Ray node's raylet, for an actor) has ended, as ``ray stop`` ends them."""
    pid, parent = info.get("pid"), info.get("parent")
    if engine is None or info.get("engine") in (None, engine) or info.get("host") != socket.gethostname():
        return False
    if not isinstance(pid, int) or not isinstance(parent, int):
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (comm)": comm may hold spaces
    except OSError:  # gone, or no /proc (not Linux): the old, waiting behaviour
        return False
    state, ppid, flags = fields[0], int(fields[1]), int(fields[6])
    return state not in ("Z", "X", "x") and not flags & _PF_EXITING and ppid == parent


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One explicit transaction: committed whole, or rolled back whole. A COMMIT that fails
    for want of space (SQLITE_FULL) or on an I/O error has already rolled back: the error
    raised is that one, not "cannot rollback - no transaction is active"."""
    conn.execute("BEGIN")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _refuse(path: Path, what: str, exc: BaseException | None = None) -> StoreRefused:
    cause = f" ({exc})" if exc is not None else ""
    return StoreRefused(
        f"store {path}: {what}{cause}. Move the file aside (or restore it from a backup) and "
        f"connect again, or pass another state_dir; kmpray never repairs it in place."
    )


def _connect(path: Path, tables: dict[str, str], durability: str = "normal",
             lock_wait_s: float = STORE_LOCK_WAIT_S, engine: str | None = None) -> sqlite3.Connection:
    """Open (or create) one of kmpray's SQLite files for ``engine`` alone (``hold``) and
    check it is one: its schema version is known and every table it has is one of
    ``tables`` (name -> CREATE statement). ``release(path)`` when it is closed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        hold(path, lock_wait_s, engine)
    except OSError as exc:
        if disk_errno(exc, path):  # the disk, for now: the caller may try again
            raise
        # Not a directory this process can write (a typo, a read-only mount, another
        # user's): a refusal in one line at connect(), not a dead actor's traceback.
        raise StoreRefused(f"store {path}: cannot be created or opened here ({exc}); pass a state_dir "
                           "this engine's processes can write") from None
    try:
        return _open(path, tables, durability)
    except BaseException:
        release(path)
        raise


def _open(path: Path, tables: dict[str, str], durability: str) -> sqlite3.Connection:
    if durability not in ("normal", "full"):
        raise ValueError(f"durability: must be 'normal' or 'full', got {durability!r}")
    # Text SQLite cannot decode (a flipped byte) is refused like a broken page.
    with _refusing(path, "is not a readable SQLite database"):
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash; only an OS crash may lose
        # the last transactions. FULL: the WAL is fsynced at every commit (power loss too).
        conn.execute(f"PRAGMA synchronous={durability.upper()}")
        # The WAL is reused from its start after each checkpoint but never shrinks by itself:
        # one large transaction (a prune of thousands of rows) would leave the file that size
        # for good. Truncate it back to one autocheckpoint's worth (1,000 pages) at each reset.
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        present = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if version > SCHEMA_VERSION:
        conn.close()
        raise _refuse(path, f"was written by a newer kmpray (schema {version}; this one reads {SCHEMA_VERSION})")
    foreign = present - set(tables) - {"sqlite_sequence"}
    if foreign:
        conn.close()
        raise _refuse(path, f"is not a kmpray store (unknown tables: {', '.join(sorted(foreign))})")
    try:
        with _refusing(path):
            for create in tables.values():
                conn.execute(create)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def _refusing(path: Path, what: str = "is damaged beyond its rows") -> Iterator[None]:
    """Opening and checking a file, restore-time reads, quarantine moves: SQLite finding the
    file damaged (a broken page, mid-read or mid-write) is a refusal in one line, not a
    traceback. A full disk or a failed I/O call is raised as it is: the file is not at fault."""
    try:
        yield
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # a key or name not UTF-8 any more
        if disk_error(exc):
            raise
        if _damage_seen(exc) and sound_read_again(path) is not False:
            raise OSError(errno.EIO, f"{path}: read as damaged ({exc}), but not when read again: "
                                     "a failing disk's read") from exc
        raise _refuse(path, what, exc) from None


def _damage_seen(exc: BaseException) -> bool:
    """SQLite itself found a page damaged (not Python failing to decode a text value, which
    no second read of the file can tell from damage)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)


@contextlib.contextmanager
def fresh_reader(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection of its own to ``path`` (none of this process's page cache:
    what is read is what the disk gives now), closed after."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        yield conn
    finally:
        conn.close()


def sound_read_again(path: Path) -> bool | None:
    """After SQLite found ``path`` damaged: whether fresh connections read it sound
    (``PRAGMA integrity_check(1)``), up to ``STORE_READ_AGAIN_LOOKS`` times
    ``STORE_READ_AGAIN_S`` apart (kmpray/timing.py; read at each call). True: sound
    at a look, so what looked damaged was a failing disk's read (a short read SQLite filled
    with zeros: the io chaos scenario met them at schedulers' starts, session 63, and a
    sound store was refused for good); False: damaged, the same finding at every look (a
    damaged file reads the same way each time); None: unsure (the disk failing a look, or
    the findings differing: the disk, for now)."""
    findings: set[str] = set()
    for look in range(timing.STORE_READ_AGAIN_LOOKS):
        if look:
            time.sleep(timing.STORE_READ_AGAIN_S)
        try:
            with fresh_reader(path) as conn:
                finding = str(conn.execute("PRAGMA integrity_check(1)").fetchone()[0])
        except sqlite3.Error as exc:
            if disk_error(exc):
                return None
            finding = f"{type(exc).__name__}: {exc}"
        if finding == "ok":
            return True
        findings.add(finding)
    return False if len(findings) == 1 else None
