"""The built-in workers, registered by default under simple and fully qualified names."""

from __future__ import annotations

from .files import FileCompressionWorker
from .http import HttpDownloadWorker, HttpRequestWorker, HttpSyncWorker, HttpUploadWorker

BUILTIN_WORKERS: dict[str, type] = {}
for _cls in (HttpRequestWorker, HttpSyncWorker, HttpDownloadWorker, HttpUploadWorker, FileCompressionWorker):
    BUILTIN_WORKERS[_cls.__name__] = _cls
    BUILTIN_WORKERS[f"kmpray.workers.{_cls.__name__}"] = _cls

__all__ = [
    "BUILTIN_WORKERS",
    "FileCompressionWorker",
    "HttpDownloadWorker",
    "HttpRequestWorker",
    "HttpSyncWorker",
    "HttpUploadWorker",
]
