"""Polling watch of ``file://`` paths for ContentUri triggers (no platform file-event API needed)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

MAX_ENTRIES = 10_000


def file_path(uri: str) -> Path | None:
    parts = urlsplit(uri)
    if parts.scheme != "file":
        return None
    return Path(unquote(parts.path))


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """{file uri: (mtime_ns, size)} for the path, or every file below it (bounded)."""
    out: dict[str, tuple[int, int]] = {}
    try:
        if path.is_file():
            st = path.stat()
            return {path.as_uri(): (st.st_mtime_ns, st.st_size)}
        for root, _dirs, files in os.walk(path):
            for name in files:
                p = Path(root) / name
                try:
                    st = p.stat()
                except OSError:
                    continue
                out[p.as_uri()] = (st.st_mtime_ns, st.st_size)
                if len(out) >= MAX_ENTRIES:
                    return out
    except OSError:
        pass
    return out


class FileWatcher:
    """Remembers the last snapshot per watched URI and reports the file URIs that changed."""

    def __init__(self) -> None:
        self._last: dict[str, dict[str, tuple[int, int]]] = {}

    def poll(self, uris: set[str]) -> list[str]:
        changed: list[str] = []
        for uri in uris:
            path = file_path(uri)
            if path is None:
                continue
            now = snapshot(path)
            before = self._last.get(uri)
            self._last[uri] = now
            if before is None:
                continue  # first look: a baseline, not a change
            changed += [u for u, sig in now.items() if before.get(u) != sig]
            changed += [u for u in before if u not in now]  # deletions are changes too
        for gone in set(self._last) - uris:
            del self._last[gone]
        return changed
