"""The five built-in workers against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kmpray import Constraints, EngineConfig, ScheduleResult, TaskRequest, TaskState, TaskTrigger

from .http_server import DATA, Server

pytestmark = pytest.mark.ray
ONCE = TaskTrigger.OneTime()
NO_RETRY = Constraints(max_retries=0)
FAST_RETRY = Constraints(max_retries=3, backoff_delay_ms=10)


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as s:
        yield s


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One files folder for the module's shared engine: each test uses its own paths."""
    return tmp_path_factory.mktemp("files")


@pytest.fixture(scope="module")
def sched(module_engines: Any, files: Path) -> Any:
    """Shared by the module's tests (each uses its own ids): an engine's start is most of
    a short test's time."""
    return module_engines(config=EngineConfig(files_base_dir=str(files)))


def run(sched: Any, tid: str, worker: str, cfg: dict[str, Any], c: Constraints = NO_RETRY) -> Any:
    assert sched.enqueue(tid, ONCE, worker, input=json.dumps(cfg), constraints=c) is ScheduleResult.SUCCESS
    return sched.wait(tid, timeout_s=60)


def test_builtins_are_registered_by_simple_and_qualified_name(sched: Any) -> None:
    workers = set(sched.status()["workers"])
    for name in ("HttpRequestWorker", "HttpSyncWorker", "HttpDownloadWorker", "HttpUploadWorker",
                 "FileCompressionWorker"):
        assert name in workers and f"kmpray.workers.{name}" in workers


def test_http_request_success_and_404(sched: Any, server: Server) -> None:
    ok = run(sched, "ok", "HttpRequestWorker", {"url": server.url + "/ok"})
    assert ok.state is TaskState.SUCCEEDED
    assert ok.result.data == {"statusCode": 200, "method": "GET", "url": server.url + "/ok", "responseLength": 5}
    missing = run(sched, "nf", "kmpray.workers.HttpRequestWorker", {"url": server.url + "/404"}, FAST_RETRY)
    assert missing.state is TaskState.FAILED and missing.run_attempt_count == 1  # 4xx: no retry
    assert "HTTP 404" in missing.result.message


def test_5xx_retries_then_succeeds(sched: Any, server: Server) -> None:
    info = run(sched, "flaky", "HttpRequestWorker", {"url": server.url + "/flaky"}, FAST_RETRY)
    assert info.state is TaskState.SUCCEEDED and info.run_attempt_count == 2
    assert server.state.hits["/flaky"] == 2


def test_slow_response_times_out_as_a_retryable_failure(sched: Any, server: Server) -> None:
    info = run(sched, "slow", "HttpRequestWorker", {"url": server.url + "/slow", "timeoutMs": 300})
    assert info.state is TaskState.FAILED and "Timeout" in info.result.message


def test_sync_posts_json(sched: Any, server: Server) -> None:
    info = run(sched, "sync", "HttpSyncWorker", {"url": server.url + "/echo", "requestBody": {"a": [1, 2]}})
    assert info.result.data["statusCode"] == 200
    assert info.result.data["responseLength"] == len(json.dumps({"a": [1, 2]}))


def test_interrupted_download_resumes_with_range(sched: Any, server: Server, files: Path) -> None:
    cfg = {"url": server.url + "/file-interrupt", "savePath": "dl/data.bin"}
    sub = sched.events.subscribe()
    info = run(sched, "dl", "HttpDownloadWorker", cfg, FAST_RETRY)
    assert info.state is TaskState.SUCCEEDED and info.run_attempt_count == 2
    assert (files / "dl" / "data.bin").read_bytes() == DATA
    assert not (files / "dl" / "data.bin.part").exists()
    assert server.state.ranges[0] is None and server.state.ranges[1] == f"bytes={len(DATA) // 2}-"
    assert info.result.data == {"fileSize": len(DATA), "filePath": str(files / "dl" / "data.bin"),
                                "url": cfg["url"]}
    progress = []
    while (e := sub.get(timeout_s=1)) is not None:
        if e.kind == "progress":
            progress.append(e.progress)
    assert progress and progress[-1] == 100


def test_download_checks_sha256(sched: Any, server: Server) -> None:
    import hashlib

    good = {"url": server.url + "/file", "savePath": "a.bin", "sha256": hashlib.sha256(DATA).hexdigest()}
    assert run(sched, "good", "HttpDownloadWorker", good).state is TaskState.SUCCEEDED
    bad = {"url": server.url + "/file", "savePath": "b.bin", "sha256": "0" * 64}
    info = run(sched, "bad", "HttpDownloadWorker", bad)
    assert info.state is TaskState.FAILED and "sha256 mismatch" in info.result.message


def test_multipart_upload_arrives_intact(sched: Any, server: Server, files: Path) -> None:
    (files / "report.csv").write_bytes(DATA[:5000])
    cfg = {"url": server.url + "/upload", "filePath": "report.csv", "fields": {"owner": "kmpray"}}
    info = run(sched, "up", "HttpUploadWorker", cfg)
    assert info.state is TaskState.SUCCEEDED
    assert info.result.data["fileName"] == "report.csv" and info.result.data["fileSize"] == 5000
    [received] = server.state.uploads
    assert received["file"]["content"] == DATA[:5000] and received["file"]["type"] == "text/csv"
    assert received["owner"]["content"] == b"kmpray"


def test_compression_round_trip_with_exclusions_and_delete(sched: Any, files: Path) -> None:
    src = files / "logs"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a" * 10_000)
    (src / "sub" / "b.txt").write_text("b" * 5_000)
    (src / "skip.tmp").write_text("temporary")
    cfg = {"inputPath": "logs", "outputPath": "logs.zip", "level": "high", "excludePatterns": ["*.tmp"],
           "deleteOriginal": True}
    info = run(sched, "zip", "FileCompressionWorker", cfg)
    data = info.result.data
    assert info.state is TaskState.SUCCEEDED and data["originalSize"] == 15_000 and data["deletedOriginal"]
    assert data["compressedSize"] < 15_000 and data["compressionRatio"] == round(data["compressedSize"] / 15_000, 4)
    with zipfile.ZipFile(files / "logs.zip") as zf:
        assert sorted(zf.namelist()) == ["a.txt", "sub/b.txt"]
        assert zf.read("sub/b.txt") == b"b" * 5_000
    assert not src.exists()


def test_unsafe_or_malformed_configs_fail_at_once_naming_the_field(sched: Any, server: Server) -> None:
    cases = [
        ("HttpDownloadWorker", {"url": server.url + "/file", "savePath": "../../escape.bin"}, "outside the allowed"),
        ("FileCompressionWorker", {"inputPath": "/etc"}, "outside the allowed"),
        ("HttpRequestWorker", {"url": "file:///etc/passwd"}, "scheme must be http or https"),
        ("HttpRequestWorker", {"url": server.url, "method": "TRACE"}, "method"),
        ("HttpRequestWorker", {"url": server.url, "timeoutMs": -5}, "timeoutMs"),
        ("HttpRequestWorker", {"urll": server.url}, "url"),
        ("HttpUploadWorker", {"url": server.url + "/upload", "filePath": "missing.bin"}, "not a file"),
    ]
    for n, (worker, cfg, why) in enumerate(cases):
        info = run(sched, f"bad{n}", worker, cfg, FAST_RETRY)
        assert info.state is TaskState.FAILED and info.run_attempt_count == 1, (worker, cfg)
        assert why in info.result.message, (why, info.result.message)


def test_private_addresses_can_be_denied(engines: Any, server: Server, tmp_path: Path) -> None:
    sched = engines(config=EngineConfig(http_deny_private=True, files_base_dir=str(tmp_path)))
    info = run(sched, "lo", "HttpRequestWorker", {"url": server.url + "/ok"})
    assert info.state is TaskState.FAILED and "private address" in info.result.message
    assert server.state.hits["/ok"] == 0


def test_download_compress_upload_chain_passes_data(sched: Any, server: Server, files: Path) -> None:
    chain = (
        sched.begin_with(TaskRequest("HttpDownloadWorker", json.dumps({"url": server.url + "/file", "savePath": "c/data.bin"})))
        .then(TaskRequest("FileCompressionWorker"))  # inputPath <- the download's filePath
        .then(TaskRequest("HttpUploadWorker", json.dumps({"url": server.url + "/upload"})))  # filePath <- outputPath
        .with_id("pipeline")
    )
    assert chain.enqueue() is ScheduleResult.SUCCESS
    info = sched.wait("pipeline", timeout_s=60)
    assert info.state is TaskState.SUCCEEDED, [s[0].result for s in info.steps]
    [received] = server.state.uploads
    assert received["file"]["filename"] == "data.bin.zip"
    zipped = files / "c" / "data.bin.zip"
    assert received["file"]["content"] == zipped.read_bytes()
    with zipfile.ZipFile(zipped) as zf:
        assert zf.read("data.bin") == DATA
