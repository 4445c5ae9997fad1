"""The HTTP built-in workers' clients: built without blocking the executor's event loop."""

from __future__ import annotations

import asyncio
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
