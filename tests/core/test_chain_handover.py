"""One hop per step (#15): a sequential stretch handed to the executor with its first run,
taken as begun when the predecessor succeeds, refused when the chain no longer wants it,
and adopted after a crash that came before the turn's write."""

from __future__ import annotations

from kmpray import TaskState
from kmpray.results import Failure, Success

from .conftest import Harness, task
from .test_chains import REPLACE, chain_of, states

S = TaskState


def test_a_sequential_stretch_is_handed_over_with_its_first_run(h: Harness) -> None:
    chain_of(h, "c", [[task("Ok", "a")], [task("Ok", "b")], [task("Ok", "c", input="own")], [task("Ok", "d1"),
                                                                                           task("Ok", "d2")]])
    h.core.tick()
    [a] = h.core.take_ready(10)
    b = a.then
    assert b is not None and (b.key, b.run_id, b.upstream) == ("b", h.core.tasks["b"].run_id + 1, None)
    assert b.then is not None and b.then.key == "c" and b.then.input == "own"
    assert b.then.then is None  # the next step has two tasks: its barrier is the coordinator's


def test_only_successors_nothing_else_could_hold_back_are_handed(h: Harness) -> None:
    cases = {
        "gated": task("Ok", "n", requires_charging=True),
        "heavy": task("Ok", "n", is_heavy_task=True),
    }
    for name, nxt in cases.items():
        chain_of(h, name, [[task("Ok", f"a-{name}")], [{**nxt, "id": f"n-{name}"}]])
    chain_of(h, "wide", [[task("Ok", "w1"), task("Ok", "w2")], [task("Ok", "after")]])
    h.core.tick()
    taken = h.core.take_ready(10)
    assert {d.key for d in taken} == {"a-gated", "a-heavy", "w1", "w2"}
    assert all(d.then is None for d in taken)


def test_follow_takes_the_handed_run_as_dispatched_and_begun(h: Harness) -> None:
    chain_of(h, "c", [[task("Ok", "a")], [task("Ok", "b", merger="ARRAY")], [task("Ok", "c")]])
    h.core.tick()
    [a] = h.core.take_ready(10)
    b = a.then
    assert b is not None
    h.core.complete("a", a.run_id, Success(data={"v": 1}))
    assert h.core.follow("a", a.run_id, "b", b.run_id)
    rec = h.core.tasks["b"]
    assert (rec.state, rec.run_id, rec.started, rec.upstream) == (S.RUNNING, b.run_id, True, {"v": [1]})
    assert rec.run_attempt_count == 1 and h.core.tasks["b"].info().state is S.RUNNING
    h.flush()  # the coordinator's promotion of b comes late: b is not BLOCKED, it is left alone
    assert h.core.tasks["b"].state is S.RUNNING and h.core.take_ready(10) == []
    h.core.complete("b", b.run_id, Success(data={"v": 2}))
    assert b.then is not None and h.core.follow("b", b.run_id, "c", b.then.run_id)
    h.core.complete("c", b.then.run_id, Success())
    h.flush()
    assert states(h, "c") == [["SUCCEEDED"], ["SUCCEEDED"], ["SUCCEEDED"]]
    assert h.core.chain_info("c").state is S.SUCCEEDED  # type: ignore[union-attr]


def test_follow_refuses_a_run_the_chain_no_longer_wants(h: Harness) -> None:
    chain_of(h, "c", [[task("Ok", "a")], [task("Ok", "b")]])
    h.core.tick()
    [a] = h.core.take_ready(10)
    assert a.then is not None
    h.core.complete("a", a.run_id, Failure("no"))
    assert not h.core.follow("a", a.run_id, "b", a.then.run_id)  # a did not succeed
    chain_of(h, "d", [[task("Ok", "x")], [task("Ok", "y")]])
    h.core.tick()
    [x] = h.core.take_ready(10)
    assert x.then is not None
    h.core.complete("x", x.run_id, Success())
    assert not h.core.follow("x", x.run_id, "y", x.then.run_id + 1)  # not the run handed over
    assert not h.core.follow("x", x.run_id + 1, "y", x.then.run_id)  # not x's current run
    assert h.core.cancel("d") == 1  # y, still BLOCKED: cancelled with its chain
    assert not h.core.follow("x", x.run_id, "y", x.then.run_id)
    assert h.core.tasks["y"].state is S.CANCELLED and h.core.tasks["y"].run_attempt_count == 0


def test_a_step_handed_out_in_the_turn_that_promoted_it_is_adopted_after_a_crash_before_the_write() -> None:
    """A scheduler promotes a chain step and hands it out in one turn, and writes both after
    the hand-over: killed in between, the store still holds the step BLOCKED. An executor
    holding its run proves the promotion (nothing hands out a BLOCKED task), so the run is
    adopted, not run again when the coordinators promote the step once more; and the
    promotion that comes then still brings the step its upstream data. (Found by the mixed
    chaos scenario: a join step began again after a scheduler kill.)"""
    h = Harness()
    h.core.submit_chain("ch", REPLACE, [[task("Ok", "a")], [task("Ok", "b")]])
    h.flush()
    h.core.tick()
    [a] = h.core.take_ready(10)
    h.core.complete(a.key, a.run_id, Success(data={"n": 1}))
    h.drain()  # "a" SUCCEEDED is stored; "b" is stored BLOCKED
    msgs, h.chain_msgs = h.chain_msgs, []
    h.core.chain_actions(h.coordinator.apply(msgs))  # the coordinator promotes "b" (in memory)...
    h.core.tick()
    [b] = h.core.take_ready(10)  # ...and the same turn hands it out
    assert b.key == "b"
    h.restart(adopt=lambda core: core.adopt([(b.key, b.run_id)]), flush=False)  # killed before the write
    assert h.state("b") == "RUNNING"  # adopted: no new run of it is handed out
    assert h.core.take_ready(10) == []
    assert h.core.latest("b").upstream == {"n": 1}  # type: ignore[union-attr]  # the promotion's, once more
    assert h.core.complete(b.key, b.run_id, Success())  # the held run's report counts
    assert h.state("b") == "SUCCEEDED"
    assert h.core.latest("b").run_attempt_count == 1  # type: ignore[union-attr]
