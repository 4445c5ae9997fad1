"""Polling watch of ``file://`` paths for ContentUri triggers (no platform file-event API needed).

The scheduler polls in a thread (actors/scheduler_housekeeping.py), once a second: a
snapshot of 10,000 files took 140-160 ms here, on the scheduler's event loop until
session 41 (every enqueue and report waited behind it, each second, per watched path).
It now walks with ``os.scandir`` (no ``Path`` and no URI made per file: 44 ms, ~3.5x
less) and off the loop.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Collection, Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

log = logging.getLogger("kmpray.watch")

MAX_ENTRIES = 10_000  # files and directories looked at per watched path and poll
#: How much older than the instant it was written a file's modification time may read.
#: Linux before 6.13 stamps files from its coarse clock, the last timer tick: up to 4 ms
#: behind the real time at HZ=250, 10 ms at HZ=100 (6.13 and later stamp a file whose time
#: was read since its last change finely; this machine's ext4 and tmpfs, on 6.18, never
#: read behind in 20,000 writes). A file written 3 ms after ``enqueue`` returned could read
#: as modified before the task was armed, and the first look took it for the baseline: the
#: trigger never fired. A change inside this slack before an arming counts (one run too
#: many at worst), rather than one after it being missed. Coarser filesystems (FAT's 2 s,
#: a network server's own clock) are beyond it: see the README's ContentUri notes.
MTIME_SLACK_MS = 20


def file_path(uri: str) -> Path | None:
    parts = urlsplit(uri)
    if parts.scheme != "file":
        return None
    return Path(unquote(parts.path))


def snapshot(path: Path, limit: int = MAX_ENTRIES) -> tuple[dict[str, tuple[int, int]], bool]:
    """{file path: (mtime_ns, size)} for the path, or for every file below it; and whether
    that is all of them (at most ``limit`` entries, files and directories, are looked at)."""
    try:
        st = os.stat(path)
    except OSError:
        return {}, True
    if not stat.S_ISDIR(st.st_mode):
        return {str(path): (st.st_mtime_ns, st.st_size)}, True
    out: dict[str, tuple[int, int]] = {}
    dirs, seen = [str(path)], 0
    while dirs:
        try:
            with os.scandir(dirs.pop()) as entries:
                for entry in entries:
                    seen += 1
                    if seen > limit:
                        return out, False
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            dirs.append(entry.path)
                        elif entry.is_file():
                            est = entry.stat()
                            out[entry.path] = (est.st_mtime_ns, est.st_size)
                    except OSError:
                        continue
        except OSError:
            continue
    return out, True


class FileWatcher:
    """Remembers the last snapshot per watched URI and reports the file URIs that changed."""

    def __init__(self, limit: int = MAX_ENTRIES) -> None:
        self.limit = limit
        self._last: dict[str, dict[str, tuple[int, int]]] = {}
        self._partial: set[str] = set()  # watched URIs said to be over MAX_ENTRIES
        self.polls = 0  # polls done (tests wait on it)

    def poll(self, uris: Collection[str] | Mapping[str, int | None]) -> list[str]:
        """The file URIs changed since the last poll (``changes`` without the instants)."""
        return [uri for uri, _at in self.changes(uris)]

    def changes(self, uris: Collection[str] | Mapping[str, int | None]) -> list[tuple[str, int | None]]:
        """The file URIs changed since the last poll, below each watched URI. ``uris`` may
        map each to a ``since`` instant (epoch ms): at the first look at one, which is
        otherwise only a baseline, a file modified at or after it (less MTIME_SLACK_MS: a
        coarse clock stamps a file up to a tick early) counts as changed, so a change
        between a trigger's arming and that look is not taken for the baseline (a write
        right after ``enqueue``, or while the scheduler was down: until session 50 both were
        missed). A deletion before the first look is not seen. Each comes with
        when it happened as far as that look can tell, its modification time in epoch ms;
        a change a later look sees comes with None: it happened since the look before,
        whatever its file's time says (``rsync -a`` or ``cp -p`` keep an older one)."""
        since_of = uris if isinstance(uris, Mapping) else dict.fromkeys(uris)
        changed: list[tuple[str, int | None]] = []
        for uri in uris:
            path = file_path(uri)
            if path is None:
                continue
            now, whole = snapshot(path, self.limit)
            if not whole and uri not in self._partial:
                self._partial.add(uri)
                log.warning("watching %s: more than %d files and directories below it; changes past the "
                            "first %d are not seen (watch a narrower path)", uri, self.limit, self.limit)
            before = self._last.get(uri)
            self._last[uri] = now
            if before is None:  # first look: a baseline, and what was modified since the arming
                if (since := since_of[uri]) is not None:
                    floor = (since - MTIME_SLACK_MS) * 1_000_000
                    changed += [(Path(p).as_uri(), mtime_ns // 1_000_000)
                                for p, (mtime_ns, _size) in now.items() if mtime_ns >= floor]
                continue
            paths = [p for p, sig in now.items() if before.get(p) != sig]
            paths += [p for p in before if p not in now]  # deletions are changes too
            changed += [(Path(p).as_uri(), None) for p in paths]
        for gone in set(self._last) - set(uris):
            del self._last[gone]
        self._partial &= set(uris)
        self.polls += 1
        return changed
