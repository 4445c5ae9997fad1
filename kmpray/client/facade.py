"""The client facade: ``connect()`` and BackgroundTaskScheduler.

Users hold this facade; they never see ``ray.get`` or actor handles. Ray and the
actors are imported when ``connect()`` runs, never at ``import kmpray``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..chain import TaskChain
from ..clock import deadline_after
from ..config import EngineConfig, differences
from ..constraints import Constraints
from ..enums import ScheduleResult, TaskState
from ..errors import EngineUnavailable, InvalidParameters, StoreRefused
from ..events import DEFAULT_NAMESPACE, TaskEventBus
from ..lane import LANE_METHODS, LANE_READS
from ..models import ChainInfo, TaskInfo, TaskList, TaskRequest
from ..platforms import profile
from ..protocol import chain_from_answer
from ..shards import SHARD_SEP, merge_status, shard_of
from ..timing import CALL_TIMEOUT_S, LANE_CONNECT_TIMEOUT_S
from ..triggers import Trigger
from ..validation import check_uri
from ..worker import LOCAL_WORKERS, check_worker_class
from . import live, outputs, remote
from .coalesce import AsyncCoalescer, Coalescer
from .devices import Devices
from .lane import Lane, LaneDown
from .payloads import item, items
from .remote import _await, _node_id, _ray, _ray_init, _tokens, _unwrap
from .routing import Routing, checked_id
from .subscription import EventBus
from .waiting import TaskNotFound, Waiting

log = logging.getLogger("kmpray")


class BackgroundTaskScheduler(Waiting, Routing, Devices):
    """The facade over one namespace's engine. Thread-safe; every call is bounded."""

    def __init__(self, namespace: str, handles: dict[str, Any], described: dict[str, Any]) -> None:
        self.namespace = namespace
        # One SchedulerActor per shard (EngineConfig.scheduler_shards); calls about one task
        # or chain go straight to its shard (kmpray/shards.py), engine-wide ones to each.
        self._schedulers: list[Any] = list(handles.get("schedulers") or [handles["scheduler"]])
        self.shards = len(self._schedulers)
        self._homes: dict[str, int] = {}  # ids found off their hash shard: chain tasks
        self._broker = handles["broker"]
        self._oracle = handles["oracle"]
        self.virtual_time: bool = described["virtual_time"]
        self.platform: str = described["platform"]
        self.state_dir: str = described["state_dir"]
        self.events = EventBus(self._broker)
        self.last_reason: str | None = None
        # Enqueue calls from this node go over each shard's local lane when it has one
        # (kmpray/lane.py), through Ray otherwise; see _call.
        self._lanes = [Lane(lambda k=k: self._call("lane", shard=k, timeout_s=LANE_CONNECT_TIMEOUT_S),
                            lambda k=k: self._call_async("lane", shard=k, timeout_s=LANE_CONNECT_TIMEOUT_S),
                            _node_id) for k in range(self.shards)]
        # concurrent enqueue() calls to one shard share one enqueue_many message (coalesce.py)
        remote.let_go_in_forked_child(self)  # its shard fan-out pool (routing.py's _after_fork)
        self._groups = [Coalescer(lambda items, k=k: self._call("enqueue_many", items, shard=k, token=True))
                        for k in range(self.shards)]
        self._groups_async = [
            AsyncCoalescer(lambda items, k=k: self._call_async("enqueue_many", items, shard=k, token=True))
            for k in range(self.shards)]

    def __repr__(self) -> str:
        return f"<BackgroundTaskScheduler namespace={self.namespace!r} platform={self.platform!r}>"

    # ---------------------------------------------------------------- calls
    def _call(
        self, method: str, *args: Any, timeout_s: float = CALL_TIMEOUT_S, token: bool = False, shard: int = 0
    ) -> Any:
        """Call a scheduler shard, retrying across its restarts (actors/retry.py's schedule).
        ``token``: the call carries a request token as its last argument (see _tokens)."""
        self._check_open()
        ray = _ray()
        from kmpray.actors.retry import TRANSIENT, call_with_retry_sync

        deadline = time.monotonic() + timeout_s
        tries = _tokens(token)
        if token and method in LANE_METHODS:
            first = next(tries)
            try:
                return self._lanes[shard].call(method, [*args, *first], timeout_s)
            except LaneDown as down:  # through Ray, as a retry if the lane may have delivered it
                tries = tries if down.sent else itertools.chain([first], tries)
        elif method in LANE_READS:
            with contextlib.suppress(LaneDown):  # through Ray: a read asked again is harmless
                return self._lanes[shard].call(method, list(args), timeout_s)
        remote.require_ray_here()

        def once() -> Any:
            ref = getattr(self._schedulers[shard], method).remote(*args, *next(tries))
            try:
                return ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
            except ray.exceptions.ActorDiedError:
                self._check_alive(shard)  # stopped for good: say so now, not at the deadline
                raise

        try:
            return call_with_retry_sync(once, timeout_s)
        except TRANSIENT as exc:
            raise EngineUnavailable(f"scheduler unavailable for {method}: {exc}") from exc
        except ray.exceptions.GetTimeoutError as exc:
            raise EngineUnavailable(f"scheduler did not answer {method} within {timeout_s:.0f} s") from exc
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from None

    async def _call_async(
        self, method: str, *args: Any, timeout_s: float = CALL_TIMEOUT_S, token: bool = False, shard: int = 0
    ) -> Any:
        self._check_open()
        ray = _ray()
        from kmpray.actors.retry import TRANSIENT, call_with_retry

        deadline = time.monotonic() + timeout_s
        tries = _tokens(token)
        if token and method in LANE_METHODS:
            first = next(tries)
            try:
                return await self._lanes[shard].call_async(method, [*args, *first], timeout_s)
            except LaneDown as down:
                tries = tries if down.sent else itertools.chain([first], tries)
        elif method in LANE_READS:
            with contextlib.suppress(LaneDown):
                return await self._lanes[shard].call_async(method, list(args), timeout_s)
        remote.require_ray_here()

        async def once() -> Any:
            ref = getattr(self._schedulers[shard], method).remote(*args, *next(tries))
            try:
                return await asyncio.wait_for(_await(ref), max(0.1, deadline - time.monotonic()))
            except ray.exceptions.ActorDiedError:
                self._check_alive(shard)
                raise

        try:
            return await call_with_retry(once, timeout_s)
        except TRANSIENT as exc:
            raise EngineUnavailable(f"scheduler unavailable for {method}: {exc}") from exc
        except TimeoutError as exc:
            raise EngineUnavailable(f"scheduler did not answer {method} within {timeout_s:.0f} s") from exc
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from None

    # ------------------------------------------------------------- workers
    def register_worker(self, name_or_cls: str | type, cls: type | None = None) -> None:
        """``register_worker(SyncWorker)`` (name from ``@kmpray.worker`` or the class name)
        or ``register_worker("Name", cls)``."""
        if isinstance(name_or_cls, str):
            name = name_or_cls
            if cls is None:
                raise InvalidParameters(f"register_worker({name!r}): give the class as well")
        else:
            cls = name_or_cls
            registered = [n for n, c in LOCAL_WORKERS.items() if c is cls]
            # (a class's name; anything else is refused by check_worker_class, naming it:
            # register_worker(5) raised AttributeError on its __name__)
            name = registered[0] if registered else getattr(cls, "__name__", None) or repr(cls)[:80]
        self._register_many({name: cls})

    def _register_many(self, classes: dict[str, type], strict: bool = True) -> None:
        """Classes by name, in one message per shard (connect() sends its built-in workers so).
        Not ``strict`` (connect()'s, with the classes declared before it): a class that
        cannot be shipped is left out with a warning instead of failing the whole call."""
        shipped = []
        for name, cls in classes.items():
            check_worker_class(name, cls)
            try:
                shipped.append((name, remote.ship_class(cls)))
            except InvalidParameters as exc:
                if strict:
                    raise
                log.warning("@kmpray.worker(%r): not registered: %s", name, exc)
        self._each("register_workers", shipped)

    # ------------------------------------------------------------- enqueue
    def _results(self, raw: list[tuple[str, str | None]]) -> list[ScheduleResult]:
        self.last_reason = raw[-1][1] if raw else None
        return [ScheduleResult(r) for r, _ in raw]

    def enqueue(
        self,
        id: str,  # noqa: A002 - the contract's name
        trigger: Trigger,
        worker_class_name: str,
        input: str | None = None,  # noqa: A002
        constraints: Constraints | None = None,
    ) -> ScheduleResult:
        """Schedule one task. The reason for a rejection is in ``last_reason`` (and logged).
        Calls from several threads at once share actor messages (see client/coalesce.py)."""
        item = self._prepare(id, trigger, worker_class_name, input, constraints)
        if item is None:
            return ScheduleResult.REJECTED_INVALID_PARAMS
        return self._results([self._groups[shard_of(id, self.shards)].submit(item)])[0]

    def _prepare(self, *args: Any) -> dict[str, Any] | None:
        """The wire item for one enqueue, or None (with ``last_reason`` set) if it is malformed."""
        try:
            return item(*args)
        except InvalidParameters as exc:
            self.last_reason = str(exc)
            return None

    async def enqueue_async(
        self,
        id: str,  # noqa: A002
        trigger: Trigger,
        worker_class_name: str,
        input: str | None = None,  # noqa: A002
        constraints: Constraints | None = None,
    ) -> ScheduleResult:
        item = self._prepare(id, trigger, worker_class_name, input, constraints)
        if item is None:
            return ScheduleResult.REJECTED_INVALID_PARAMS
        return self._results([await self._groups_async[shard_of(id, self.shards)].submit(item)])[0]

    def enqueue_many(self, requests: Sequence[TaskRequest | dict[str, Any]]) -> list[ScheduleResult]:
        """Bulk submission in one round trip (per shard); stored a transaction per 1,000
        items (the scheduler serves others between them), answered whole, in order.

        Each item is a TaskRequest (a one-time task under its ``id``) or a dict with the
        keys of ``enqueue``: id, trigger, worker_class_name, input, constraints.
        """
        return self._results(self._enqueue_items(items(requests)))

    async def enqueue_many_async(
        self, requests: Sequence[TaskRequest | dict[str, Any]]
    ) -> list[ScheduleResult]:
        return self._results(await self._enqueue_items_async(items(requests)))

    def rejections(self, limit: int = 100) -> list[tuple[str, str, str]]:
        """The engine's most recent rejections: ``(id, result, reason)``, oldest first (the
        shards' lists merged by the time of each)."""
        stamped = sorted((tuple(r) for part in self._each("last_rejections", limit) for r in part),
                         key=lambda r: r[0])
        return [(rid, result, reason) for _at, rid, result, reason in stamped[-limit:]]

    def _with_refusal(self, exc: TaskNotFound) -> TaskNotFound:
        """``exc`` saying why the engine refused an enqueue of its id, if it did and still
        remembers: the usual reason a task one waits for or asks about does not exist."""
        for rid, result, reason in reversed(self.rejections(limit=1000)):
            if rid == exc.id:
                return TaskNotFound(exc.id, f"{result}: {reason}" if reason else result)
        return exc

    # -------------------------------------------------------------- control
    def cancel(self, id: str) -> int:  # noqa: A002
        """Cancel the unfinished work under ``id`` (a task or a chain: asked of every shard,
        since a chain's tasks live on its shard); returns how many tasks were cancelled."""
        return sum(int(n) for n in self._each("cancel", checked_id(id)))

    async def cancel_async(self, id: str) -> int:  # noqa: A002
        checked_id(id)
        return sum([int(await self._call_async("cancel", id, shard=k)) for k in range(self.shards)])

    def cancel_all(self) -> int:
        return sum(int(n) for n in self._each("cancel_all"))

    async def cancel_all_async(self) -> int:
        return sum([int(await self._call_async("cancel_all", shard=k)) for k in range(self.shards)])

    def get_task_info(self, id: str) -> TaskInfo | None:  # noqa: A002
        raw = self._find("get_info", id)
        return TaskInfo.model_validate(raw) if raw is not None else None

    async def get_task_info_async(self, id: str) -> TaskInfo | None:  # noqa: A002
        raw = await self._find_async("get_info", id)
        return TaskInfo.model_validate(raw) if raw is not None else None

    def get_output(self, id: str) -> dict[str, Any] | None:  # noqa: A002
        """The task's last ``Success.data`` with real values (arrays read-only), or None."""
        return outputs.resolve(self, self._find("get_output", id), self._home(id))

    async def get_output_async(self, id: str) -> dict[str, Any] | None:  # noqa: A002
        raw = await self._find_async("get_output", id)
        return await outputs.resolve_async(self, raw, self._home(id))

    def get_chain_info(self, id: str) -> ChainInfo | None:  # noqa: A002
        return chain_from_answer(self._call("get_chain_info", id, shard=self._home(id)))

    # --------------------------------------------------------------- chains
    def begin_with(self, first: TaskRequest | Sequence[TaskRequest]) -> TaskChain:
        """Start a chain: ``begin_with(a).then([b, c]).then(d).enqueue()``; a list runs in parallel."""
        return TaskChain.begin(self, first)

    def _enqueue_chain(self, chain: TaskChain) -> ScheduleResult:
        payload = chain.payload()
        home = self._chain_home(payload)
        result, self.last_reason = self._call("enqueue_chain", payload, token=True, shard=home)
        return ScheduleResult(result)

    async def _enqueue_chain_async(self, chain: TaskChain) -> ScheduleResult:
        payload = chain.payload()
        result, self.last_reason = await self._call_async("enqueue_chain", payload, token=True,
                                                          shard=self._chain_home(payload))
        return ScheduleResult(result)

    def list_tasks(self, state: TaskState | None = None) -> TaskList:
        parts = self._each("list_tasks", TaskState(state).value if state is not None else None)
        return outputs.task_list(parts)

    def newest_tasks(
        self, state: TaskState | None = None, worker: str | None = None, limit: int = 2000
    ) -> tuple[int, list[str], list[TaskInfo]]:
        """For the dashboard and ``kmpray list``: (how many match, the worker classes with
        tasks, the ``limit`` most recently updated that match, newest first), picked on each
        shard."""
        parts = self._each("newest_tasks", TaskState(state).value if state is not None else None, worker, limit)
        rows = heapq.nlargest(limit, (r for p in parts for r in p["tasks"]), key=lambda r: r["updated_at_ms"])
        workers = sorted({w for p in parts for w in p["workers"]})
        return sum(int(p["total"]) for p in parts), workers, [TaskInfo.model_validate(r) for r in rows]

    def wait(
        self,
        id: str | Sequence[str],  # noqa: A002
        timeout_s: float | None = None,
        progress: bool = False,
    ) -> Any:
        """Until the task(s) or chain(s) are finished (a periodic or event-triggered task:
        until its next run ends). One id returns its TaskInfo/ChainInfo, a list of ids a
        list. ``progress=True`` shows a tqdm bar fed by progress events. Raises
        TimeoutError after ``timeout_s`` (it looks at least once: ``timeout_s=0`` returns
        work already finished), TaskNotFound for an unknown id.
        """
        deadline = deadline_after(timeout_s)
        one = isinstance(id, str) or not isinstance(id, Iterable)
        ids = [checked_id(id)] if one else [checked_id(i) for i in id]
        try:
            results = self._wait_with_bar(ids, deadline) if progress else self._wait_many(ids, deadline)
        except TaskNotFound as exc:
            raise self._with_refusal(exc) from None
        return results[0] if one else results

    def advance_time(self, ms: int) -> int:
        """Virtual time only: move the clock ``ms`` forward, running everything that falls due
        in order and waiting for those runs to finish. Returns the new virtual now."""
        if isinstance(ms, bool) or not isinstance(ms, int):
            raise TypeError(f"advance_time: ms must be an int of milliseconds, got {type(ms).__name__}")
        # Each shard keeps its own virtual clock; they move together, one shard after another.
        return max(int(now) for now in self._each("advance_time", ms, timeout_s=CALL_TIMEOUT_S + 600))

    def now_ms(self) -> int:
        """The engine's clock (virtual or real), epoch milliseconds."""
        return int(self._call("now_ms"))

    def notify_content_change(self, uri: str) -> int:
        """A content change for ContentUri triggers; returns how many tasks it fired. A URI
        no trigger could take (no scheme, whitespace) raises naming ``uri``: it fired
        nothing, silently (``"media/images/42"`` for ``"content://media/images/42"``)."""
        if not isinstance(uri, str) or not uri:
            raise InvalidParameters("uri: must be a non-empty string")
        check_uri(uri, "uri")
        return sum(int(n) for n in self._each("fire", "content_uri", uri))

    def status(self) -> dict[str, Any]:
        """The engine's state; with several shards, their figures added up (and each
        shard's own under ``shards``: kmpray/shards.py merge_status)."""
        return merge_status([dict(part) for part in self._each("describe")])

    def explain(self, id: str) -> str:  # noqa: A002
        """Why a task is (not) running: its state, what it waits for (per node, for
        constraints), and the engine's recent decisions about it (``kmpray why ID``). For
        a chain's id: its steps, what ended it early, and its first unfinished step's tasks."""
        text = self._find("explain", id)
        if text is not None:
            return str(text)
        chain = self.get_chain_info(id)
        if chain is None:
            raise self._with_refusal(TaskNotFound(id))
        from ..display import chain_explain

        return chain_explain(chain, self.explain)

    def quarantined(self) -> list[dict[str, Any]]:
        """Stored rows that did not decode when the engine restored its store: table, key,
        reason, time, size and the first bytes in hex. They are never decoded again."""
        return [row for part in self._each("quarantined") for row in part]

    def drop_quarantined(self, key: str) -> int:
        """Delete the quarantined row(s) stored under ``key`` for good; returns how many."""
        return sum(int(n) for n in self._each("drop_quarantined", key))

    def shutdown(self) -> None:
        """Stop this namespace's engine actors. Every task stays in the store for the next connect().
        After ``ray.shutdown()`` in this process there is nothing to reach: only this
        connection closes (no new local Ray is started to stop actors it cannot see)."""
        from kmpray.actors.bootstrap import stop_engine

        self.events.close()  # this connection's subscriptions end with it
        if _ray().is_initialized():
            stop_engine(self.namespace)
        self._closed = True
        live.detached(self)
        for lane in self._lanes:
            lane.close()
        TaskEventBus._release(self.events)  # not another engine's, connected later


def connect(
    address: str | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    state_dir: str | None = None,
    virtual_time: bool = False,
    platform: str | None = "cluster",
    config: EngineConfig | None = None,
) -> BackgroundTaskScheduler:
    """``platform=None`` (the CLI's ``kmpray start`` without ``--platform``): a running
    engine's, whatever it is, without a warning; ``"cluster"`` for a new one."""
    asked_platform, platform = platform, platform or "cluster"
    profile(platform)  # a bad platform name fails here, naming the field
    if not isinstance(namespace, str) or not namespace or len(namespace) > 100:
        raise ValueError("namespace: must be a non-empty string of at most 100 characters")
    if SHARD_SEP in namespace:
        raise ValueError(f"namespace: may not contain {SHARD_SEP!r} (scheduler shards' namespaces use it)")
    ray = _ray()
    from kmpray.actors.bootstrap import ensure_engine

    remote.require_usable_ray(ray)
    if not ray.is_initialized():
        _ray_init(ray, address)
    state = str(Path(state_dir or remote.default_state_dir(namespace)).expanduser().resolve())
    handles = ensure_engine(namespace, state, virtual_time, platform, config or EngineConfig())
    try:
        ready = [*(s.ready.remote() for s in handles["schedulers"]), handles["broker"].ready.remote()]
        described, *_ = ray.get(ready, timeout=CALL_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError as exc:
        raise EngineUnavailable(f"engine {namespace!r} did not start within {CALL_TIMEOUT_S:.0f} s") from exc
    except ray.exceptions.RayTaskError as exc:
        cause = _unwrap(exc)
        if isinstance(cause, StoreRefused):
            # Its store was refused: stop the engine, so a connect after the fix starts afresh.
            from kmpray.actors.bootstrap import stop_engine

            stop_engine(namespace)
            raise cause from None
        raise
    remote.check_engine_code(handles["scheduler"], described)  # other kmpray code: said clearly
    if described["virtual_time"] != virtual_time or asked_platform not in (None, described["platform"]):
        log.warning(
            "engine %r is already running with virtual_time=%s platform=%s; attaching to it as it is",
            namespace, described["virtual_time"], described["platform"],
        )
    if state_dir is not None and described["state_dir"] != state:
        log.warning("engine %r is already running with its state in %s; attaching to it as it is "
                    "(asked: %s)", namespace, described["state_dir"], state)
    if config is not None and (differ := differences(config, described.get("config", {}))):
        log.warning("engine %r is already running with another config; attaching to it as it is: %s",
                    namespace, ", ".join(differ))
    scheduler = BackgroundTaskScheduler(namespace, handles, described)
    from ..workers import BUILTIN_WORKERS

    scheduler._register_many({**BUILTIN_WORKERS, **LOCAL_WORKERS}, strict=False)
    live.attached(scheduler)  # later @kmpray.worker classes go to it at once
    TaskEventBus._bind(scheduler.events)
    return scheduler


__all__ = ["BackgroundTaskScheduler", "TaskNotFound", "connect"]
