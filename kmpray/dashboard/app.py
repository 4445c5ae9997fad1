"""The dashboard's web app: one page and a JSON API over a connected scheduler.

Every engine call is a blocking Ray call, so each runs in Starlette's thread pool. Inputs
are checked before any call: an unknown id is a 404, a bad filter a 400; an engine that
cannot be reached is a 503. A token, when set, must come with every request (header
``Authorization: Bearer T``, or ``?token=T`` for the page and its event stream, which a
browser's EventSource cannot give headers); without it, 401. Without a token, a request
for a name that is not loopback, or a cross-site one that would change something, is a
403 (``refused``).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..display import chain_svg
from ..enums import TaskState
from .feed import Feed

DEFAULT_PORT = 8786
#: Rows the task table sends at most (newest first); the page says when there are more.
MAX_ROWS = 2_000
PAGE = Path(__file__).with_name("page.html")


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _id(request: Request) -> str:
    """The task's or chain's id: in the path (``/api/tasks/{id}``) or, for any id, in the
    query (``/api/task?id=``): a browser resolves an id of ``.`` or ``..`` in a path away
    (percent-encoded too), so the page asks by query."""
    found = request.path_params.get("id")
    if found is None:
        found = request.query_params.get("id")
    if not found:
        raise BadRequest(400, "id: required (a task or chain id)")
    return str(found)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(400, f"{name}: must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise BadRequest(400, f"{name}: must be between {low} and {high}, got {value}")
    return value


def _state_param(request: Request) -> TaskState | None:
    raw = request.query_params.get("state")
    if not raw:
        return None
    try:
        return TaskState(raw.upper())
    except ValueError:
        known = ", ".join(s.value for s in TaskState)
        raise BadRequest(400, f"state: {raw!r} is not one of {known}") from None


def _hostname(host_header: str) -> str:
    """The name in a ``Host`` header (``127.0.0.1:8786``, ``[::1]:8786``, ``localhost``)."""
    try:
        return urlsplit(f"//{host_header}").hostname or ""
    except ValueError:  # e.g. a malformed bracketed address
        return ""


def refused(request: Request, token: str | None) -> str | None:
    """Why a request that a browser may have been made to send is refused, or None.

    Without a token the dashboard is bound to loopback and anyone who can reach it may use
    it, so a browser's requests need two guards:
    - It answers requests for a loopback name only: a page on another site can point its
      own name at 127.0.0.1 (DNS rebinding) and would then read the task table and cancel
      tasks as same-origin.
    - A request that changes something (cancel) whose ``Origin`` is not this server is
      refused: a page on any site could post a form to ``http://127.0.0.1:8786/...``
      (cross-site request forgery; the browser sends it, only its answer is hidden).
      Clients that send no ``Origin`` (curl, scripts) are not affected.
    With a token, every request must carry it, which another site's page cannot: neither
    guard is needed (and a proxy in front may rewrite the host the page is served as).
    """
    if token is not None:
        return None
    host = request.headers.get("host", "")
    if not is_loopback(_hostname(host)):
        return (f"host {host[:80]!r} is not a loopback name: without a token the dashboard answers "
                "requests for localhost, 127.0.0.1 or [::1] only (a guard against DNS rebinding; "
                "behind a proxy, give it a token)")
    if request.method not in ("GET", "HEAD"):
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            return f"a cross-site request (Origin {origin[:80]!r}) may not change anything"
    return None


def create_app(scheduler: Any, token: str | None = None, poll_s: float = 1.0) -> Starlette:
    """The app over ``scheduler`` (what ``kmpray.connect()`` returned)."""
    feed = Feed(scheduler, poll_s)

    def guarded(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            why = refused(request, token)
            if why is not None:
                return JSONResponse({"error": why}, status_code=403)
            if token is not None:
                given = request.query_params.get("token") or request.headers.get("authorization", "")
                given = given.removeprefix("Bearer ").strip()
                if not hmac.compare_digest(given.encode(), token.encode()):
                    return JSONResponse({"error": "a valid token is required"}, status_code=401)
            try:
                return await handler(request)
            except BadRequest as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status)
            except Exception as exc:  # the engine is down or restarting: never a 500
                return JSONResponse(
                    {"error": f"engine unavailable: {type(exc).__name__}: {exc}"}, status_code=503
                )

        return endpoint

    async def page(_request: Request) -> Response:
        return HTMLResponse(PAGE.read_text())

    async def tasks(request: Request) -> Response:
        state = _state_param(request)
        worker = request.query_params.get("worker") or None
        limit = _int_param(request, "limit", MAX_ROWS, 1, MAX_ROWS)
        # Picked on the scheduler's side: only the rows shown cross the wire.
        total, workers, rows = await run_in_threadpool(scheduler.newest_tasks, state, worker, limit)
        return JSONResponse(
            {"total": total, "tasks": [t.model_dump(mode="json") for t in rows], "workers": workers}
        )

    async def task(request: Request) -> Response:
        tid = _id(request)
        info = await run_in_threadpool(scheduler.get_task_info, tid)
        if info is None:
            raise BadRequest(404, f"no task {tid!r}")
        why = await run_in_threadpool(scheduler.explain, tid)
        return JSONResponse(
            {"task": info.model_dump(mode="json"), "events": feed.events_of(info.id), "why": why}
        )

    async def chain(request: Request) -> Response:
        cid = _id(request)
        info = await run_in_threadpool(scheduler.get_chain_info, cid)
        if info is None:
            raise BadRequest(404, f"no chain {cid!r}")
        steps = [
            [{"id": t.id, "state": t.state.value, "worker": t.worker_class_name} for t in s]
            for s in info.steps
        ]
        edges = [[a["id"], b["id"]] for before, after in pairwise(steps) for a in before for b in after]
        svg = chain_svg(info)  # drawn as notebooks draw it (kmpray/display.py)
        body = {"id": info.id, "state": info.state.value, "steps": steps, "edges": edges, "svg": svg}
        return JSONResponse(body)

    def cancel(kind: str) -> Callable[[Request], Awaitable[Response]]:
        lookup = scheduler.get_task_info if kind == "task" else scheduler.get_chain_info

        async def endpoint(request: Request) -> Response:
            """Cancel the task or chain: answers with how many tasks were cancelled."""
            tid = _id(request)
            if await run_in_threadpool(lookup, tid) is None:
                raise BadRequest(404, f"no {kind} {tid!r}")
            return JSONResponse({"cancelled": await run_in_threadpool(scheduler.cancel, tid)})

        return endpoint

    async def stats(_request: Request) -> Response:
        status = feed.latest
        return JSONResponse(
            {
                "timeline": feed.points(),
                "counts": status.get("counts", {}),
                "ready": status.get("ready"),
                "inflight": status.get("inflight"),
                "executors": status.get("executors"),
                "namespace": status.get("namespace"),
            }
        )

    async def events(request: Request) -> Response:
        """Server-sent events: every event after ``since`` (or ``Last-Event-ID``), as it comes."""
        since = _int_param(request, "since", -1, -1, 2**62)
        if since < 0 and "last-event-id" in request.headers:  # a browser reconnecting
            raw = request.headers["last-event-id"] or "0"
            if not raw.isdigit():
                raise BadRequest(400, f"Last-Event-ID: must be an event cursor, got {raw[:40]!r}")
            since = int(raw)
        elif since < 0:
            since = feed.events[-1][0] if feed.events else 0

        async def stream() -> AsyncIterator[str]:
            cursor = since
            yield ": kmpray events\n\n"
            while not await request.is_disconnected():
                batch = feed.events_after(cursor)
                for c, event in batch:
                    cursor = c
                    yield f"id: {c}\ndata: {json.dumps(event)}\n\n"
                if not batch:
                    await asyncio.sleep(0.2)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        feed.start()
        try:
            yield
        finally:
            feed.stop()

    routes = [
        Route("/", guarded(page)),
        Route("/api/tasks", guarded(tasks)),
        Route("/api/tasks/{id:path}/cancel", guarded(cancel("task")), methods=["POST"]),
        Route("/api/tasks/{id:path}", guarded(task)),
        Route("/api/chains/{id:path}/cancel", guarded(cancel("chain")), methods=["POST"]),
        Route("/api/chains/{id:path}", guarded(chain)),
        # The same by query (?id=): any id, "." and ".." too (what the page uses, see _id)
        Route("/api/task/cancel", guarded(cancel("task")), methods=["POST"]),
        Route("/api/task", guarded(task)),
        Route("/api/chain/cancel", guarded(cancel("chain")), methods=["POST"]),
        Route("/api/chain", guarded(chain)),
        Route("/api/stats", guarded(stats)),
        Route("/api/events", guarded(events)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.feed = feed
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    scheduler: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None
) -> None:
    """Run the dashboard until interrupted. A non-loopback bind needs a token."""
    import uvicorn

    if not is_loopback(host) and not token:
        raise ValueError(f"host {host!r} is not loopback: give a token (--token or KMPRAY_DASHBOARD_TOKEN)")
    uvicorn.run(create_app(scheduler, token), host=host, port=port, log_level="warning")
