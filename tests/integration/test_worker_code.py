"""What worker code may do wrong, or do unusually, on a real Ray: a class that cannot be
built, loaded or pickled, ``sys.exit``, huge exception texts, data that cannot be stored;
worker classes registered many at once, decorated after ``connect``, and ``connect``
called inside worker code."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from kmpray.actors import bootstrap

import kmpray
from kmpray import (
    Constraints,
    ScheduleResult,
    TaskState,
    TaskTrigger,
)

from . import workers
from .helpers import ONE_SHARD, until_task

pytestmark = pytest.mark.ray
ONCE = TaskTrigger.OneTime()


def test_worker_that_cannot_be_constructed_fails_at_once(svengine: Any) -> None:
    svengine.enqueue("b", ONCE, "BrokenInit")
    info = svengine.wait("b", timeout_s=30)
    assert info.state is TaskState.FAILED and info.run_attempt_count == 1
    assert "could not be constructed" in info.result.message and "no config" in info.result.message


def test_a_class_that_does_not_load_on_the_executor_fails_at_once(svengine: Any) -> None:
    """Its code uses a module only the driver has (a notebook's helper module): unpickling
    it on the executor raises ModuleNotFoundError. A failed attempt, not retried; never a
    run left unreported (RUNNING for good)."""
    import importlib.machinery
    import sys
    import types

    helper = types.ModuleType("kmpray_driver_only_helper")
    helper.__file__ = "/nonexistent/kmpray_driver_only_helper.py"
    helper.__spec__ = importlib.machinery.ModuleSpec(helper.__name__, None, origin=helper.__file__)
    sys.modules[helper.__name__] = helper  # pickled by reference: imported by name where it loads
    try:
        class UsesDriverModule(kmpray.CommonWorker):
            def do_work(self, input: str | None) -> bool:  # noqa: A002
                return bool(helper)

        svengine.register_worker("UsesDriverModule", UsesDriverModule)
    finally:
        del sys.modules[helper.__name__]
    svengine.enqueue("driver-only", ONCE, "UsesDriverModule", constraints=Constraints(max_retries=3))
    info = svengine.wait("driver-only", timeout_s=30)
    assert info.state is TaskState.FAILED and info.run_attempt_count == 1, info
    assert info.result.message == (
        "worker 'UsesDriverModule' could not be constructed: ModuleNotFoundError: No module named "
        "'kmpray_driver_only_helper' (not importable where the worker runs: install "
        "'kmpray_driver_only_helper' on every node, or ship it with ray.init(runtime_env={'py_modules': "
        "[...]}))")  # the hint: session 42


def test_sys_exit_in_a_worker_is_a_failed_attempt_not_a_stuck_task(svengine: Any) -> None:
    """sys.exit() passes `except Exception`, and asyncio hands SystemExit to the event loop:
    the run went unreported and its task stayed RUNNING for good (so did a CancelledError
    the worker raised itself, taken for the engine's cancel, and GeneratorExit)."""
    once = Constraints(max_retries=0)
    svengine.enqueue("x-sync", ONCE, "Exits", input="sync:3", constraints=once)
    svengine.enqueue("x-async", ONCE, "Exits", input="async:4", constraints=once)
    # a timeout wraps the run in its own asyncio task (wait_for): the path where the
    # loop itself would have been handed the SystemExit
    timed = Constraints(max_retries=0, timeout_ms=30_000)
    svengine.enqueue("x-timed", ONCE, "Exits", input="async:5", constraints=timed)
    svengine.enqueue("x-init", ONCE, "ExitsInInit")
    retried_once = Constraints(max_retries=1, backoff_delay_ms=10_000)
    svengine.enqueue("x-retried", ONCE, "Exits", input="sync:6", constraints=retried_once)
    for id_, code in [("x-sync", "3"), ("x-async", "4"), ("x-timed", "5")]:
        info = svengine.wait(id_, timeout_s=30)
        assert info.state is TaskState.FAILED and info.result.message.endswith(f"SystemExit: {code}"), info
    init = svengine.wait("x-init", timeout_s=30)
    assert init.state is TaskState.FAILED and "could not be constructed: SystemExit: no config" in init.result.message
    for kind, said in [("cancelled", "CancelledError: raised in"), ("generator-exit", "GeneratorExit")]:
        svengine.enqueue(f"x-{kind}", ONCE, "Exits", input=kind, constraints=once)  # the worker's own
        info = svengine.wait(f"x-{kind}", timeout_s=30)
        assert info.state is TaskState.FAILED and said in info.result.message, info
    svengine.enqueue("x-cancels-init", ONCE, "CancelsInInit")
    cancels = svengine.wait("x-cancels-init", timeout_s=30)
    assert cancels.state is TaskState.FAILED and "constructed: CancelledError" in cancels.result.message
    until_task(svengine, "x-retried", lambda t: t.run_attempt_count == 1 and t.state is TaskState.ENQUEUED,
               what="a retry scheduled")
    svengine.advance_time(20_000)  # retried like any exception, then given up
    retried = svengine.wait("x-retried", timeout_s=30)
    assert retried.state is TaskState.FAILED and retried.run_attempt_count == 2
    assert svengine.enqueue("after", ONCE, "Echo") is ScheduleResult.SUCCESS  # the executors live on
    assert svengine.wait("after", timeout_s=30).state is TaskState.SUCCEEDED


def test_a_huge_exception_text_is_clipped_in_the_result(svengine: Any) -> None:
    from kmpray.results import MAX_MESSAGE_CHARS

    svengine.enqueue("loud", ONCE, "Raises", input="y" * 50_000, constraints=Constraints(max_retries=0))
    message = svengine.wait("loud", timeout_s=30).result.message
    assert message.startswith("gave up after 1 attempt: RuntimeError: kaboom yyy")
    assert message.endswith(f"... ({50_000 + len('RuntimeError: kaboom ') - MAX_MESSAGE_CHARS} more characters)")


def test_deeply_nested_data_fails_its_step_instead_of_killing_the_scheduler(svengine: Any) -> None:
    """Ray serialises an async actor's return value on a small fiber stack: answering a
    wait() with a result nested 600 deep crashed the scheduler (SIGSEGV), again at each
    restart as the client asked again."""
    svengine.enqueue("nest-ok", ONCE, "Nests", input="100")  # the limit itself
    svengine.enqueue("nest-deep", ONCE, "Nests", input="600")
    ok = svengine.wait("nest-ok", timeout_s=30)
    assert ok.state is TaskState.SUCCEEDED and "n" in ok.result.data
    deep = svengine.wait("nest-deep", timeout_s=30)
    assert deep.state is TaskState.FAILED and deep.run_attempt_count == 1
    assert deep.result.message == (
        "Success.data: dicts and lists nested deeper than 100 levels (the engine's messages cannot carry more)")
    nested: dict[str, Any] = {}
    inner = nested
    for _ in range(600):
        inner["n"] = {}
        inner = inner["n"]
    with pytest.raises(kmpray.InvalidParameters, match="output_data: dicts and lists nested deeper"):
        svengine.events.emit(kmpray.TaskCompletionEvent("Nests", True, output_data=nested))
    svengine.enqueue("nest-emit", ONCE, "Nests", input="emit:600", constraints=Constraints(max_retries=0))
    emitted = svengine.wait("nest-emit", timeout_s=30)  # from worker code: the executor's bus refuses it too
    assert emitted.state is TaskState.FAILED
    assert "InvalidParameters: output_data: dicts and lists nested deeper than 100" in emitted.result.message
    assert svengine.status()["counts"]["FAILED"] >= 1  # the scheduler answers as ever


def test_output_that_cannot_be_stored_fails_clearly(svengine: Any) -> None:
    svengine.enqueue("h", ONCE, "HugeOutput")
    info = svengine.wait("h", timeout_s=30)
    assert info.state is TaskState.FAILED and "not msgpack-serializable" in info.result.message


@ONE_SHARD  # it calls shard 0's scheduler and its classes in the registry
def test_worker_classes_register_many_at_once_with_growing_versions(sengine: Any) -> None:
    """connect() registers the built-in workers in one message per shard: each new class a
    new version, an unchanged one keeps its own, and the registry has them all."""
    import ray

    from kmpray.client.remote import ship_class

    from .workers import Echo, Noop

    actor = ray.get_actor("kmpray.scheduler", namespace=sengine.namespace)
    batch = [("BatchA", ship_class(Echo)), ("BatchB", ship_class(Noop)), ("BatchA", ship_class(Echo))]
    first, second, again = ray.get(actor.register_workers.remote(batch), timeout=30)
    assert second == first + 1 and again == first
    assert ray.get(actor.register_workers.remote([("BatchB", ship_class(Noop))]), timeout=30) == [second]
    registry = ray.get_actor("kmpray.oracle", namespace=sengine.namespace)  # holds the registry
    held = ray.get(registry.dump_classes.remote(sengine.namespace), timeout=30)
    assert (held["BatchA"][0], held["BatchB"][0]) == (first, second)
    assert {"BatchA", "BatchB", "HttpRequestWorker"} <= set(sengine.status()["workers"])
    assert sengine.enqueue("ba", TaskTrigger.OneTime(), "BatchB") is ScheduleResult.SUCCESS
    assert sengine.wait("ba", timeout_s=30).state is TaskState.SUCCEEDED


def test_a_worker_decorated_after_connect_runs_at_once(sengine: Any) -> None:
    """A notebook's order: connect in one cell, define a worker in the next. The decorator
    registers it with the connected engine then and there (client/live.py)."""
    from kmpray.worker import LOCAL_WORKERS

    assert "DecoratedLate" not in sengine.status()["workers"]
    try:
        @kmpray.worker("DecoratedLate")
        class DecoratedLate(kmpray.CommonWorker):
            def do_work(self, input: str | None) -> kmpray.WorkerResult:  # noqa: A002
                return kmpray.WorkerResult.Success(data={"late": input})

        answer = sengine.enqueue("late", TaskTrigger.OneTime(), "DecoratedLate", input="x")
        assert answer is ScheduleResult.SUCCESS
        assert sengine.wait("late", timeout_s=30).result.data == {"late": "x"}
    finally:
        LOCAL_WORKERS.pop("DecoratedLate", None)


_LOCK = threading.Lock()  # what a notebook's module-level lock, connection or client is to pickle


def test_a_worker_class_that_cannot_be_pickled_is_refused_alone_with_the_way_out(
        sengine: Any, caplog: Any) -> None:
    """connect() registers every class declared before it: one that cannot be pickled (its
    code refers to a module-level lock) failed the whole connect() with a bare TypeError."""
    from kmpray.worker import LOCAL_WORKERS

    class UsesLock(kmpray.CommonWorker):
        def do_work(self, input: str | None) -> bool:  # noqa: A002
            with _LOCK:
                return True

    said = (r"^worker class .*UsesLock cannot be sent to the engine's processes "
            r"\(cannot pickle '_thread.lock' object\): .* create that object in __init__")
    with pytest.raises(kmpray.InvalidParameters, match=said):
        sengine.register_worker("UsesLock", UsesLock)
    LOCAL_WORKERS.update(UsesLock=UsesLock, PicklesFine=workers.Echo)
    try:
        with caplog.at_level(logging.WARNING, logger="kmpray"):
            again = kmpray.connect(namespace=sengine.namespace, state_dir=sengine.status()["state_dir"])
        warned = [r.message for r in caplog.records if r.message.startswith("@kmpray.worker('UsesLock')")]
        assert warned and warned[0].startswith("@kmpray.worker('UsesLock'): not registered: worker class")
        assert "PicklesFine" in again.status()["workers"] and "UsesLock" not in again.status()["workers"]
    finally:
        LOCAL_WORKERS.pop("UsesLock", None)
        LOCAL_WORKERS.pop("PicklesFine", None)


def test_connect_in_worker_code_is_the_engine_running_it(svengine: Any) -> None:
    """A task that enqueues tasks: kmpray.connect() in do_work connected to the default
    namespace's engine, starting one if none ran (the child went there, refused: its
    worker was not registered there), not to the engine running the worker."""
    assert svengine.namespace != "kmpray"
    engines_before = bootstrap.running_engines()
    svengine.enqueue("parent", ONCE, "EnqueuesChild", input="hi")
    parent = svengine.wait("parent", timeout_s=30)
    assert parent.result.data == {"enqueued": "SUCCESS", "namespace": svengine.namespace, "cached": True}
    child = svengine.wait("parent-child", timeout_s=30)
    assert child.state is TaskState.SUCCEEDED and child.worker_class_name == "Echo"
    assert bootstrap.running_engines() == engines_before  # none started under the default namespace
