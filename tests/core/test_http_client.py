"""The HTTP built-in workers' clients: built without blocking the executor's event loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from typing import Any

import pytest

from kmpray.workers import http


def test_the_ssl_context_is_built_once_off_the_loop_and_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each client built its own SSL context (certifi's CA bundle, ~17 ms; ~80 ms the first
    time) on the executor's loop, stalling every other run there: the blocked-loop warning
    fired for HttpRequestWorker. Now one context per process, built in a thread."""
    import httpx

    monkeypatch.setattr(http, "_TLS", None)
    built_in: list[int] = []
    prepare = http._prepare

    def recording() -> Any:
        built_in.append(threading.get_ident())
        return prepare()

    made: list[dict[str, Any]] = []

    class Client:
        def __init__(self, **kwargs: Any) -> None:
            made.append(kwargs)

    monkeypatch.setattr(http, "_prepare", recording)
    monkeypatch.setattr(httpx, "AsyncClient", Client)

    async def two_clients() -> int:
        await http._client(1000)
        await http._client(2000)
        return threading.get_ident()

    loop_thread = asyncio.run(two_clients())
    assert len(built_in) == 1 and built_in[0] != loop_thread  # once, and not on the loop
    context = http._TLS
    assert context is not None and all(kw["verify"] is context for kw in made)
    assert [kw.get("timeout") for kw in made[-2:]] == [1.0, 2.0] and made[-1]["follow_redirects"] is True


def test_a_processs_first_request_imports_nothing_on_the_loop() -> None:
    """What ``_prepare`` (in a thread) leaves for the first request to import runs on the
    executor's loop: anyio's asyncio backend was 27 modules there (~16 ms quiet, and in a
    300,000-task burst the first HttpRequestWorker runs were reported blocking their loops).
    A fresh process, as an executor is: prepare, then one request (a refused port)."""
    code = (
        "import asyncio, sys\n"
        "from kmpray.workers import http\n"
        "async def main():\n"
        "    await http._client(1000)\n"  # _prepare, in a thread
        "    before = set(sys.modules)\n"
        "    print(await http._send('GET', 'http://127.0.0.1:9/', 1000, http.EngineConfig()))\n"
        "    print(sorted(set(sys.modules) - before))\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    failure, imported = out.stdout.strip().splitlines()
    assert "ConnectError" in failure  # the request was made
    assert imported == "[]"


def test_every_redirect_hop_must_pass_the_url_rules(tmp_path: Any) -> None:
    """Redirects were followed unchecked: a URL on an allowed host that answered 302 to a
    denied host (or, under ``http_deny_private``, to a cloud metadata address) was
    fetched. The workers run here in-process against a local server (no Ray)."""
    import json

    from kmpray import EngineConfig, WorkerContext
    from kmpray.results import Failure, Success
    from tests.integration.http_server import Server

    def run(worker: Any, cfg: dict[str, Any], config: EngineConfig) -> Any:
        ctx = WorkerContext("t", 0, engine_config=config)
        return asyncio.run(worker().do_work(json.dumps(cfg), ctx))

    with Server() as server:
        port = server.url.rsplit(":", 1)[1]
        allowed = EngineConfig(http_allow_hosts=["127.0.0.1"], files_base_dir=str(tmp_path))
        same_host = f"{server.url}/redirect?to={server.url}/ok"
        ok = run(http.HttpRequestWorker, {"url": same_host}, allowed)
        assert isinstance(ok, Success) and ok.data["statusCode"] == 200  # a hop that passes is followed
        elsewhere = f"{server.url}/redirect?to=http://localhost:{port}/ok"
        hits = server.state.hits["/ok"]
        said = f"redirected to http://localhost:{port}/ok: url: host 'localhost' is not in the allow list"
        for worker, cfg in [
            (http.HttpRequestWorker, {"url": elsewhere}),
            (http.HttpSyncWorker, {"url": elsewhere, "requestBody": {"a": 1}}),  # POST: a 307
            (http.HttpDownloadWorker, {"url": elsewhere, "savePath": "d.bin"}),
        ]:
            refused = run(worker, cfg, allowed)
            assert isinstance(refused, Failure) and not refused.should_retry, refused
            assert refused.message == said
        assert server.state.hits["/ok"] == hits  # never fetched
        private = EngineConfig(http_deny_private=True, files_base_dir=str(tmp_path))
        refused = run(http.HttpRequestWorker, {"url": f"{server.url}/ok"}, private)  # the first hop too
        assert isinstance(refused, Failure) and "resolves to a private address (127.0.0.1)" in refused.message


def test_under_deny_private_the_address_checked_is_the_address_connected_to(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """DNS rebinding: the check resolved the host, then httpx resolved it again to connect,
    so a name answering a public address first and 127.0.0.1 next was fetched from
    127.0.0.1. Now each hop's host is resolved once and the connection goes to that address
    (Host header and TLS server name kept). A redirect to a name that resolves privately is
    refused naming the hop. No network: the transport underneath is a stand-in."""
    import json
    import socket

    import httpx

    from kmpray import EngineConfig, WorkerContext
    from kmpray.results import Failure, Success

    answers = {"rebind.test": ["93.184.216.34", "127.0.0.1"], "meta.test": ["169.254.169.254"]}
    asked: list[str] = []

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        left = answers[host]
        address = left.pop(0) if len(left) > 1 else left[0]  # rebind.test: public once, then not
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0))]

    sent: list[tuple[str, str, Any]] = []

    async def handle(self: Any, request: Any) -> Any:
        sent.append((str(request.url), request.headers["host"], request.extensions.get("sni_hostname")))
        if request.url.path == "/hop":
            return httpx.Response(302, headers={"location": "http://meta.test/latest"}, request=request)
        return httpx.Response(200, text="ok", request=request)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", handle)
    config = EngineConfig(http_deny_private=True, files_base_dir=str(tmp_path))

    def run(url: str) -> Any:
        ctx = WorkerContext("t", 0, engine_config=config)
        return asyncio.run(http.HttpRequestWorker().do_work(json.dumps({"url": url}), ctx))

    ok = run("http://rebind.test:8080/ok")
    assert isinstance(ok, Success) and ok.data["statusCode"] == 200
    assert asked == ["rebind.test"]  # resolved once...
    assert sent == [("http://93.184.216.34:8080/ok", "rebind.test:8080", "rebind.test")]  # and used
    sent.clear()
    answers["rebind.test"] = ["93.184.216.34"]
    refused = run("http://rebind.test/hop")
    assert isinstance(refused, Failure) and not refused.should_retry
    said = "url: 'meta.test' resolves to a private address (169.254.169.254), which is denied"
    assert refused.message == f"redirected to http://meta.test/latest: {said}"
    assert [url for url, _host, _sni in sent] == ["http://93.184.216.34/hop"]  # meta.test never asked


def test_a_pinned_https_connection_checks_the_certificate_against_the_hosts_name() -> None:
    """The connection goes to the address checked, and TLS still verifies the certificate
    against the name in the URL (httpcore's sni_hostname): a local HTTPS server with a
    certificate for `localhost`, reached through the pin as `localhost` (accepted) and as
    another name pinned to the same address (refused: hostname mismatch)."""
    import ssl
    from http.server import HTTPServer, SimpleHTTPRequestHandler
    from pathlib import Path

    import httpx

    data = Path(__file__).parent.parent / "data"
    server = HTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(data / "localhost-cert.pem", data / "localhost-key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    trust = ssl.create_default_context(cafile=str(data / "localhost-cert.pem"))

    async def get(name: str) -> int:
        transport = http._pinned(httpx.AsyncHTTPTransport(verify=trust))
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            return (await client.get(f"https://{name}:{port}/")).status_code

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(http, "public_address", lambda host: "127.0.0.1")  # as if it were public
            assert asyncio.run(get("localhost")) == 200
            with pytest.raises(httpx.ConnectError, match="Hostname mismatch"):
                asyncio.run(get("other.example"))
    finally:
        server.shutdown()
        server.server_close()


def test_request_and_sync_count_the_response_without_holding_it() -> None:
    """``responseLength`` is all the request and sync workers return of a body, yet the
    whole body was read into the executor's memory to count it: a 3 GB answer took an
    executor (and every other run there) past its memory cap. Now it is counted as it
    streams. Measured with tracemalloc: a 48 MiB body, peak well under a tenth of it."""
    import json
    import tracemalloc

    from kmpray import EngineConfig, WorkerContext
    from kmpray.results import Success
    from tests.integration.http_server import Server

    size = 48 * 1024 * 1024
    with Server() as server:
        for worker, cfg in [(http.HttpRequestWorker, {}), (http.HttpSyncWorker, {"method": "GET"})]:
            ctx = WorkerContext("t", 0, engine_config=EngineConfig())
            asyncio.run(worker().do_work(json.dumps({"url": f"{server.url}/ok", **cfg}), ctx))  # imports
            tracemalloc.start()
            try:
                big = json.dumps({"url": f"{server.url}/big?n={size}", **cfg})
                done = asyncio.run(worker().do_work(big, ctx))
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert isinstance(done, Success) and done.data["responseLength"] == size, done
            assert done.data["statusCode"] == 200
            assert peak < size // 10, (worker.__name__, peak)


def test_a_resumed_download_never_splices_two_versions_or_keeps_an_overlong_part(tmp_path: Any) -> None:
    """A resume sent ``Range: bytes=N-`` alone: a resource that changed between the dropped
    attempt and the retry came back as its new tail after the old head (a corrupt file,
    reported as a Success), and a 416 (the part as long as or longer than the resource)
    was taken as "already whole" whatever the lengths. Now the first response's validator
    goes with the resume as ``If-Range`` (the changed resource comes whole) and a 416 must
    name the part's own length. Found touring, session 46. In-process, a local server."""
    import json

    from kmpray import EngineConfig, WorkerContext
    from kmpray.results import Failure, Success
    from tests.integration.http_server import DATA, Server

    config = EngineConfig(files_base_dir=str(tmp_path))

    def run(path: str, save: str) -> Any:
        ctx = WorkerContext("t", 0, engine_config=config)
        cfg = json.dumps({"url": path, "savePath": save})
        return asyncio.run(http.HttpDownloadWorker().do_work(cfg, ctx))

    with Server() as server:
        # the first attempt drops halfway; then the file changes on the server
        first = run(f"{server.url}/file-interrupt", "v.bin")
        assert isinstance(first, Failure) and first.should_retry
        assert (tmp_path / "v.bin.part").stat().st_size == len(DATA) // 2
        new = bytes(reversed(DATA))
        server.state.data, server.state.etag = new, '"v2"'
        done = run(f"{server.url}/file-interrupt", "v.bin")
        assert isinstance(done, Success), done
        assert server.state.if_ranges[-1] == '"v1"'  # the resume carried the first one's validator
        assert (tmp_path / "v.bin").read_bytes() == new  # whole, not v1's head + v2's tail
        assert not (tmp_path / "v.bin.part").exists() and not (tmp_path / "v.bin.part.validator").exists()

        # the file's own bytes are asked for (a Range counts them; a compressed transfer's
        # offsets are of other bytes): before session 46 httpx asked for gzip, decoded it,
        # and a resume's offset of decoded bytes went into the encoded stream
        assert server.state.encodings and set(server.state.encodings) == {"identity"}

        # a part file longer than the resource: the 416 says so; start over
        server.state.data = DATA
        (tmp_path / "long.bin.part").write_bytes(b"\xff" * (len(DATA) + 100))
        done = run(f"{server.url}/file", "long.bin")
        assert isinstance(done, Success) and (tmp_path / "long.bin").read_bytes() == DATA, done
        # a part file exactly the resource's length: whole, taken as it is (one request)
        (tmp_path / "whole.bin.part").write_bytes(DATA)
        hits = server.state.hits["/file"]
        done = run(f"{server.url}/file", "whole.bin")
        assert isinstance(done, Success) and (tmp_path / "whole.bin").read_bytes() == DATA, done
        assert server.state.hits["/file"] == hits + 1


@pytest.mark.parametrize(("worker", "cfg", "said"), [
    ("HttpRequestWorker", {"headers": {"X-A": "é"}}, "headers: the value of 'X-A' must be ASCII"),
    ("HttpRequestWorker", {"headers": {"X-A": "a\r\nInjected: 1"}},
     "headers: the value of 'X-A' must be ASCII"),
    ("HttpRequestWorker", {"headers": {"Bad Name": "x"}}, "headers: 'Bad Name' is not a valid header name"),
    ("HttpRequestWorker", {"url": "http://[::1"}, "url: Invalid IPv6 URL"),
    ("HttpRequestWorker", {"url": "http://127.0.0.1:99999/"}, "url: Port out of range 0-65535"),
    ("HttpSyncWorker", {"url": "http://exa mple.com/"}, "url: host 'exa mple.com' is not a valid host name"),
    ("HttpDownloadWorker", {"savePath": ""}, "savePath: '' is a directory; name the file to save to"),
    ("HttpDownloadWorker", {"savePath": "f", "sha256": "md5:abc"}, "sha256: must be 64 hexadecimal digits"),
    ("HttpUploadWorker", {"filePath": "up.txt", "mimeType": "text/plain\r\nX-Injected: 1"},
     "mimeType: must be a media type such as 'text/csv'"),
    ("HttpDownloadWorker", {"savePath": "sub"}, "savePath: 'sub' is a directory; name the file to save to"),
])
def test_a_config_that_cannot_be_sent_fails_at_once_naming_the_field(
        worker: str, cfg: dict[str, Any], said: str, tmp_path: Any) -> None:
    """The README's promise, "a malformed config fails at once with a message naming the
    field": these raised (UnicodeEncodeError, ValueError, an ExceptionGroup from the
    transport, IsADirectoryError after the whole download) or failed as transport errors,
    and every one was retried as if the server had failed. Found touring, session 46."""
    import json

    from kmpray import EngineConfig, WorkerContext
    from kmpray.results import Failure
    from tests.integration.http_server import Server

    (tmp_path / "sub").mkdir()
    (tmp_path / "up.txt").write_text("x")
    ctx = WorkerContext("t", 0, engine_config=EngineConfig(files_base_dir=str(tmp_path)))
    with Server() as server:
        full = {"url": f"{server.url}/file", **cfg}
        failed = asyncio.run(getattr(http, worker)().do_work(json.dumps(full), ctx))
        assert server.state.hits["/file"] == 0  # nothing sent
    assert isinstance(failed, Failure) and not failed.should_retry, failed
    assert failed.message.startswith(said), failed.message


def test_timeout_ms_bounds_the_whole_exchange_not_each_read() -> None:
    """httpx's timeout is per connect, read or write: a server sending a byte every 0.2 s
    kept a request with timeoutMs 1000 going for as long as it liked (found touring,
    session 46). Now the whole exchange is bounded: a retryable failure saying so."""
    import json
    import time as clock

    from kmpray import EngineConfig, WorkerContext
    from kmpray.results import Failure
    from tests.integration.http_server import Server

    with Server() as server:
        ctx = WorkerContext("t", 0, engine_config=EngineConfig())
        cfg = json.dumps({"url": f"{server.url}/drip?n=25", "timeoutMs": 1000})  # 5 s of dripping
        began = clock.monotonic()
        failed = asyncio.run(http.HttpRequestWorker().do_work(cfg, ctx))
        took = clock.monotonic() - began
    assert isinstance(failed, Failure) and failed.should_retry, failed
    said = f"TimeoutError for {server.url}/drip?n=25: no whole answer within timeoutMs (1000 ms)"
    assert failed.message == said
    assert took < 3, took


def test_an_upload_reports_its_progress_as_the_file_goes_out(tmp_path: Any) -> None:
    """An upload reported 0 % and then 100 %, however large the file (the README says uploads
    report progress); now the share of the file read out, up to 99 % until the server has
    answered. Found touring, session 46."""
    import json

    from kmpray import EngineConfig, WorkerContext
    from kmpray.results import Success
    from tests.integration.http_server import Server

    data = bytes(range(256)) * 4096  # 1 MiB: 16 reads of 64 KiB
    (tmp_path / "up.bin").write_bytes(data)
    seen: list[int] = []
    ctx = WorkerContext("t", 0, engine_config=EngineConfig(files_base_dir=str(tmp_path)),
                        progress_sink=lambda pct, msg: seen.append(pct))
    with Server() as server:
        cfg = json.dumps({"url": f"{server.url}/upload", "filePath": "up.bin"})
        done = asyncio.run(http.HttpUploadWorker().do_work(cfg, ctx))
        assert server.state.uploads[-1]["file"]["content"] == data
    assert isinstance(done, Success) and done.data["fileSize"] == len(data), done
    assert seen[0] == 0 and seen[-1] == 100 and seen == sorted(seen), seen
    assert len([p for p in seen if 0 < p < 100]) >= 10, seen  # along the way, not only at the ends
