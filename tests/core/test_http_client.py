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
