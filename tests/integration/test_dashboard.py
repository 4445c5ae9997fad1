"""``kmpray dashboard``: the JSON API (filters, 400/404/401, cancel, the event stream) and
the page itself in headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from kmpray import TaskRequest, TaskState, TaskTrigger

from .helpers import began, blocks_input, until

pytestmark = pytest.mark.ray
starlette = pytest.importorskip("starlette", reason="the dashboard extra: pip install 'kmpray[dashboard]'")
uvicorn = pytest.importorskip("uvicorn", reason="the dashboard extra: pip install 'kmpray[dashboard]'")

from starlette.testclient import TestClient  # noqa: E402

from kmpray.dashboard import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ONCE = TaskTrigger.OneTime()


class Served:
    """The app on a real socket (uvicorn in a thread), for the event stream and the browser."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        until(lambda: self.server.started, timeout_s=30, what="the dashboard to listen")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def sched(module_engines: Any) -> Any:
    from .workers import register_all

    engine = module_engines()
    register_all(engine)
    return engine


def test_the_api_lists_filters_and_answers_bad_input_with_400_and_404(sched: Any, tmp_path: Path) -> None:
    for i in range(3):
        sched.enqueue(f"api-e{i}", ONCE, "Echo", input=str(i))
    sched.wait([f"api-e{i}" for i in range(3)], timeout_s=30)
    inp, started, release = blocks_input(tmp_path, "api-b")
    sched.enqueue("api-b", ONCE, "Blocks", input=inp)
    until(began(started), what="the blocking task to run")
    with TestClient(create_app(sched, poll_s=0.2), base_url="http://127.0.0.1:8786") as client:
        listed = client.get("/api/tasks").json()
        assert {f"api-e{i}" for i in range(3)} | {"api-b"} <= {t["id"] for t in listed["tasks"]}
        assert "Echo" in listed["workers"] and "Blocks" in listed["workers"]
        done = client.get("/api/tasks", params={"state": "succeeded"}).json()["tasks"]
        assert {t["state"] for t in done} == {"SUCCEEDED"} and "api-b" not in {t["id"] for t in done}
        blocks = client.get("/api/tasks", params={"worker": "Blocks"}).json()["tasks"]
        assert [t["id"] for t in blocks] == ["api-b"] and blocks[0]["state"] == "RUNNING"
        # Newest first, picked on the scheduler's side: a limit keeps the newest, and the
        # total still counts every match.
        stamps = [t["updated_at_ms"] for t in listed["tasks"]]
        assert stamps == sorted(stamps, reverse=True) and listed["total"] == len(listed["tasks"])
        two = client.get("/api/tasks", params={"limit": 2}).json()
        assert two["total"] == listed["total"]
        assert [t["id"] for t in two["tasks"]] == [t["id"] for t in listed["tasks"][:2]]

        for params, field in (
            ({"state": "DONE"}, "state"),
            ({"limit": "0"}, "limit"),
            ({"limit": "x"}, "limit"),
        ):
            bad = client.get("/api/tasks", params=params)
            assert bad.status_code == 400 and bad.json()["error"].startswith(f"{field}:"), params
        # A reconnecting stream's Last-Event-ID that is no cursor: 400 naming it (it was a 503
        # "engine unavailable: ValueError" before session 41).
        bad = client.get("/api/events", headers={"Last-Event-ID": "abc"})
        said = "Last-Event-ID: must be an event cursor, got 'abc'"
        assert (bad.status_code, bad.json()["error"]) == (400, said)
        for path in ("/api/tasks/missing", "/api/chains/missing", "/api/task?id=missing", "/api/chain?id=.."):
            assert client.get(path).status_code == 404, path
        assert client.post("/api/tasks/missing/cancel").status_code == 404
        assert client.post("/api/task/cancel", params={"id": "missing"}).status_code == 404
        for path in ("/api/task", "/api/chain?id="):  # no id: 400 naming it
            bad = client.get(path)
            assert (bad.status_code, bad.json()["error"]) == (400, "id: required (a task or chain id)"), path

        until(
            lambda: client.get("/api/tasks/api-e1").json()["events"], what="the feed to read api-e1's event"
        )
        one = client.get("/api/tasks/api-e1").json()
        assert one["task"]["result"]["data"]["input"] == "1" and "SUCCEEDED" in one["why"]
        assert [(e["kind"], e["success"]) for e in one["events"]] == [("completion", True)]

        assert client.post("/api/tasks/api-b/cancel").json() == {"cancelled": 1}
        assert sched.get_task_info("api-b").state is TaskState.CANCELLED
        # Any id by query: ".." too, which no path can carry (a browser resolves it away).
        assert client.get("/api/task", params={"id": "api-e1"}).json()["task"] == one["task"]
        sched.enqueue("..", ONCE, "Blocks", input=inp)
        dots = client.get("/api/task", params={"id": ".."})
        assert dots.status_code == 200 and dots.json()["task"]["id"] == ".."
        assert client.post("/api/task/cancel", params={"id": ".."}).json() == {"cancelled": 1}
        assert sched.get_task_info("..").state is TaskState.CANCELLED
        until(lambda: len(client.get("/api/stats").json()["timeline"]) >= 2, what="two timeline points")
        stats = client.get("/api/stats").json()
        assert stats["counts"]["SUCCEEDED"] >= 3 and stats["timeline"][-1]["finished"] >= 3
    release.touch()


def test_a_token_is_required_by_every_request_when_set(sched: Any) -> None:
    with TestClient(create_app(sched, token="s3cret", poll_s=5)) as client:
        assert client.get("/").status_code == 401
        assert client.get("/api/tasks", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/api/tasks/x/cancel").status_code == 401
        assert client.get("/api/tasks", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        page = client.get("/", params={"token": "s3cret"})
        assert page.status_code == 200 and "<title>kmpray dashboard</title>" in page.text


def test_the_event_stream_pushes_events_as_they_happen(sched: Any) -> None:
    with Served(create_app(sched, poll_s=5)) as served:
        since = sched.events.last_cursor()
        with httpx.stream("GET", f"{served.url}/api/events", params={"since": since}, timeout=30) as stream:
            sched.enqueue("sse-1", ONCE, "Echo", input="pushed")
            got = None
            deadline = time.monotonic() + 30
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    if event.get("task_id") == "sse-1":
                        got = event
                        break
                assert time.monotonic() < deadline, "no event for sse-1"
    assert got is not None and got["kind"] == "completion" and got["output_data"]["input"] == "pushed"


def _chromium() -> Any:
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed: apt-get install chromium (what .ci/run does)")
    return playwright


def test_the_page_in_chromium_lists_filters_draws_a_chain_and_cancels(sched: Any, tmp_path: Path) -> None:
    sync_api = _chromium()
    for i in range(3):
        sched.enqueue(f"ui-e{i}", ONCE, "Echo")
    inp, started, release = blocks_input(tmp_path, "ui-b")
    sched.enqueue("ui-b", ONCE, "Blocks", input=inp)
    gate = tmp_path / "gate"
    step = lambda tid, **cfg: TaskRequest("Step", input=json.dumps(cfg) if cfg else None, id=tid)  # noqa: E731
    chain = (
        sched.begin_with(step("ui-a", gate=str(gate), block=["ui-g"])).then(step("ui-g")).then(step("ui-z"))
    )
    chain.with_id("ui-chain").enqueue()
    until(began(started), what="ui-b to run")

    with Served(create_app(sched, poll_s=0.5)) as served, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(served.url, timeout=30_000)
            row = page.locator('#tasks tr[data-id="ui-e2"]')
            row.wait_for(timeout=30_000)
            assert "SUCCEEDED" in row.locator("td.state").inner_text()
            page.select_option("#state-filter", "RUNNING")
            page.wait_for_function(
                """() => {
                    const cells = [...document.querySelectorAll('#tasks td.state')];
                    return cells.length > 0 && cells.every(td => td.innerText.includes('RUNNING'));
                }""",
                timeout=30_000,
            )
            assert page.locator('#tasks tr[data-id="ui-e0"]').count() == 0
            assert page.locator('#tasks tr[data-id="ui-b"]').count() == 1
            page.select_option("#state-filter", "")

            page.wait_for_selector('#chain-select option[value="ui-chain"]', state="attached", timeout=30_000)
            page.select_option("#chain-select", "ui-chain")
            node = '#chain g.node[data-id="{}"]'
            page.wait_for_selector(
                node.format("ui-g") + '[data-state="RUNNING"]', state="attached", timeout=30_000
            )
            assert page.locator(node.format("ui-a")).get_attribute("data-state") == "SUCCEEDED"
            assert page.locator(node.format("ui-z")).get_attribute("data-state") == "BLOCKED"
            # Why it is not running, in its row ("Why isn't my task running?" without a click).
            why = page.locator('#tasks tr[data-id="ui-z"] td.why')
            why.wait_for(timeout=30_000)
            assert "prerequisite" in why.inner_text() and why.inner_text() == why.get_attribute("title")
            running = page.locator(node.format("ui-g") + " rect").get_attribute("fill")
            gate.touch()  # the chain goes on: the page's colours follow
            page.wait_for_selector(
                node.format("ui-z") + '[data-state="SUCCEEDED"]', state="attached", timeout=30_000
            )
            assert page.locator(node.format("ui-g") + " rect").get_attribute("fill") != running

            page.click('#tasks button.cancel[data-id="ui-b"]')
            page.wait_for_function(
                "() => document.getElementById('message').innerText.includes('cancelled 1')", timeout=30_000
            )
            page.wait_for_selector('#tasks tr[data-id="ui-b"] .badge.CANCELLED', timeout=30_000)
            assert sched.get_task_info("ui-b").state is TaskState.CANCELLED
            # A task named "..": its row opens its details (the page asks by query: by path,
            # the browser resolved /api/tasks/.. to /api/ and the click showed nothing).
            sched.enqueue("..", ONCE, "Echo", input="dots")
            page.locator('#tasks tr[data-id=".."] td').first.click(timeout=30_000)
            page.wait_for_function(
                "() => document.getElementById('detail').innerText.includes('\"input\": \"dots\"')",
                timeout=30_000,
            )
            assert page.locator("#detail-id").inner_text() == ".."
            page.wait_for_selector("#events li", timeout=30_000)
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    release.touch()


def test_a_non_loopback_bind_without_a_token_is_refused() -> None:
    from click.testing import CliRunner

    from kmpray.cli import main
    from kmpray.dashboard.app import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    out = CliRunner().invoke(main, ["dashboard", "--host", "0.0.0.0"], env={"KMPRAY_DASHBOARD_TOKEN": ""})
    assert out.exit_code != 0 and "not loopback: give --token" in out.output
