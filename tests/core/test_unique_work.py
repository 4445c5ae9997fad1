"""Unique work: Android's ExistingWorkPolicy table, exactly."""

from __future__ import annotations

import pytest

from kmpray import Constraints, ExistingWorkPolicy, ScheduleResult, TaskState, TaskTrigger
from kmpray.policies import Action, decide

from .conftest import Harness

KEEP, REPLACE, APPEND, AOR = (
    ExistingWorkPolicy.KEEP,
    ExistingWorkPolicy.REPLACE,
    ExistingWorkPolicy.APPEND,
    ExistingWorkPolicy.APPEND_OR_REPLACE,
)
S = TaskState


@pytest.mark.parametrize(
    ("policy", "existing", "action"),
    [
        (KEEP, [], Action.INSERT),
        (KEEP, [S.ENQUEUED], Action.IGNORE),
        (KEEP, [S.RUNNING], Action.IGNORE),
        (KEEP, [S.SUCCEEDED], Action.REPLACE),
        (KEEP, [S.FAILED], Action.REPLACE),
        (REPLACE, [S.RUNNING], Action.REPLACE),
        (REPLACE, [S.SUCCEEDED], Action.REPLACE),
        (APPEND, [S.RUNNING], Action.APPEND),
        (APPEND, [S.FAILED], Action.APPEND),
        (APPEND, [S.SUCCEEDED], Action.APPEND),
        (AOR, [S.RUNNING], Action.APPEND),
        (AOR, [S.SUCCEEDED, S.FAILED], Action.REPLACE),
        (AOR, [S.CANCELLED], Action.REPLACE),
    ],
)
def test_policy_table(policy: ExistingWorkPolicy, existing: list[TaskState], action: Action) -> None:
    assert decide(policy, existing) is action


def _c(policy: ExistingWorkPolicy) -> Constraints:
    return Constraints(existing_work_policy=policy)


def test_keep_ignores_a_second_enqueue_while_unfinished(h: Harness) -> None:
    h.core.submit("u", TaskTrigger.OneTime(initial_delay_ms=100), "Ok", input="first")
    out = h.core.submit("u", TaskTrigger.OneTime(), "Ok", input="second", constraints=_c(KEEP))
    assert out.result is ScheduleResult.SUCCESS and "kept" in (out.reason or "")
    h.advance(100)
    assert [d.input for d in h.runs] == ["first"]


def test_two_enqueues_of_one_id_never_both_run(h: Harness) -> None:
    for policy in (KEEP, REPLACE):
        h.core.submit("race", TaskTrigger.OneTime(), "Ok", input="a", constraints=_c(policy))
        h.core.submit("race", TaskTrigger.OneTime(), "Ok", input="b", constraints=_c(policy))
        h.step()
        assert len([d for d in h.runs if d.name == "race"]) == 1
        h.runs.clear()
        h.core.cancel("race")


def test_replace_cancels_the_running_one_and_runs_the_new(h: Harness) -> None:
    h.core.submit("u", TaskTrigger.OneTime(), "Ok", input="old")
    h.core.tick()
    [old] = h.core.take_ready(1)
    h.core.submit("u", TaskTrigger.OneTime(), "Ok", input="new", constraints=_c(REPLACE))
    fx = h.drain()
    assert fx.cancel_runs == [("u", old.run_id)]
    assert "u" in fx.persist  # the new row under the same key
    assert h.core.complete("u", old.run_id, h.workers["Ok"](old)) is False
    [new] = h.step()
    assert new.input == "new" and h.state("u") == "SUCCEEDED"
    assert (new.key, new.run_id) != (old.key, old.run_id)  # executors tell runs apart by this pair


def test_append_runs_after_the_existing_and_passes_its_data(h: Harness) -> None:
    h.core.submit("u", TaskTrigger.OneTime(initial_delay_ms=100), "Ok")
    assert h.core.submit("u", TaskTrigger.OneTime(), "Ok", constraints=_c(APPEND)).result is ScheduleResult.SUCCESS
    assert h.core.latest("u").key == "u#2"  # type: ignore[union-attr]
    assert h.state("u") == "BLOCKED"
    h.advance(100)
    assert [d.key for d in h.runs] == ["u", "u#2"]
    assert h.runs[1].upstream == {"worker": "Ok"} and h.runs[1].input == '{"worker": "Ok"}'


def test_append_after_failed_work_fails_and_append_or_replace_starts_fresh(h: Harness) -> None:
    h.core.submit("u", TaskTrigger.OneTime(), "Fail")
    h.step()
    h.core.submit("u", TaskTrigger.OneTime(), "Ok", constraints=_c(APPEND))
    assert h.state("u") == "FAILED" and h.core.latest("u").run_attempt_count == 0  # type: ignore[union-attr]
    h.core.submit("u", TaskTrigger.OneTime(), "Ok", constraints=_c(AOR))
    assert h.core.latest("u").key == "u"  # type: ignore[union-attr]
    h.step()
    assert h.state("u") == "SUCCEEDED"


def test_failed_prerequisite_fails_blocked_dependent(h: Harness) -> None:
    h.core.submit("u", TaskTrigger.OneTime(), "Fail")
    h.core.submit("u", TaskTrigger.OneTime(), "Ok", constraints=_c(APPEND))
    h.step()
    dep = h.core.latest("u")
    assert dep is not None and dep.key == "u#2" and dep.state is TaskState.FAILED and dep.run_attempt_count == 0
    assert [d.key for d in h.runs] == ["u"]


def test_cancelling_the_name_cancels_appended_work(h: Harness) -> None:
    h.core.submit("u", TaskTrigger.OneTime(initial_delay_ms=100), "Ok")
    h.core.submit("u", TaskTrigger.OneTime(), "Ok", constraints=_c(APPEND))
    assert h.core.cancel("u") == 2
    assert h.core.tasks["u"].state is h.core.tasks["u#2"].state is TaskState.CANCELLED


def test_append_to_periodic_work_is_rejected(h: Harness) -> None:
    h.core.submit("p", TaskTrigger.Periodic(60_000), "Ok")
    out = h.core.submit("p", TaskTrigger.OneTime(), "Ok", constraints=_c(APPEND))
    assert out.result is ScheduleResult.REJECTED_INVALID_PARAMS and "never finishes" in (out.reason or "")


def test_a_stale_report_of_replaced_appended_work_never_counts_for_work_reusing_its_key() -> None:
    """Found by the simulation (seed 10): REPLACE deletes x#2, a restart forgets the suffix,
    the next APPEND is x#2 again; the old x#2's run, still held by an executor, reports."""
    from kmpray.results import Success

    h = Harness()
    h.core.submit("x", TaskTrigger.OneTime(), "Ok")
    h.core.submit("x", TaskTrigger.OneTime(), "Ok", constraints=Constraints(existing_work_policy="APPEND"))
    h.core.tick()
    (first,) = h.core.take_ready(10)
    h.core.complete(first.key, first.run_id, Success())
    h.flush()
    h.core.tick()
    (stale,) = h.core.take_ready(10)  # the old x#2's run: an executor holds it
    assert stale.key == "x#2"
    h.core.submit("x", TaskTrigger.OneTime(), "Ok", constraints=Constraints(existing_work_policy="REPLACE"))
    h.restart()
    h.core.submit("x", TaskTrigger.OneTime(), "Ok", constraints=Constraints(existing_work_policy="APPEND"))
    assert "x#2" in h.core.tasks  # the key came back
    h.core.tick()
    (root,) = h.core.take_ready(10)
    h.core.complete(root.key, root.run_id, Success())
    h.flush()
    h.core.tick()
    (fresh,) = h.core.take_ready(10)
    assert fresh.key == "x#2" and fresh.run_id > stale.run_id
    assert h.core.complete(stale.key, stale.run_id, Success(data={"old": True})) is False
    assert h.core.tasks["x#2"].state is TaskState.RUNNING
