"""MemoryCap: a light executor stops itself when its process grows past
``EngineConfig.executor_memory_mb`` of resident memory.

The runs it held are lost with it like with any other death of the process, and the
scheduler treats them so (``SchedulerCore.run_lost``): each runs again alone, so a run
that allocates without bound is blamed on its own at the next death and ends FAILED
after ``max_system_reruns``; the others finish. Stopping the whole process is the only
sure way to take memory back from a run that holds it (Celery's
``worker_max_memory_per_child`` replaces the process too; Ray's memory monitor kills it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("kmpray.executor")

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux: /proc/self/statm), None where unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class MemoryCap:
    def __init__(
        self, limit_mb: int, what: str, on_exit: Callable[[str], None], every_s: float = 0.05
    ) -> None:
        self.limit = limit_mb * 1024 * 1024
        self.what = what
        self.on_exit = on_exit  # told why, just before the process ends
        self.every_s = every_s
        if rss_bytes() is None:
            log.warning("%s: executor_memory_mb is set but this platform's resident memory cannot be "
                        "read (/proc/self/statm): no cap", what)
            return
        threading.Thread(target=self._watch, name="kmpray-memory-cap", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(self.every_s)
            rss = rss_bytes()
            if rss is not None and rss > self.limit:
                why = (f"resident memory {rss >> 20} MiB is past executor_memory_mb={self.limit >> 20}: "
                       "stopping this process (its runs are run again, each alone)")
                log.error("%s: %s", self.what, why)
                try:
                    self.on_exit(why)
                finally:
                    os._exit(70)


def give_back() -> bool:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim``); False where there
    is none. After many large strings (inputs of 1 MiB, say) were alive at once and freed,
    glibc keeps their pages, so the process stays as big as its peak: the scheduler calls
    this after a burst of large inputs (``TaskStore.spilled_chars``)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
