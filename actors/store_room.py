"""A scheduler that could not write its store at its start (a full disk, an I/O error, a
read-only file system) ends sooner once the disk can take its writes again.

Such a scheduler says why to every call and ends ``STORE_FAILED_RETRY_S`` (10 s) later, and
Ray starts it again from the store (actors/scheduler.py). So the engine served again up to
~11.5 s after the fault ended: the chaos driver's ``disk`` scenario (session 62) measured
4.9-11.5 s after 11 of 12 frees, p50 9.6 s. Now a thread looks every ``STORE_ROOM_CHECK_S``
and ends the process as soon as the disk would take the start's writes: about a restart
(~1.5 s) after the fault ends. What it looks at depends on the failure:

- the disk under the store had less than ``ROOM_BYTES`` free: until it has that much
  (session 62);
- any other I/O failure (EIO, a read-only file system; the ``io`` scenario, session 63):
  until a probe file under the store's folder can be written, synced and removed twice
  in a row (once could be a failing disk's lucky call);
- a full disk with room to spare (a quota): nothing; the 10 s end stays.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from kmpray.store_files import disk_error, full_disk
from kmpray.timing import STORE_FAILED_RESTART_S, STORE_ROOM_CHECK_S
from kmpray.wal import WAL_SIZE_LIMIT

#: Free space that counts as room again: the store's WAL cap, so what a restore writes fits.
ROOM_BYTES = WAL_SIZE_LIMIT


def free_bytes(path: str) -> int | None:
    """Free bytes on the disk under ``path`` (or its nearest existing parent)."""
    here = Path(path)
    while not here.exists() and here.parent != here:
        here = here.parent
    try:
        return shutil.disk_usage(here).free
    except OSError:
        return None


def writable(home: str) -> bool:
    """Whether a small file under ``home`` can be written, synced and removed now."""
    probe = os.path.join(home, f".kmpray-probe-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"kmpray")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError:
        return False
    return True


def what_to_fix(exc: BaseException) -> str:
    """For the user, after a failed store write: what lets it succeed."""
    return "free space on that disk" if full_disk(exc) else "the disk failed an I/O call or is read-only"


def end_after(home: str, within_s: float, exc: BaseException) -> None:
    """This process ends ``within_s`` from now, or sooner once the disk under ``home`` can
    take the start's writes (``end_once_writable``); Ray starts it again. A scheduler whose
    store write failed and a broker whose event log could not be opened both end this way."""
    (ending := threading.Timer(within_s, os._exit, (75,))).daemon = True
    ending.start()
    end_once_writable(home, within_s, exc)


def end_once_writable(home: str, within_s: float, exc: BaseException) -> bool:
    """After a failed write at the start (``within_s`` > the runtime failure's 0.5 s), end
    this process once the disk under ``home`` can take the start's writes again, within
    ``within_s`` (the timer ends it then anyway). True if it watches."""
    if within_s <= STORE_FAILED_RESTART_S or not (disk_error(exc) or isinstance(exc, OSError)):
        return False
    before = free_bytes(home)
    ready: Callable[[], bool]
    if before is not None and before < ROOM_BYTES:
        ready = lambda: (free_bytes(home) or 0) >= ROOM_BYTES  # noqa: E731
    elif not full_disk(exc):
        ready = _twice(lambda: writable(home))
    else:
        return False

    def watch() -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            time.sleep(STORE_ROOM_CHECK_S)
            if ready():
                os._exit(75)  # (as the timer would: Ray starts it again from the store)

    threading.Thread(target=watch, daemon=True, name="kmpray-store-room").start()
    return True


def _twice(check: Callable[[], bool]) -> Callable[[], bool]:
    """``check`` true at two looks in a row."""
    last = [False]

    def both() -> bool:
        now = check()
        was, last[0] = last[0], now
        return was and now

    return both
