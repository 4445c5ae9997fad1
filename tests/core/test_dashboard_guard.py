"""The dashboard's guard against other web pages (no Ray: a stand-in scheduler).

Bound to loopback without a token, the dashboard was open to any page the user's browser
showed: a form posted to ``http://127.0.0.1:8786/api/task/cancel?id=X`` cancelled X
(cross-site request forgery), and a page whose name was re-pointed at 127.0.0.1 (DNS
rebinding) could read the task table and cancel as same-origin. Found touring, session 46.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("starlette", reason="the dashboard extra: pip install 'kmpray[dashboard]'")

from starlette.testclient import TestClient

from kmpray.dashboard import create_app


class Scheduler:
    """What the guarded endpoints call: one known task, cancels recorded."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []

    def get_task_info(self, tid: str) -> Any:
        return object() if tid == "t1" else None

    def get_chain_info(self, cid: str) -> Any:
        return None

    def cancel(self, tid: str) -> int:
        self.cancelled.append(tid)
        return 1


def _client(token: str | None = None, host: str = "127.0.0.1:8786") -> tuple[TestClient, Scheduler]:
    sched = Scheduler()  # (no `with`: the feed's threads are not started)
    return TestClient(create_app(sched, token=token), base_url=f"http://{host}"), sched


def test_a_cross_site_cancel_is_refused_and_nothing_is_cancelled() -> None:
    client, sched = _client()
    for origin in ("https://evil.example", "null", "http://127.0.0.1:9999"):
        answer = client.post("/api/task/cancel", params={"id": "t1"}, headers={"Origin": origin})
        assert answer.status_code == 403, origin
        assert answer.json()["error"] == f"a cross-site request (Origin {origin!r}) may not change anything"
    assert sched.cancelled == []
    same = client.post("/api/task/cancel", params={"id": "t1"}, headers={"Origin": "http://127.0.0.1:8786"})
    assert same.status_code == 200 and same.json() == {"cancelled": 1}  # the page's own click
    assert client.post("/api/tasks/t1/cancel").json() == {"cancelled": 1}  # no Origin: curl, scripts
    assert sched.cancelled == ["t1", "t1"]


def test_without_a_token_only_loopback_names_are_answered() -> None:
    for host in ("evil.example:8786", "192.168.1.5:8786", "127.0.0.1.evil.example"):
        client, sched = _client(host=host)
        answer = client.get("/api/task", params={"id": "t1"})
        assert answer.status_code == 403 and "not a loopback name" in answer.json()["error"], host
        assert client.post("/api/task/cancel", params={"id": "t1"}).status_code == 403
        assert sched.cancelled == []
    for host in ("127.0.0.1:8786", "localhost:8786", "[::1]:8786", "localhost"):
        client, _ = _client(host=host)
        assert client.get("/api/task", params={"id": "nope"}).status_code == 404, host  # past the guard


def test_with_a_token_it_is_what_guards_any_host_and_origin() -> None:
    """Another site's page cannot know the token; a proxy in front may rewrite the host the
    page is served as (nginx's default Host is its upstream's), so with a token neither the
    host nor the Origin is checked: the token is."""
    client, sched = _client(token="s3cret", host="127.0.0.1:8786")
    proxied = {"Origin": "https://dash.example"}
    assert client.post("/api/task/cancel", params={"id": "t1"}, headers=proxied).status_code == 401
    assert sched.cancelled == []  # a forged request: no token
    auth = {"Authorization": "Bearer s3cret"}
    assert client.post("/api/task/cancel", params={"id": "t1"}, headers={**proxied, **auth}).json() == {
        "cancelled": 1}
    other, _ = _client(token="s3cret", host="dash.example:8786")
    assert other.get("/api/task", params={"id": "nope"}, headers=auth).status_code == 404
