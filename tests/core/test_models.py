"""The public models: frozen, camelCase aliases, positional forms, field-naming errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from kmpray import (
    BackoffPolicy,
    Constraints,
    InputMerger,
    TaskCompletionEvent,
    TaskRequest,
    TaskTrigger,
    WorkerResult,
)
from kmpray.backoff import MAX_BACKOFF_MS, backoff_delay_ms
from kmpray.errors import InvalidParameters
from kmpray.merging import merge
from kmpray.results import Failure, Success, to_result
from kmpray.triggers import uri_matches


def test_import_kmpray_loads_no_ray() -> None:
    code = "import sys, kmpray; from kmpray import *; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_camel_case_aliases_equal_snake_case() -> None:
    assert Constraints(requiresNetwork=True, maxRetries=2) == Constraints(requires_network=True, max_retries=2)
    assert TaskTrigger.Periodic(intervalMs=60_000) == TaskTrigger.Periodic(60_000)


def test_models_are_frozen() -> None:
    c = Constraints()
    with pytest.raises(ValidationError):
        c.requires_network = True  # type: ignore[misc]


def test_positional_task_request_and_events() -> None:
    req = TaskRequest("DownloadWorker")
    assert req.worker_class_name == "DownloadWorker" and req.input is None and len(req.id) == 36
    assert TaskRequest("A").id != TaskRequest("A").id
    ev = TaskCompletionEvent("Sync", True, "done")
    assert (ev.task_name, ev.success, ev.message) == ("Sync", True, "done") and ev.timestamp > 0


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Constraints(max_retries=-1), "max_retries"),
        (lambda: Constraints(backoff_delay_ms=-5), "backoff_delay_ms"),
        (lambda: Constraints(timeout_ms=0), "timeout_ms"),
        (lambda: Constraints(qos="URGENT"), "qos"),
        (lambda: Constraints(bogus=True), "bogus"),
        (lambda: TaskTrigger.OneTime(initial_delay_ms=-1), "initial_delay_ms"),
        (lambda: TaskTrigger.Periodic(0), "interval_ms"),
        (lambda: TaskTrigger.ContentUri(""), "uri_string"),
        (lambda: WorkerResult.Retry(delay_ms=-1), "delay_ms"),
        (lambda: TaskRequest("W", input_merger="ZIP"), "input_merger"),
    ],
)
def test_invalid_values_raise_validation_error_naming_the_field(build, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as err:
        build()
    assert field in str(err.value)


def test_device_triggers_are_singletons() -> None:
    assert TaskTrigger.BatteryLow is TaskTrigger.BatteryLow
    assert TaskTrigger.BatteryLow.kind == "battery_low"
    # Written as the other triggers are, with parentheses, each is still itself: until
    # session 47 ``TaskTrigger.BatteryOkay()`` raised "'BatteryOkayTrigger' object is not
    # callable" (KMP's are Kotlin objects, written without them, as here).
    for single in (TaskTrigger.BatteryLow, TaskTrigger.BatteryOkay, TaskTrigger.StorageLow, TaskTrigger.DeviceIdle):
        assert single() is single


def test_bool_results_convert() -> None:
    assert to_result(True) == Success()
    assert to_result(False) == Failure("Task failed")
    assert "expected a WorkerResult" in to_result(42).message  # type: ignore[union-attr]


@given(st.integers(0, 10**7), st.integers(1, 200))
def test_backoff_formula(base: int, n: int) -> None:
    assert backoff_delay_ms(BackoffPolicy.LINEAR, base, n) == min(base * n, MAX_BACKOFF_MS)
    assert backoff_delay_ms(BackoffPolicy.EXPONENTIAL, base, n) == min(base * 2 ** (n - 1), MAX_BACKOFF_MS)


def test_five_hour_cap() -> None:
    assert backoff_delay_ms(BackoffPolicy.EXPONENTIAL, 10_000, 30) == 5 * 3600 * 1000


@pytest.mark.parametrize(
    ("pattern", "changed", "desc", "match"),
    [
        ("file:///data/photos", "file:///data/photos", False, True),
        ("file:///data/photos", "file:///data/photos/a.jpg", True, True),
        ("file:///data/photos", "file:///data/photos/a.jpg", False, False),
        ("file:///data/photos", "file:///data/photosynthesis", True, False),
        ("content://media/", "content://media/images/1", True, True),
        # local file URIs by path (the watcher reports Path.as_uri()'s spelling): session 46
        ("file:///tmp/my dir", "file:///tmp/my%20dir/a.txt", True, True),
        ("file:///tmp/d%C3%A9", "file:///tmp/d%C3%A9/a", True, True),
        ("file:///tmp/dé", "file:///tmp/d%C3%A9/a", True, True),
        ("file:/tmp/d", "file:///tmp/d/a.txt", True, True),
        ("file://localhost/tmp/d/", "file:///tmp/d/a.txt", True, True),
        ("file:///tmp/./d", "file:///tmp/d", False, True),
        ("file:///tmp/my dir", "file:///tmp/my%20directory/a", True, False),
        ("file:///", "file:///etc/x", True, True),
        ("file://otherhost/tmp/d", "file:///tmp/d/a", True, False),  # another machine's: as text
        ("content://media/a b", "content://media/a%20b/1", True, False),  # not a file: as text
    ],
)
def test_uri_matching_by_path_segment(pattern: str, changed: str, desc: bool, match: bool) -> None:
    assert uri_matches(pattern, changed, desc) is match


def test_mergers() -> None:
    outs = [{"a": 1, "b": [1]}, None, {"a": 2, "b": 2}]
    assert merge(InputMerger.OVERWRITE, outs) == {"a": 2, "b": 2}
    assert merge(InputMerger.ARRAY, outs) == {"a": [1, 2], "b": [1, 2]}
    with pytest.raises(InvalidParameters, match="'a'"):
        merge(InputMerger.ARRAY, [{"a": 1}, {"a": "x"}])


def test_a_field_given_positionally_and_by_name_or_alias_is_refused() -> None:
    from kmpray import TaskRequest

    assert TaskRequest("W", id="a").worker_class_name == "W"
    for kw in ({"worker_class_name": "X"}, {"workerClassName": "X"}):
        with pytest.raises(TypeError, match="got 'worker_class_name' twice"):
            TaskRequest("W", **kw)


def test_do_work_is_called_as_declared_by_its_class_or_by_the_instance() -> None:
    """run_worker inspects a worker class once (async? takes ctx?); a do_work set on the
    instance is inspected itself: a sync one over an async class's is not awaited."""
    import asyncio

    from kmpray import CommonWorker, WorkerContext
    from kmpray.results import Success
    from kmpray.worker import run_worker

    class AsyncWithCtx(CommonWorker):
        async def do_work(self, input: str | None, ctx: WorkerContext) -> object:  # noqa: A002
            return Success(f"{ctx.task_id}:{input}")

    class SyncPlain(CommonWorker):
        def do_work(self, input: str | None) -> object:  # noqa: A002
            return Success(f"sync:{input}")

    class SyncOnTheInstance(AsyncWithCtx):
        def __init__(self) -> None:
            self.do_work = lambda inp, ctx: Success(f"instance:{inp}")  # type: ignore[method-assign]

    def run(worker: CommonWorker) -> object:
        return asyncio.run(run_worker(worker, "in", WorkerContext("t", 0)))

    for _ in range(2):  # the second time from the per-class cache
        assert [getattr(run(w()), "message", None) for w in (AsyncWithCtx, SyncPlain, SyncOnTheInstance)] == [
            "t:in", "sync:in", "instance:in"]


def test_long_messages_are_clipped_where_results_are_made() -> None:
    """A worker's message, Retry reason and progress message (and, in the executor, an
    exception's text: test_engine) are stored and sent with every TaskInfo and event:
    clipped to MAX_MESSAGE_CHARS, saying how much went."""
    import asyncio

    from kmpray import CommonWorker, WorkerContext
    from kmpray.results import MAX_MESSAGE_CHARS, Retry, Success, clip
    from kmpray.worker import run_worker

    long = "x" * (MAX_MESSAGE_CHARS + 10)
    assert clip("short") == "short" and clip(long) == "x" * MAX_MESSAGE_CHARS + "... (10 more characters)"

    class Says(CommonWorker):
        def do_work(self, input: str | None) -> object:  # noqa: A002
            if input == "retry":
                return Retry(long)
            return Success(long, data={"kept": long})  # data is capped by size elsewhere, not clipped

    said = [asyncio.run(run_worker(Says(), kind, WorkerContext("t", 0))) for kind in ("ok", "retry")]
    assert said[0].message.endswith("(10 more characters)") and said[0].data == {"kept": long}
    assert said[1].reason.endswith("(10 more characters)") and len(said[1].reason) < MAX_MESSAGE_CHARS + 40
    sent: list[tuple[int, str | None]] = []
    WorkerContext("t", 0, progress_sink=lambda pct, msg: sent.append((pct, msg))).report_progress(5, long)
    assert sent == [(5, clip(long))]


def test_a_cancel_or_generator_exit_raised_by_worker_code_fails_the_attempt() -> None:
    """asyncio.CancelledError raised by the worker itself (a library cancelling what it
    awaited) was taken for the engine's cancel, and GeneratorExit passed `except
    Exception`: either way the run went unreported and its task stayed RUNNING for good.
    A real cancel of the run (or its timeout, which cancels it) still ends it."""
    import asyncio

    from kmpray import CommonWorker, WorkerContext
    from kmpray.results import Failure
    from kmpray.worker import run_worker

    class Raises(CommonWorker):
        async def do_work(self, input: str | None) -> object:  # noqa: A002
            if input == "cancelled":
                raise asyncio.CancelledError
            if input == "generator-exit":
                raise GeneratorExit("closed")
            await asyncio.sleep(30)
            return True

    class SyncRaises(CommonWorker):
        def do_work(self, input: str | None) -> object:  # noqa: A002
            raise asyncio.CancelledError("in a thread")

    def run(worker: CommonWorker, inp: str) -> object:
        return asyncio.run(run_worker(worker, inp, WorkerContext("t", 0)))

    failed = [run(Raises(), "cancelled"), run(Raises(), "generator-exit"), run(SyncRaises(), "x")]
    assert [(type(f), f.message, f.should_retry) for f in failed] == [  # type: ignore[attr-defined]
        (Failure, "CancelledError: raised in do_work; the task was not cancelled", True),
        (Failure, "GeneratorExit: closed", True),
        (Failure, "CancelledError: in a thread", True),
    ]

    async def cancelled_from_outside() -> str:
        run_ = asyncio.ensure_future(run_worker(Raises(), "sleeps", WorkerContext("t", 0)))
        await asyncio.sleep(0.01)
        run_.cancel()
        try:
            await run_
        except asyncio.CancelledError:
            return "cancelled"
        return "finished"

    async def timed_out() -> str:
        try:
            await asyncio.wait_for(run_worker(Raises(), "sleeps", WorkerContext("t", 0)), 0.01)
        except TimeoutError:
            return "timed out"
        return "finished"

    assert asyncio.run(cancelled_from_outside()) == "cancelled"
    assert asyncio.run(timed_out()) == "timed out"


def test_a_result_the_worker_builds_wrong_fails_in_one_line_naming_the_field() -> None:
    """``Retry(delay_ms=-5)`` in do_work raised pydantic's several lines with a URL, all of
    it the task's failure message (the executor's ``raised``): now one line naming the
    model and the field."""
    from pydantic import ValidationError

    from kmpray.results import Failure, Retry, Success, raised

    said = []
    builds = [lambda: Retry("later", delay_ms=-5),
              lambda: Success(data={1: "a"}),  # type: ignore[dict-item]
              lambda: Failure(message=None)]  # type: ignore[arg-type]
    for build in builds:
        with pytest.raises(ValidationError) as exc:
            build()
        said.append(raised(exc.value))
    assert [(f.message, f.should_retry) for f in said] == [
        ("ValidationError: Retry.delay_ms: Input should be greater than or equal to 0 (was -5)", True),
        ("ValidationError: Success.data.1.[key]: Input should be a valid string (was 1)", True),
        ("ValidationError: Failure.message: Input should be a valid string (was None)", True),
    ]
