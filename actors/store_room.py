"""A scheduler that could not write its store at its start (a full disk) ends sooner once the
disk has room again.

Such a scheduler says why to every call and ends ``STORE_FAILED_RETRY_S`` (10 s) later, and
Ray starts it again from the store (actors/scheduler.py). So the engine served again up to
~11.5 s after space was freed: the chaos driver's ``disk`` scenario (session 62) measured
4.9-11.5 s after 11 of 12 frees, p50 9.6 s. Now, if the disk under the store had less than ``ROOM_BYTES`` free
when the write failed, a thread looks every ``STORE_ROOM_CHECK_S`` and ends the process as
soon as it has that much: about a restart (~1.5 s) after the space is freed. The 10 s end
stays for every other failure (an I/O error, a quota: their free space says nothing).
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from pathlib import Path

from kmpray.store_files import disk_error
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


def end_once_room(home: str, within_s: float, exc: BaseException) -> bool:
    """After a failed write at the start (``within_s`` > the runtime failure's 0.5 s) on a
    nearly full disk, end this process once there is room under ``home`` again, within
    ``within_s`` (the timer ends it then anyway). True if it watches."""
    full = disk_error(exc) or getattr(exc, "errno", None) in (errno.ENOSPC, errno.EIO)
    before = free_bytes(home)
    if within_s <= STORE_FAILED_RESTART_S or not full or before is None or before >= ROOM_BYTES:
        return False

    def watch() -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            time.sleep(STORE_ROOM_CHECK_S)
            if (free_bytes(home) or 0) >= ROOM_BYTES:
                os._exit(75)  # (as the timer would: Ray starts it again from the store)

    threading.Thread(target=watch, daemon=True, name="kmpray-store-room").start()
    return True
