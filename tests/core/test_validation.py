"""Bad input becomes REJECTED_INVALID_PARAMS / REJECTED_OS_POLICY with a reason; nothing is stored."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmpray import EngineConfig, ScheduleResult, TaskTrigger

from .conftest import Harness


def test_id_rules() -> None:
    h = Harness(config=EngineConfig(max_id_length=10))
    cases = {"": "non-empty", "   ": "non-empty", "x" * 11: "limit of 10", "a#b": "'#'", "a\nb": "control"}
    for bad, why in cases.items():
        out = h.core.submit(bad, TaskTrigger.OneTime(), "Ok")
        assert out.result is ScheduleResult.REJECTED_INVALID_PARAMS, bad
        assert why in (out.reason or ""), (bad, out.reason)
    assert h.core.tasks == {} and h.drain().persist == {}


def test_input_cap() -> None:
    h = Harness(config=EngineConfig(max_input_bytes=8))
    assert h.core.submit("ok", TaskTrigger.OneTime(), "Ok", input="12345678").result is ScheduleResult.SUCCESS
    out = h.core.submit("big", TaskTrigger.OneTime(), "Ok", input="123456789")
    assert out.result is ScheduleResult.REJECTED_INVALID_PARAMS and "9 bytes" in (out.reason or "")


def test_admission_control_rejects_by_os_policy() -> None:
    h = Harness(config=EngineConfig(max_pending_tasks=2))
    for i in range(2):
        h.core.submit(f"t{i}", TaskTrigger.OneTime(initial_delay_ms=10), "Ok")
    out = h.core.submit("t3", TaskTrigger.OneTime(), "Ok")
    assert out.result is ScheduleResult.REJECTED_OS_POLICY and "admission" in (out.reason or "")
    h.advance(10)
    assert h.core.submit("t3", TaskTrigger.OneTime(), "Ok").result is ScheduleResult.SUCCESS


def test_ios_profile_rejects_unsupported_triggers() -> None:
    h = Harness("ios")
    for trig in (TaskTrigger.ContentUri("content://x"), TaskTrigger.StorageLow, TaskTrigger.DeviceIdle):
        assert h.core.submit("t", trig, "Ok").result is ScheduleResult.REJECTED_OS_POLICY
    assert h.core.submit("t", TaskTrigger.BatteryLow, "Ok").result is ScheduleResult.SUCCESS


def test_malformed_content_uri_is_rejected(h: Harness) -> None:
    out = h.core.submit("c", TaskTrigger.ContentUri("no scheme here"), "Ok")
    assert out.result is ScheduleResult.REJECTED_INVALID_PARAMS and "uri_string" in (out.reason or "")


@settings(max_examples=200)
@given(
    task_id=st.text(max_size=300),
    worker=st.text(max_size=20),
    inp=st.none() | st.text(max_size=40),
)
def test_any_submission_is_accepted_or_rejected_with_a_reason(task_id: str, worker: str, inp: str | None) -> None:
    h = Harness()
    out = h.core.submit(task_id, TaskTrigger.OneTime(), worker, input=inp)
    if out.result is ScheduleResult.SUCCESS:
        assert (h.core.latest(task_id) is not None and worker == "Ok") or worker in h.workers
    else:
        assert out.result is ScheduleResult.REJECTED_INVALID_PARAMS and out.reason
        assert h.core.tasks == {}


def test_output_must_be_msgpack_able_and_capped() -> None:
    from kmpray.errors import InvalidParameters
    from kmpray.validation import check_output

    config = EngineConfig(max_output_bytes=64)
    check_output({"n": 2**63}, config)
    for bad, why in (({"n": 2**70}, "msgpack"), ({"o": object()}, "msgpack"), ({"s": "x" * 100}, "cap")):
        try:
            check_output(bad, config)
        except InvalidParameters as exc:
            assert why in str(exc) and "Success.data" in str(exc)
        else:
            raise AssertionError(f"{bad!r} accepted")


def test_lone_surrogate_input_is_rejected(h: Harness) -> None:
    out = h.core.submit("s", TaskTrigger.OneTime(), "Ok", input="bad \ud800")
    assert out.result is ScheduleResult.REJECTED_INVALID_PARAMS and "UTF-8" in (out.reason or "")


def test_engine_timeouts_are_checked_naming_the_field() -> None:
    import pydantic
    import pytest

    assert EngineConfig().ping_timeout_s == 10.0 and EngineConfig(ping_timeout_s=2.5).ping_timeout_s == 2.5
    for bad in (0, -1, 601):
        with pytest.raises(pydantic.ValidationError, match="ping_timeout_s"):
            EngineConfig(ping_timeout_s=bad)


def test_a_worker_class_that_could_never_run_is_refused_when_registered() -> None:
    """``do_work`` must exist and take ``(input)`` or ``(input, ctx)``: anything else is
    refused by ``@kmpray.worker`` / ``register_worker``, naming the class, not failed at
    its first run."""
    import re

    import pytest

    import kmpray
    from kmpray.errors import InvalidParameters
    from kmpray.worker import check_worker_class

    class Missing(kmpray.CommonWorker):
        pass

    class Three(kmpray.CommonWorker):
        def do_work(self, input, ctx, extra):  # type: ignore[no-untyped-def]  # noqa: A002
            return True

    class Nothing(kmpray.CommonWorker):
        def do_work(self):  # type: ignore[no-untyped-def,override]
            return True

    class KeywordCtx(kmpray.CommonWorker):
        def do_work(self, input, *, ctx):  # type: ignore[no-untyped-def]  # noqa: A002
            return True

    class StarredKeyword(kmpray.CommonWorker):  # before session 42: passed (any *args did)
        def do_work(self, input, *args, ctx):  # type: ignore[no-untyped-def]  # noqa: A002
            return True

    class StarredThree(kmpray.CommonWorker):  # before session 42: passed
        def do_work(self, a, b, c, *rest):  # type: ignore[no-untyped-def]
            return True

    shape = ".do_work must take (input) or (input, ctx); it takes "
    for cls, words in ((Missing, "Missing does not implement do_work"),
                       (KeywordCtx, f"KeywordCtx{shape}(input, *, ctx)"),  # the * shown
                       (StarredKeyword, f"StarredKeyword{shape}(input, *args, ctx)"),
                       (StarredThree, f"StarredThree{shape}(a, b, c, *rest)"),
                       (Three, f"Three{shape}(input, ctx, extra)"),
                       (Nothing, f"Nothing{shape}(nothing)")):
        with pytest.raises(InvalidParameters, match=re.escape(words)):
            check_worker_class("W", cls)

    class One(kmpray.CommonWorker):
        async def do_work(self, input):  # type: ignore[no-untyped-def]  # noqa: A002
            return True

    class Two(kmpray.CommonWorker):
        def do_work(self, input, ctx, extra=None):  # type: ignore[no-untyped-def]  # noqa: A002
            return True

    class Loose(kmpray.CommonWorker):
        def do_work(self, *args, **kw):  # type: ignore[no-untyped-def]
            return True

    class Static(kmpray.CommonWorker):
        @staticmethod
        def do_work(input):  # type: ignore[no-untyped-def]  # noqa: A002
            return True

    class Duck:  # not a CommonWorker: accepted as long as it has a do_work of the right shape
        def do_work(self, input):  # type: ignore[no-untyped-def]  # noqa: A002
            return True

    for ok in (One, Two, Loose, Static, Duck):
        check_worker_class("W", ok)


def test_a_malformed_trigger_or_constraints_payload_is_rejected_in_one_line_naming_the_field() -> None:
    """What arrives over the wire (kmpray/intake.py): pydantic's multi-line complaint with
    its URL became the reason as it was; now one line that names the field."""
    from kmpray import intake

    h = Harness()
    task = {"id": "t", "worker": "Ok", "trigger": {"kind": "one_time"}}
    cases = [
        ({"trigger": "now"}, "trigger: must be a TaskTrigger (e.g. TaskTrigger.OneTime()), got str 'now'"),
        ({"trigger": {"kind": "periodic", "interval_ms": -1}},
         "trigger.periodic.interval_ms: Input should be greater than 0"),
        ({"trigger": {"kind": "cron"}}, "trigger: Input tag 'cron' found using 'kind' does not match"),
        ({"constraints": {"network_type": "X"}}, "constraints.network_type: Input should be 'NOT_REQUIRED'"),
        ({"constraints": {"bogus": 1, "network_type": "X"}}, "constraints.network_type: Input should be"),
        ({"constraints": "abc"}, "constraints: must be a Constraints, got str 'abc'"),
    ]
    for change, reason in cases:
        out = intake.submit(h.core, {**task, **change})
        assert out.result is ScheduleResult.REJECTED_INVALID_PARAMS
        assert (out.reason or "").startswith(reason) and "\n" not in (out.reason or ""), out.reason
    assert "(and 1 more)" in (intake.submit(h.core, {**task, **cases[4][0]}).reason or "")
    out = intake.submit_chain(h.core, {"id": "c", "steps": [[{**task, "constraints": {"network_type": "X"}}]]})
    assert out.result is ScheduleResult.REJECTED_INVALID_PARAMS
    assert "step task 't': constraints.network_type: Input should be" in (out.reason or "")
    assert intake.submit(h.core, task).result is ScheduleResult.SUCCESS and h.core.tasks.keys() == {"t"}


def test_a_worker_whose_module_the_executor_cannot_import_says_how_to_get_it_there() -> None:
    """A class is shipped by value, the modules it uses by name: one only the driver has
    failed the run with a bare "No module named 'helperlib'". The reason now says what to do
    (found by a tour, session 42). Unit-tested on the failure a run reports."""
    import asyncio

    from kmpray.worker import NotConstructed, WorkerContext, run_worker

    class NeedsHelper:
        def __init__(self) -> None:
            import helperlib_only_on_the_driver  # type: ignore[import-not-found]  # noqa: F401

        async def do_work(self, input: str | None) -> bool:  # noqa: A002
            return True

    try:
        asyncio.run(run_worker(NeedsHelper, None, WorkerContext("t", 0)))
    except NotConstructed as exc:
        said = str(exc)
    else:
        raise AssertionError("constructed")
    name = "helperlib_only_on_the_driver"
    ship = "ray.init(runtime_env={'py_modules': [...]})"
    assert said == (f"ModuleNotFoundError: No module named '{name}' (not importable where the worker runs: "
                    f"install '{name}' on every node, or ship it with {ship})")
    assert str(NotConstructed(ValueError("bad"))) == "ValueError: bad"  # other causes as before


def test_a_bursts_repeated_constraints_are_validated_once_and_bad_ones_never_cached() -> None:
    """Constraints payloads are cached as trigger payloads are (a gated burst's intake was
    half pydantic): one validation per distinct payload, the frozen model shared; a payload
    pydantic refuses is refused every time, never cached as anything."""
    from kmpray import intake

    h = Harness()
    gated = {"requires_charging": True, "max_retries": 2}
    for i in range(3):
        task = {"id": f"g{i}", "worker": "Ok", "trigger": {"kind": "one_time"}, "constraints": dict(gated)}
        assert intake.submit(h.core, task).result is ScheduleResult.SUCCESS
    made = [h.core.latest(f"g{i}").constraints for i in range(3)]  # type: ignore[union-attr]
    assert made[0] is made[1] is made[2] and made[0].requires_charging and made[0].max_retries == 2
    bad = {"id": "b", "worker": "Ok", "trigger": {"kind": "one_time"}, "constraints": {"max_retries": -1}}
    for _ in range(2):
        out = intake.submit(h.core, dict(bad))
        assert out.result is ScheduleResult.REJECTED_INVALID_PARAMS and "max_retries" in (out.reason or "")
    # equal as keys, alike to pydantic: 1 and True are one payload
    one = {"id": "o", "worker": "Ok", "trigger": {"kind": "one_time"},
           "constraints": {"requires_charging": 1}}
    assert intake.submit(h.core, one).result is ScheduleResult.SUCCESS
    assert h.core.latest("o").constraints.requires_charging is True  # type: ignore[union-attr]


def test_a_huge_rejected_value_is_echoed_cut_not_whole() -> None:
    """A 100,000-character worker name came back whole in the reason (and in the
    scheduler's log and its list of rejections)."""
    from kmpray.clock import ManualClock
    from kmpray.engine import SchedulerCore
    from kmpray.platforms import profile
    from kmpray.validation import shown

    core = SchedulerCore(ManualClock(0), profile("cluster"), is_registered=lambda name: name == "Ok")
    out = core.submit("w", TaskTrigger.OneTime(), "W" * 100_000)
    assert out.result is ScheduleResult.REJECTED_INVALID_PARAMS
    assert out.reason is not None and len(out.reason) < 200
    assert out.reason.startswith("worker_class_name: 'WWW")
    assert "… (100,000 characters) is not a registered" in out.reason
    assert shown("short") == "'short'"
    assert shown("x" * 81) == "'" + "x" * 79 + "… (81 characters)"


@pytest.mark.parametrize("thing", [5, None, 3.5, ["Echo"]])
def test_register_worker_of_something_that_is_not_a_class_names_it(thing: object) -> None:
    """``register_worker(5)`` raised AttributeError ('int' object has no attribute
    '__name__') instead of InvalidParameters (found touring, session 46). Refused before any
    message: a facade that was never connected is enough."""
    from kmpray.client.facade import BackgroundTaskScheduler
    from kmpray.errors import InvalidParameters

    facade = BackgroundTaskScheduler.__new__(BackgroundTaskScheduler)
    with pytest.raises(InvalidParameters, match=re.escape("is not a class with a do_work method")):
        facade.register_worker(thing)  # type: ignore[arg-type]
