"""Bad input at scale: hypothesis throws malformed requests at a live engine's public API."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kmpray import ScheduleResult, TaskRequest, TaskState, TaskTrigger

pytestmark = [pytest.mark.ray, pytest.mark.slow]

junk = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                 st.text(max_size=30), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
ids = st.one_of(st.text(max_size=300), junk)
triggers = st.one_of(
    st.just(TaskTrigger.OneTime()),
    st.dictionaries(st.sampled_from(["kind", "initial_delay_ms", "interval_ms", "flex_ms", "at_epoch_millis",
                                     "start_epoch_millis", "end_epoch_millis", "uri_string", "bogus"]), junk, max_size=4),
    st.fixed_dictionaries({"kind": st.sampled_from(["one_time", "periodic", "exact", "windowed", "content_uri",
                                                     "battery_low", "nope"])}),
    junk,
)
constraints = st.one_of(st.none(), st.dictionaries(st.sampled_from(
    ["max_retries", "backoff_delay_ms", "qos", "network_type", "timeout_ms", "existing_work_policy", "expedited",
     "requiresNetwork", "unknown_field"]), junk, max_size=4), junk)


def _scheduler_pid(sched: Any) -> int:
    import ray

    actor = ray.get_actor("kmpray.scheduler", namespace=sched.namespace)
    return int(ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30))


def test_malformed_requests_are_rejected_and_valid_work_completes(vengine: Any) -> None:
    pid = _scheduler_pid(vengine)
    outcomes: dict[str, int] = {}

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(tid=ids, trigger=triggers, worker=st.one_of(st.sampled_from(["Echo", "Nope", ""]), junk),
           inp=st.one_of(st.none(), st.text(max_size=50), junk), c=constraints)
    def throw(tid: Any, trigger: Any, worker: Any, inp: Any, c: Any) -> None:
        try:
            result = vengine.enqueue(tid, trigger, worker, input=inp, constraints=c)
        except (ValidationError, TypeError, ValueError) as exc:  # a model refused a field, naming it
            assert str(exc)
            outcomes["exception"] = outcomes.get("exception", 0) + 1
            return
        assert result in (ScheduleResult.SUCCESS, ScheduleResult.REJECTED_INVALID_PARAMS,
                          ScheduleResult.REJECTED_OS_POLICY), result
        if result is not ScheduleResult.SUCCESS:
            assert vengine.last_reason  # the reason is always there for the user
        outcomes[result.value] = outcomes.get(result.value, 0) + 1

    throw()

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(steps=st.lists(st.lists(st.sampled_from(["Echo", "Nope", "SyncBool"]), max_size=3), max_size=4),
           chain_id=ids)
    def chains(steps: list[list[str]], chain_id: Any) -> None:
        try:
            chain = vengine.begin_with([TaskRequest(w) for w in steps[0]] if steps else [])
            for step in steps[1:]:
                chain = chain.then([TaskRequest(w) for w in step])
            result = chain.with_id(chain_id).enqueue()
        except (ValidationError, TypeError, ValueError):
            return
        valid = steps and all(steps) and all(w != "Nope" for s in steps for w in s)
        if not valid:
            assert result is ScheduleResult.REJECTED_INVALID_PARAMS and vengine.last_reason

    chains()
    assert _scheduler_pid(vengine) == pid  # no actor crashed
    good = [f"valid-{i}" for i in range(20)]
    assert vengine.enqueue_many([TaskRequest("Echo", id=g) for g in good]) == [ScheduleResult.SUCCESS] * 20
    assert all(vengine.wait(g, timeout_s=60).state is TaskState.SUCCEEDED for g in good)
    assert outcomes.get("REJECTED_INVALID_PARAMS", 0) > 10  # the fuzz really did reach the engine
