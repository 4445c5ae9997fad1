"""Actors call their own methods without Ray's tracing shim (actors/untraced.py), and
remote calls, which Ray dispatches through the wrapped methods it took at load, still work."""

from __future__ import annotations

from typing import Any

import pytest
import ray
from kmpray.actors.names import BROKER, EXECUTOR, SCHEDULER, shard_namespace
from kmpray.actors.untraced import untrace
from ray.util.tracing.tracing_helper import _inject_tracing_into_class

import kmpray

pytestmark = pytest.mark.ray


class _Base:
    def inherited(self) -> int:
        return 1


class _Plain(_Base):
    def own(self, x: int) -> int:
        return x + 1

    async def later(self) -> str:
        return "later"


def _shimmed(cls: type) -> list[str]:
    return sorted(n for n, m in vars(cls).items() if getattr(m, "__ray_tracing_wrapped__", False))


def test_untrace_puts_the_written_methods_back_and_leaves_an_unwrapped_class_alone() -> None:
    made = type("Made", (_Plain,), {})  # what ray.remote's _modify_class does: a subclass
    _inject_tracing_into_class(made)
    assert {"inherited", "own", "later"} <= set(_shimmed(made))  # inherited ones too
    untrace(made())
    assert _shimmed(made) == []
    assert made.own is _Plain.own and made.inherited is _Base.inherited and made.later is _Plain.later
    before = dict(vars(_Plain))
    untrace(_Plain())
    assert dict(vars(_Plain)) == before


def test_live_actors_run_untraced_and_still_answer_remote_calls(sengine: Any) -> None:
    ns = shard_namespace(sengine.namespace, 0)
    for name in (SCHEDULER, BROKER, EXECUTOR.format(0)):
        actor = ray.get_actor(name, namespace=ns)
        shimmed = ray.get(actor.__ray_call__.remote(lambda self: _shimmed(type(self))), timeout=30)
        assert shimmed == [], name
    # Remote calls go through what Ray took at load; the engine serves as before.
    result = sengine.enqueue("untraced", kmpray.TaskTrigger.OneTime(), "Echo", input='{"v": 7}')
    assert result is kmpray.ScheduleResult.SUCCESS
    info = sengine.wait("untraced", timeout_s=30)
    assert info.state is kmpray.TaskState.SUCCEEDED
    assert info.result.data == {"input": '{"v": 7}', "attempt": 0}
