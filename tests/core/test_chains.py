"""Chains: per-step barriers, promotion, data passing, cascades, policies, durability."""

from __future__ import annotations

import json

from kmpray import ExistingPolicy, ScheduleResult, TaskRequest, TaskState
from kmpray.chain import TaskChain
from kmpray.chain_record import chain_state
from kmpray.results import Retry, Success

from .conftest import Harness, task

KEEP, REPLACE = ExistingPolicy.KEEP, ExistingPolicy.REPLACE
S = TaskState


def chain_of(h: Harness, cid: str, steps: list[list[dict[str, object]]], policy: ExistingPolicy = REPLACE) -> ScheduleResult:
    return h.core.submit_chain(cid, policy, steps).result


def states(h: Harness, cid: str) -> list[list[str]]:
    info = h.core.chain_info(cid)
    assert info is not None
    return [[t.state.value for t in step] for step in info.steps]


def test_later_steps_wait_blocked_until_every_prerequisite_succeeded(h: Harness) -> None:
    h.workers["Data"] = lambda d: Success(data={"from": d.key})
    assert chain_of(h, "c", [[task("Data", "a")], [task("Data", "b1"), task("Data", "b2")], [task("Data", "z")]]) \
        is ScheduleResult.SUCCESS
    assert states(h, "c") == [["ENQUEUED"], ["BLOCKED", "BLOCKED"], ["BLOCKED"]]
    assert [d.key for d in h.step()] == ["a"]
    assert states(h, "c") == [["SUCCEEDED"], ["ENQUEUED", "ENQUEUED"], ["BLOCKED"]]
    h.core.tick()
    b1, b2 = h.core.take_ready(10)
    h.core.complete(b1.key, b1.run_id, Success(data={"from": "b1"}))
    assert states(h, "c")[2] == ["BLOCKED"]  # b2 still running
    h.core.complete(b2.key, b2.run_id, Success(data={"from": "b2"}))
    [z] = h.step()
    assert z.upstream == {"from": "b2"} and json.loads(z.input or "") == {"from": "b2"}
    assert h.core.chain_info("c").state is S.SUCCEEDED  # type: ignore[union-attr]


def test_own_input_wins_and_array_merger_collects(h: Harness) -> None:
    h.workers["Data"] = lambda d: Success(data={"v": d.key})
    steps = [
        [task("Data", "a"), task("Data", "b")],
        [task("Data", "own", input="mine"), task("Data", "arr", merger="ARRAY")],
    ]
    chain_of(h, "c", steps)
    h.step()
    runs = {d.key: d for d in h.step()}
    assert runs["own"].input == "mine" and runs["own"].upstream == {"v": "b"}
    assert runs["arr"].upstream == {"v": ["a", "b"]}


def test_array_merger_type_mismatch_fails_the_step_clearly(h: Harness) -> None:
    outs = iter([Success(data={"v": 1}), Success(data={"v": "x"})])
    h.workers["Mixed"] = lambda d: next(outs)
    chain_of(h, "c", [[task("Mixed", "a"), task("Mixed", "b")], [task("Ok", "m", merger="ARRAY")]])
    h.step()
    h.step()
    rec = h.core.tasks["m"]
    assert rec.state is S.FAILED and "different types" in rec.result.message  # type: ignore[union-attr]


def test_a_failed_step_fails_every_dependent_which_never_runs(h: Harness) -> None:
    chain_of(h, "c", [[task("Ok", "a")], [task("Fail", "b"), task("Ok", "sib")], [task("Ok", "c1")], [task("Ok", "c2")]])
    h.step()
    h.step()
    assert states(h, "c") == [["SUCCEEDED"], ["FAILED", "SUCCEEDED"], ["FAILED"], ["FAILED"]]
    assert h.core.tasks["c2"].run_attempt_count == 0
    assert h.core.chain_info("c").state is S.FAILED  # type: ignore[union-attr]
    assert [d.key for d in h.runs] == ["a", "b", "sib"]


def test_a_retrying_step_keeps_dependents_blocked(h: Harness) -> None:
    outs = iter([Retry("again", delay_ms=100), Success()])
    h.workers["Twice"] = lambda d: next(outs)
    chain_of(h, "c", [[task("Twice", "a")], [task("Ok", "b")]])
    h.step()
    assert states(h, "c") == [["ENQUEUED"], ["BLOCKED"]]
    h.advance(100)
    assert states(h, "c") == [["SUCCEEDED"], ["SUCCEEDED"]]


def test_cancel_chain_cancels_every_unfinished_task(h: Harness) -> None:
    chain_of(h, "c", [[task("Ok", "a")], [task("Ok", "b")], [task("Ok", "z")]])
    h.step()
    assert h.core.cancel("c") == 2
    assert states(h, "c") == [["SUCCEEDED"], ["CANCELLED"], ["CANCELLED"]]
    assert h.core.chain_info("c").state is S.CANCELLED  # type: ignore[union-attr]


def test_cancelling_one_step_cancels_its_dependents_only(h: Harness) -> None:
    chain_of(h, "c", [[task("Ok", "a"), task("Ok", "b")], [task("Ok", "z")]])
    h.core.cancel("a")
    h.step()
    assert states(h, "c") == [["CANCELLED", "SUCCEEDED"], ["CANCELLED"]]


def test_keep_ignores_a_rerun_while_unfinished_and_replace_starts_over(h: Harness) -> None:
    steps = lambda: [[task("Ok", "a")], [task("Ok", "b")]]  # noqa: E731
    for _ in range(5):  # clicking "run" five times
        assert chain_of(h, "c", steps(), KEEP) is ScheduleResult.SUCCESS
    h.step()
    h.step()
    assert [d.key for d in h.runs] == ["a", "b"]
    h.core.submit_chain("d", REPLACE, [[task("Ok", "x")], [task("Ok", "y")]])
    h.core.tick()
    [x] = h.core.take_ready(1)
    h.core.submit_chain("d", REPLACE, [[task("Ok", "x")], [task("Ok", "y")]])
    assert h.drain().cancel_runs == [("x", x.run_id)]
    assert h.core.complete("x", x.run_id, Success()) is False
    h.step()
    h.step()
    assert states(h, "d") == [["SUCCEEDED"], ["SUCCEEDED"]]


def test_reused_auto_ids_get_fresh_ones_and_explicit_duplicates_are_rejected(h: Harness) -> None:
    assert chain_of(h, "c1", [[task("Ok", "shared", explicit=False)]]) is ScheduleResult.SUCCESS
    assert chain_of(h, "c2", [[task("Ok", "shared", explicit=False)]]) is ScheduleResult.SUCCESS
    assert h.core.chains["c2"].steps[0][0] != "shared"
    dup = h.core.submit_chain("c3", REPLACE, [[task("Ok", "x")], [task("Ok", "x")]])
    assert dup.result is ScheduleResult.REJECTED_INVALID_PARAMS and "used twice" in (dup.reason or "")


def test_bad_chains_are_rejected_whole_with_nothing_stored(h: Harness) -> None:
    bad = {
        "empty": [],
        "empty-step": [[task("Ok", "a")], []],
        "unknown-worker": [[task("Ok", "a")], [task("Nope", "b")]],
    }
    for cid, steps in bad.items():
        out = h.core.submit_chain(cid, REPLACE, steps)
        assert out.result is ScheduleResult.REJECTED_INVALID_PARAMS and out.reason, cid
    assert h.core.tasks == {} and h.core.chains == {}
    fx = h.drain()
    assert not fx.persist and not fx.chains


def test_a_chain_with_a_bad_input_merger_is_rejected_whole_before_anything_is_stored(h: Harness) -> None:
    """The merger was read while the chain's rows were being inserted: a payload naming an
    unknown one (a client other than kmpray's, or a raw actor call) was answered
    REJECTED_INVALID_PARAMS with its first step inserted and run, and a plan sent that made
    the chain's coordinator raise at that step's success (found reading the intake, session 47)."""
    steps = [[task("Ok", "a")], [{**task("Ok", "b"), "input_merger": "BOGUS"}]]
    out = h.core.submit_chain("c", REPLACE, steps)
    assert out.result is ScheduleResult.REJECTED_INVALID_PARAMS
    assert out.reason == "step 2 task 'b': input_merger: 'BOGUS' is not one of OVERWRITE, ARRAY"
    assert h.core.tasks == {} and h.core.chains == {} and h.core.pending == 0
    fx = h.drain()
    assert not fx.persist and not fx.chains and not fx.chain_msgs
    assert h.step() == []


def test_builder_is_immutable_and_reports_bad_steps() -> None:
    base = TaskChain.begin(None, TaskRequest("A"))
    longer = base.then([TaskRequest("B"), TaskRequest("C")])
    assert len(base.steps) == 1 and len(longer.steps) == 2 and longer.id == base.id
    named = longer.with_id("sync", ExistingPolicy.KEEP)
    assert (named.id, named.policy, longer.id) == ("sync", KEEP, base.id)
    assert base.then([]).error is not None and "at least one" in (base.then([]).error or "")
    assert TaskChain.begin(None, []).error is not None


def test_chain_state_rules() -> None:
    assert chain_state([S.SUCCEEDED, S.RUNNING, S.BLOCKED]) is S.RUNNING
    assert chain_state([S.SUCCEEDED, S.FAILED, S.RUNNING]) is S.RUNNING
    assert chain_state([S.SUCCEEDED, S.FAILED, S.FAILED]) is S.FAILED
    assert chain_state([S.CANCELLED, S.FAILED]) is S.CANCELLED
    assert chain_state([S.SUCCEEDED] * 3) is S.SUCCEEDED


def test_half_run_chain_resumes_after_restart_without_rerunning_succeeded_steps(h: Harness) -> None:
    h.workers["Data"] = lambda d: Success(data={"k": d.key})
    chain_of(h, "c", [[task("Data", "a"), task("Data", "b")], [task("Data", "mid")], [task("Data", "z")]])
    h.core.tick()
    a, b = h.core.take_ready(2)
    h.core.complete(a.key, a.run_id, Success(data={"k": "a"}))  # b is in flight at the "kill"
    h.restart()
    assert states(h, "c") == [["SUCCEEDED", "ENQUEUED"], ["BLOCKED"], ["BLOCKED"]]
    h.runs.clear()
    h.step()
    [mid] = h.step()
    assert mid.upstream == {"k": "b"}
    h.step()
    assert [d.key for d in h.runs] == ["b", "mid", "z"]  # "a" never ran again
    assert h.core.chain_info("c").state is S.SUCCEEDED  # type: ignore[union-attr]


def test_a_coordinator_restart_losing_messages_resumes_at_the_interrupted_step(h: Harness) -> None:
    h.workers["Data"] = lambda d: Success(data={"k": d.key})
    chain_of(h, "c", [[task("Data", "a"), task("Data", "b")], [task("Data", "mid")], [task("Data", "z")]])
    h.flush()
    h.coordinator_up = False  # the coordinator is down: the step messages pile up, then are lost
    h.step()
    assert states(h, "c") == [["SUCCEEDED", "SUCCEEDED"], ["BLOCKED"], ["BLOCKED"]]
    h.coordinator_up = True
    h.restart_coordinator(lose_messages=True)  # rebuilt from the scheduler's task rows
    assert states(h, "c") == [["SUCCEEDED", "SUCCEEDED"], ["ENQUEUED"], ["BLOCKED"]]
    [mid] = h.step()
    assert mid.upstream == {"k": "b"}  # both outputs passed on (OVERWRITE: the later wins)
    h.step()
    assert [d.key for d in h.runs] == ["a", "b", "mid", "z"]  # nothing ran twice


def test_coordinator_ignores_stale_generations_and_duplicate_messages() -> None:
    from kmpray.chain_coordination import ChainCoordinatorCore
    from kmpray.protocol import Cascade, Plan, Promote, Step

    c = ChainCoordinatorCore()
    c.apply([Plan("c", "g1", [["a"], ["b"]], {})])
    c.apply([Plan("c", "g2", [["a"], ["b"]], {})])  # replaced
    assert c.apply([Step("c", "g1", 0, "a", "SUCCEEDED", {"x": 1})]) == []
    first = c.apply([Step("c", "g2", 0, "a", "SUCCEEDED", {"x": 2})])
    assert first == [Promote("c", "g2", 1, {"b": {"x": 2}}, {})]
    assert c.apply([Step("c", "g2", 0, "a", "SUCCEEDED", {"x": 2})]) == []  # a duplicate
    # A resync re-sends what it implies; the scheduler applies it only to BLOCKED tasks.
    snap = {"c": {"gen": "g2", "steps": [["a"], ["b"]], "mergers": {},
                  "tasks": {"a": ("SUCCEEDED", {"x": 2}), "b": ("ENQUEUED", None)}}}
    assert c.resync(snap) == first
    failed = ChainCoordinatorCore()
    failed.apply([Plan("f", "g", [["a", "b"], ["c"], ["d"]], {"c": "ARRAY"})])
    out = failed.apply([Step("f", "g", 0, "a", "FAILED", None), Step("f", "g", 0, "b", "SUCCEEDED", {})])
    assert out == [Cascade("f", "g", 1, "FAILED", "prerequisite 'a' failed")]
    assert failed.plans == {}  # nothing left to coordinate
    # A resync drops plans older than its request that the scheduler no longer lists
    # (finished unseen), never one that arrived while the snapshot was on its way.
    gc = ChainCoordinatorCore()
    gc.apply([Plan("old", "g", [["a"]], {})])
    asked = gc.mark()
    gc.apply([Plan("new", "g", [["b"]], {})])
    assert gc.resync({}, asked) == [] and set(gc.plans) == {"new"}


def test_the_periodic_check_asks_only_about_quiet_plans_and_drops_only_among_them() -> None:
    """A chain whose messages keep coming is not in question; a plan quiet for a whole
    round is asked about by id, dropped if the scheduler no longer lists it (finished
    unseen), and its promotion re-sent if it is still unfinished."""
    from kmpray.chain_coordination import ChainCoordinatorCore
    from kmpray.protocol import Plan, Promote, Step

    c = ChainCoordinatorCore()
    c.apply([Plan("gone", "g", [["a"], ["b"]], {}), Plan("stuck", "g", [["c"], ["d"]], {}),
             Plan("busy", "g", [["e"], ["f"], ["h"]], {})])
    since = c.mark()  # a round begins
    promoted = c.apply([Step("busy", "g", 0, "e", "SUCCEEDED", {"e": 1})])
    assert promoted == [Promote("busy", "g", 1, {"f": {"e": 1}}, {})]
    assert sorted(c.quiet_since(since)) == ["gone", "stuck"]
    asked_at = c.mark()
    stuck = {"gen": "g", "steps": [["c"], ["d"]], "mergers": {},
             "tasks": {"c": ("SUCCEEDED", {"c": 1}), "d": ("BLOCKED", None)}}
    # "gone" finished where the coordinator could not see it; "stuck" lost its promotion.
    again = c.resync({"stuck": stuck}, asked_at, ["gone", "stuck"])
    assert again == [Promote("stuck", "g", 1, {"d": {"c": 1}}, {})]
    assert set(c.plans) == {"stuck", "busy"}  # "busy" was not asked about: kept as it is
    # "stuck" was heard of by the check itself: asked again only once a round passes quiet
    assert c.quiet_since(asked_at) == ["busy"]
    # A plan made while the check was on its way is never dropped by it.
    c2 = ChainCoordinatorCore()
    c2.apply([Plan("x", "g", [["a"]], {})])
    since = c2.mark()
    asked_at = c2.mark()
    c2.apply([Plan("x", "g2", [["a2"]], {})])  # replaced meanwhile: a new plan
    assert c2.resync({}, asked_at, ["x"]) == [] and set(c2.plans) == {"x"}


def test_a_snapshot_by_id_covers_only_those_chains_and_only_unfinished_ones(h: Harness) -> None:
    for cid in ("c1", "c2", "c3"):
        chain_of(h, cid, [[task("Ok", f"{cid}a")], [task("Ok", f"{cid}b")]])
    h.core.cancel("c3b")
    h.core.cancel("c3a")
    full = h.core.chain_snapshot(0, 1)
    assert set(full) == {"c1", "c2"}
    picked = h.core.chain_snapshot(0, 1, ["c2", "c3", "nope"])
    assert picked == {"c2": full["c2"]}
    assert picked["c2"]["tasks"] == {"c2a": ["ENQUEUED", None], "c2b": ["BLOCKED", None]}


def test_chain_messages_and_snapshots_travel_as_what_ray_packs_in_c(h: Harness) -> None:
    """Ray packs a call's plain lists, dicts and scalars with msgpack in C, and every tuple
    through a Python hook and a pickle of its own (strict types): 20,000 Steps as
    NamedTuples cost the scheduler's loop 95 ms a batch, as lists 4 ms. So what goes to and
    from the coordinators (and a snapshot) must pack with no hook, and come back equal."""
    import msgpack

    from kmpray.protocol import Cascade, Plan, Promote, Step, chain_from_wire, chain_to_wire

    def packs_plain(value: object) -> object:  # Ray's packer, without its hook
        return msgpack.unpackb(msgpack.packb(value, strict_types=True, use_bin_type=True), raw=False)

    h.workers["Data"] = lambda d: Success(data={"x": [1, 2], "b": b"\x00", "m": {"k": None}})
    chain_of(h, "c1", [[task("Data", "a"), task("Data", "b")], [task("Ok", "c")]])
    assert sorted(d.key for d in h.step()) == ["a", "b"]
    out = {"x": [1, 2], "b": b"\x00", "m": {"k": None}}
    msgs = [Plan("c1", "g", [["a", "b"], ["c"]], {"c": "ARRAY"}), Step("c1", "g", 0, "a", "SUCCEEDED", out),
            Promote("c1", "g", 1, {"c": {"x": [[1, 2], [1, 2]]}}, {}), Cascade("c1", "g", 1, "FAILED", "why")]
    assert chain_from_wire(packs_plain(chain_to_wire(msgs))) == msgs
    snapshot = h.core.chain_snapshot(0, 1)
    assert snapshot["c1"]["tasks"]["a"] == ["SUCCEEDED", out]  # with its data
    assert packs_plain(snapshot) == snapshot


def test_a_resync_after_a_fan_in_promotes_with_every_predecessors_output() -> None:
    """A resync clears what was promoted and replays the snapshot: the promotion it sends
    again must merge all three outputs, as the first did (it merged only the first one
    replayed, and a fan-in successor ran with one array when that promotion came first)."""
    from kmpray.chain_coordination import ChainCoordinatorCore
    from kmpray.protocol import Plan, Step

    steps, mergers = [["p0", "p1", "p2"], ["sum"]], {"sum": "ARRAY"}
    c = ChainCoordinatorCore()
    c.apply([Plan("fan", "g", steps, mergers)])
    first = c.apply([Step("fan", "g", 0, k, "SUCCEEDED", {"v": i}) for i, k in enumerate(steps[0])])
    assert [a.upstream for a in first] == [{"sum": {"v": [0, 1, 2]}}]
    asked = c.mark()
    done = {k: ("SUCCEEDED", {"v": i}) for i, k in enumerate(steps[0])} | {"sum": ("BLOCKED", None)}
    again = c.resync({"fan": {"gen": "g", "steps": steps, "mergers": mergers, "tasks": done}}, asked)
    assert again == first


def test_thousand_step_chain_and_five_thousand_wide_step(h: Harness) -> None:
    chain_of(h, "long", [[task("Ok", f"s{i}")] for i in range(1000)])
    for _ in range(1000):
        h.step()
    assert h.core.chain_info("long").state is S.SUCCEEDED  # type: ignore[union-attr]
    chain_of(h, "wide", [[task("Ok", "w0")], [task("Ok", f"p{i}") for i in range(5000)], [task("Ok", "join")]])
    h.step()
    assert len(h.step()) == 5000
    [join] = h.step()
    assert join.key == "join" and h.core.chain_info("wide").state is S.SUCCEEDED  # type: ignore[union-attr]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=5),
    outcomes=st.lists(st.sampled_from(["Ok", "Fail", "Flaky"]), min_size=20, max_size=20),
    cancel_at=st.none() | st.integers(0, 6),
    restart_at=st.none() | st.integers(0, 6),
    coordinator_restart_at=st.none() | st.integers(0, 6),
)
def test_chain_counters_always_match_the_task_states(  # type: ignore[no-untyped-def]
    shape, outcomes, cancel_at, restart_at, coordinator_restart_at
) -> None:
    h = Harness()
    picks = iter(outcomes)
    steps = [[task(next(picks), f"t{n}.{i}", max_retries=1, backoff_delay_ms=10) for i in range(w)]
             for n, w in enumerate(shape)]
    h.core.submit_chain("c", REPLACE, steps)
    for tick in range(8):
        if tick == cancel_at:
            h.core.cancel("t0.0")
        if tick == restart_at:
            h.restart()
        if tick == coordinator_restart_at:
            h.restart_coordinator()
        h.advance(10)
        chain = h.core.chains["c"]
        recs = [h.core.tasks[k] for s in chain.steps for k in s]
        assert chain.unfinished == sum(not r.state.is_finished for r in recs)
        succeeded = [sum(h.core.tasks[k].state is S.SUCCEEDED for k in s) for s in chain.steps]
        for n, s in enumerate(chain.steps[1:], 1):  # nothing runs before its whole previous step succeeded
            if any(h.core.tasks[k].run_attempt_count for k in s):
                assert succeeded[n - 1] == len(chain.steps[n - 1])
    assert h.core.is_settled("c") == all(r.state.is_finished for r in recs)
    for _ in range(20):  # liveness: whatever restarted, the chain always finishes
        h.advance(100)
    assert h.core.is_settled("c") and all(h.core.tasks[k].state.is_finished for s in chain.steps for k in s)


def test_a_refused_chain_says_why_without_an_exception_class_in_front() -> None:
    """A chain the client could not build (``then([])``) was refused with "InvalidParameters:
    then (step 2): …", unlike every other rejection ("step 1 task id: …"); a payload of the
    wrong shape still names its error's type."""
    from kmpray import intake

    h = Harness()
    built = TaskChain.begin(None, TaskRequest("Ok")).then([])
    out = intake.submit_chain(h.core, built.payload())
    assert out.result is ScheduleResult.REJECTED_INVALID_PARAMS
    assert out.reason == "then (step 2): a parallel step needs at least one TaskRequest"
    wrong = intake.submit_chain(h.core, {"id": "c", "steps": 5})
    assert wrong.result is ScheduleResult.REJECTED_INVALID_PARAMS and wrong.reason.startswith("TypeError: ")


def test_a_gated_first_step_waits_at_its_gate_from_admission_and_later_work_runs_first(h: Harness) -> None:
    """A first step no node satisfies goes straight to the gated set: it was queued as ready,
    due since the intake, and the dispatch turns set it aside 2,000 a turn while every timer
    due after it waited (~0.75 s for 49,500 tasks, session 47). Opening the gate runs it."""
    from kmpray import Constraints, TaskTrigger
    from kmpray.device import DeviceState

    h.core.set_devices({"n": DeviceState(charging=False)})
    gated = [{**task("Ok", f"g{i}"), "constraints": Constraints(requires_charging=True)} for i in range(5)]
    assert h.core.submit_chain("c", REPLACE, [gated, [task("Ok", "after")]]).result is ScheduleResult.SUCCESS
    assert h.core.gated_count() == 5 and h.core.ready_count() == 0
    h.core.submit("timer", TaskTrigger.Exact(h.clock.now_ms()), "Ok")
    assert [d.key for d in h.step()] == ["timer"]
    assert "waits for a device state change" in h.core.explain("g0")
    h.core.set_devices({"n": DeviceState(charging=True)})
    assert sorted(d.key for d in h.step()) == [f"g{i}" for i in range(5)]
    assert [d.key for d in h.step()] == ["after"]


def test_a_chain_info_reaches_clients_pickled_and_an_unfinished_round_sends_none(h: Harness) -> None:
    """As a ``model_dump`` a ChainInfo held the scheduler's loop ~60 ms per 5,000 tasks and
    its client validated every TaskInfo again: ``wait()`` of a finished 5,000-task chain
    took 230-350 ms here, pickled 57-84 ms. An unfinished round of ``wait_chain`` sends no
    info at all (the client only asks again). A dict, from an engine of an earlier
    version, still reads."""
    import pickle

    import pytest

    from kmpray.client.waiting import Waiting
    from kmpray.protocol import UNFINISHED, chain_answer, chain_from_answer

    chain_of(h, "c1", [[task("Ok", "a")], [task("Ok", "b")]])
    running = h.core.chain_info("c1")
    assert running is not None and not running.state.is_finished
    raw = chain_answer(running)
    assert isinstance(raw, bytes) and chain_from_answer(raw) == running
    assert chain_from_answer(running.model_dump()) == running
    assert chain_from_answer(None) is None and chain_answer(None) is None
    assert Waiting._done("c1", None, UNFINISHED) is None
    assert Waiting._done("c1", None, raw) is None  # not finished: wait again
    assert [d.key for d in h.step()] == ["a"] and [d.key for d in h.step()] == ["b"]
    done = h.core.chain_info("c1")
    assert done is not None and done.state is S.SUCCEEDED
    assert Waiting._done("c1", None, chain_answer(done)) == done
    with pytest.raises(TypeError, match="not a ChainInfo"):
        chain_from_answer(pickle.dumps({"steps": []}))
