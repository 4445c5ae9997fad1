"""CommonWorker, the WorkerContext a run sees, and the ``@kmpray.worker`` decorator."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import numbers
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from .errors import InvalidParameters
from .results import Failure, Retry, Success, clip, clipped, raised, to_result


class Reported:
    """What ``report_progress`` returns: nothing to wait for (the event is on its way), yet
    awaitable, so ``await ctx.report_progress(50)`` — how KMP's suspend ``setProgress``
    reads, and what an ``async def do_work`` naturally writes — works like the plain call
    (it raised ``TypeError: object NoneType can't be used in 'await' expression``, and the
    run was retried for it)."""

    __slots__ = ()

    def __await__(self) -> Any:
        return iter(())  # done at once: the await's value is None

    def __repr__(self) -> str:
        return "Reported()"


REPORTED = Reported()


class WorkerContext:
    """What a run knows about itself. Created by the executor for each run."""

    def __init__(
        self,
        task_id: str,
        run_attempt_count: int,
        upstream_data: dict[str, Any] | None = None,
        progress_sink: Callable[[int, str | None], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        engine_config: Any = None,
    ) -> None:
        self.task_id = task_id
        #: The engine's EngineConfig (built-in workers read their safety settings here).
        self.engine_config = engine_config
        self.run_attempt_count = run_attempt_count
        self.upstream_data: dict[str, Any] = dict(upstream_data or {})
        self._progress_sink = progress_sink
        self._cancelled = cancelled

    def report_progress(self, pct: float, message: str | None = None) -> Reported:
        """A ``TaskProgressEvent`` (and ``TaskInfo.progress``); call it, or await it. ``pct``:
        a number in 0..100 (``i / n * 100``, a numpy integer), carried as an int (truncated:
        99.9 is not yet 100)."""
        if isinstance(pct, bool) or not isinstance(pct, numbers.Real) or not 0 <= pct <= 100:
            raise ValueError(f"report_progress: pct must be a number in 0..100, got {pct!r}")
        pct = int(pct)
        if self._progress_sink is not None:
            self._progress_sink(pct, clip(message) if isinstance(message, str) else message)
        return REPORTED

    def is_cancelled(self) -> bool:
        return self._cancelled() if self._cancelled is not None else False


class CommonWorker:
    """Subclass and implement ``do_work(input)`` or ``do_work(input, ctx)``, async or sync."""

    #: An ``async def do_work`` that calls blocking code (``requests``, a long numpy step,
    #: a database driver): run it in a thread, on its own event loop, so it never stalls
    #: the executor's loop that the other runs share. A sync ``do_work`` always runs in one.
    blocking: bool = False

    def do_work(self, input: str | None) -> Any:  # noqa: A002 - the contract's name
        raise NotImplementedError


def _do_work_params(cls: type) -> list[inspect.Parameter]:
    """The parameters a call of ``cls().do_work`` fills (``self`` left out; a static or
    class method has none to leave out). Raises TypeError/ValueError if not introspectable."""
    params = list(inspect.signature(cls.do_work).parameters.values())  # type: ignore[attr-defined]
    if isinstance(inspect.getattr_static(cls, "do_work"), (staticmethod, classmethod)):
        return params
    return params[1:]


def _positional(params: list[inspect.Parameter]) -> list[inspect.Parameter]:
    return [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


@functools.lru_cache(maxsize=512)
def _wants_context(cls: type) -> bool:
    """Does ``cls.do_work`` take ``(input, ctx)``? Inspected once per class."""
    return len(_positional(_do_work_params(cls))) >= 2


@functools.lru_cache(maxsize=512)
def _shape(cls: type) -> tuple[bool, bool]:
    """Is ``cls.do_work`` async, and does it take ``(input, ctx)``? Once per class, not
    per run (``inspect.iscoroutinefunction`` on a bound method: ~0.4 µs of every run)."""
    return inspect.iscoroutinefunction(cls.do_work), _wants_context(cls)  # type: ignore[attr-defined]


class NotConstructed(Exception):
    """A worker class's constructor raised ``cause`` (any BaseException: sys.exit() in
    ``__init__`` too): the run fails at once, with no retry."""

    def __init__(self, cause: BaseException) -> None:
        hint = ""
        if isinstance(cause, ModuleNotFoundError) and cause.name:
            # The class came by value, the modules it uses by name: one only the driver has.
            hint = (f" (not importable where the worker runs: install {cause.name.split('.')[0]!r} on "
                    "every node, or ship it with ray.init(runtime_env={'py_modules': [...]}))")
        super().__init__(f"{type(cause).__name__}: {cause}{hint}")
        self.cause = cause


def construct(cls: type) -> CommonWorker:
    """``cls()``; whatever it raises comes out as NotConstructed."""
    try:
        return cls()  # type: ignore[no-any-return]
    except BaseException as exc:
        raise NotConstructed(exc) from exc


def in_a_thread(cls: type, in_thread: bool = False) -> bool:
    """Does a run of ``cls`` go to a thread: a sync ``do_work``, a class marked
    ``blocking = True``, or one its executor moved there (``in_thread``)?"""
    return in_thread or bool(getattr(cls, "blocking", False)) or not _shape(cls)[0]


def _call_of(
    worker: CommonWorker, input: str | None, ctx: WorkerContext  # noqa: A002
) -> tuple[Any, bool, tuple[Any, ...]]:
    """``do_work`` as declared by the class, or set on the instance (a sync one over an
    async class's is not awaited): the function, whether it is async, its arguments."""
    fn = worker.do_work
    owner: type = type(worker)
    if "do_work" in getattr(worker, "__dict__", ()):
        is_async, wants_ctx = inspect.iscoroutinefunction(fn), _wants_context(owner)
    else:
        is_async, wants_ctx = _shape(owner)
    return fn, is_async, ((input, ctx) if wants_ctx else (input,))


def _construct_and_call(cls: type, input: str | None, ctx: WorkerContext) -> Any:  # noqa: A002
    """In the run's thread: the instance, then its call (an async one on a loop of its own)."""
    fn, is_async, args = _call_of(construct(cls), input, ctx)
    return asyncio.run(fn(*args)) if is_async else fn(*args)


async def run_worker(
    worker: CommonWorker | type,
    input: str | None,  # noqa: A002
    ctx: WorkerContext,
    in_thread: bool = False,
    pool: Executor | None = None,
) -> Success | Failure | Retry:
    """Call ``do_work`` the way it was declared; a sync one runs in a thread, and so does
    an async one of a class marked ``blocking = True`` (or ``in_thread``), on its own loop.
    The thread is ``pool``'s (an executor sizes it to its runs at once), else asyncio's
    default pool, which has only min(32, CPUs + 4) threads. ``worker``: an instance, or
    its class, constructed here: in the run's thread when the call goes to one, so a
    constructor that loads a model never stalls the event loop the other runs share, and
    the run's timeout covers it. A constructor that raises: NotConstructed."""
    try:
        if isinstance(worker, type) and in_a_thread(worker, in_thread):
            value = await in_thread_call(pool, _construct_and_call, worker, input, ctx)
            if inspect.isawaitable(value):
                value = await value
        else:
            instance = construct(worker) if isinstance(worker, type) else worker
            fn, is_async, args = _call_of(instance, input, ctx)
            if is_async:
                if in_thread or getattr(instance, "blocking", False):
                    value = await in_thread_call(pool, asyncio.run, fn(*args))
                else:
                    value = await fn(*args)
            else:
                value = await in_thread_call(pool, fn, *args)
                if inspect.isawaitable(value):
                    value = await value
    except (SystemExit, KeyboardInterrupt, GeneratorExit) as exc:
        # sys.exit() in do_work (a wrapped CLI, say) fails this attempt like any exception.
        # Raised on, it would pass every `except Exception`, and asyncio hands the first two
        # to the event loop itself: the run went unreported and its task stayed RUNNING.
        return raised(exc)
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise  # the run was cancelled (by the engine, or its timeout): it ends so
        # The worker's own (raised by hand, or by a library cancelling what it awaited):
        # taken for the engine's cancel, the run went unreported and stayed RUNNING.
        return raised(asyncio.CancelledError(str(exc) or "raised in do_work; the task was not cancelled"))
    return clipped(to_result(value))


async def in_thread_call(pool: Executor | None, fn: Callable[..., Any], *args: Any) -> Any:
    """``asyncio.to_thread`` on ``pool`` (its context variables go along, as there)."""
    if pool is None:
        return await asyncio.to_thread(fn, *args)
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return await asyncio.get_running_loop().run_in_executor(pool, call)


_W = TypeVar("_W", bound=type)

# Process-local registrations made with the decorator; connect() pushes them to the engine,
# and each later one goes to the engines this process is connected to (client/live.py).
LOCAL_WORKERS: dict[str, type] = {}
_ON_REGISTER: list[Callable[[str, type], None]] = []


def on_register(listener: Callable[[str, type], None]) -> None:
    """Call ``listener(name, cls)`` at each ``@kmpray.worker`` registration from now on."""
    _ON_REGISTER.append(listener)

MAX_WORKER_NAME = 200


def check_worker_class(name: str, cls: object) -> None:
    if not isinstance(name, str) or not name or len(name) > MAX_WORKER_NAME:
        raise InvalidParameters(
            f"worker_class_name: must be a non-empty string of at most {MAX_WORKER_NAME} characters"
        )
    if not isinstance(cls, type) or not callable(getattr(cls, "do_work", None)):
        raise InvalidParameters(f"worker {name!r}: {cls!r} is not a class with a do_work method")
    if getattr(cls, "do_work", None) is CommonWorker.do_work:
        raise InvalidParameters(f"worker {name!r}: {cls.__name__} does not implement do_work")
    _check_signature(name, cls)


def _check_signature(name: str, cls: type) -> None:
    """``do_work`` must take ``(input)`` or ``(input, ctx)``: a class that could never be
    called so is refused when it is registered, not at its first run."""
    try:
        params = _do_work_params(cls)
    except (TypeError, ValueError):  # not introspectable (a C callable): left to the run
        return
    keyword_only = [p for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]  # never passed
    starred = any(p.kind is p.VAR_POSITIONAL for p in params)
    positional = _positional(params)
    required = [p for p in positional if p.default is p.empty]
    if keyword_only or len(required) > 2 or not (positional or starred):
        raise InvalidParameters(
            f"worker {name!r}: {cls.__name__}.do_work must take (input) or (input, ctx); "
            f"it takes ({_shown(params)})"
        )


def _shown(params: list[inspect.Parameter]) -> str:
    """Parameters by name as written: ``input, *, ctx``, ``*args, **kw``."""
    out: list[str] = []
    starred = False  # a * or *args written already: keyword-only parameters follow it
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not starred:
            out.append("*")
            starred = True
        starred = starred or p.kind is p.VAR_POSITIONAL
        star = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        out.append(star + p.name)
    return ", ".join(out) or "nothing"


def worker(name: str) -> Callable[[_W], _W]:
    """Register a worker class under ``name`` (``@kmpray.worker("SyncWorker")``)."""

    def register(cls: _W) -> _W:
        check_worker_class(name, cls)
        LOCAL_WORKERS[name] = cls
        for listener in _ON_REGISTER:
            listener(name, cls)
        return cls

    return register
