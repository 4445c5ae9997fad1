"""The executor pool's own logic (actors/executor_pool.py), with stand-in actor handles
(no Ray cluster needed): isolating suspect runs when no probation executor may take them
(a suspect pinned off the scheduler's node runs alone on an ordinary executor there,
emptied for it first), what a blocked loop's report may withdraw, fences across a
scheduler restart, and seeded random fault schedules. The heavy pool's are in
test_heavy_pool.py, work stealing's in test_stealing.py."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from kmpray.actors.blocked_loops import BlockedLoops
from kmpray.actors.executor_pool import PROBATION_LANES, ExecutorPool, ExecutorSlot

from kmpray.config import EngineConfig

from .pool_standins import Core, Handle, StandIn, runs_as_they_are


@pytest.fixture(autouse=True)
def _runs_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    runs_as_they_are(monkeypatch)


def _pool() -> tuple[ExecutorPool, Core, list[tuple[int, list[Any]]]]:
    """Probation lanes on the scheduler's node A; ordinary executors 0 on A, 1 and 2 on B."""
    core, sent = Core(), []
    pool = ExecutorPool("ns", EngineConfig(), core, BlockedLoops(), lambda: None)  # type: ignore[arg-type]
    pool.home = "A"
    for i, node in enumerate(["A", "B", "B"]):
        pool.slots.append(ExecutorSlot(i, Handle(sent, i), node, incarnation=f"p{i}", reachable=True))
    for _ in range(PROBATION_LANES):
        i = len(pool.slots)
        pool.slots.append(ExecutorSlot(i, Handle(sent, i), "A", incarnation=f"p{i}", reachable=True,
                                       probation=True))
        pool.probation.append(i)
    return pool, core, sent


def test_a_suspect_that_may_not_use_the_schedulers_node_runs_alone_on_an_emptied_executor() -> None:
    pool, core, sent = _pool()
    pool.held(1, ("n1", 1))
    pool.held(2, ("n2", 1))
    pool.held(2, ("n3", 1))
    assert pool.isolate(None) == 3  # a probation lane when the node does not matter
    # Pinned to B: no probation lane there; executor 1 (fewest runs) is emptied for it.
    assert pool.isolate(("B",)) is None
    assert 1 in pool.alone and pool.alone[1] is None
    assert 1 not in {i for _room, i in pool.free()}  # it gets no new runs meanwhile
    pool.reported(("n1", 1))
    assert pool.isolate(("B",)) == 1  # empty now: the suspect may go
    pool.send_alone(1, ("poison", 2), "run")  # type: ignore[arg-type]
    assert sent[-1] == (1, ["run"]) and pool.alone[1] == ("poison", 2)
    assert pool.isolate(("B",)) is None  # one suspect alone on an ordinary executor at a time
    released = core.released
    pool.reported(("poison", 2))  # its run ended: the executor takes ordinary runs again
    assert 1 not in pool.alone and core.released == released + 1
    pool.answered(1)  # (once the submit that took it has answered: SUBMITS_IN_FLIGHT)
    assert 1 in {i for _room, i in pool.free()}


def test_the_only_ordinary_executor_taking_runs_is_never_emptied_for_a_suspect() -> None:
    pool, _core, _sent = _pool()
    pool.slots[0].reachable = pool.slots[2].reachable = False  # restarting, say
    assert pool.isolate(("B",)) is None and not pool.alone
    pool.slots[2].reachable = True
    assert pool.isolate(("B",)) == 1  # another one serves again: this one may be used


def test_a_blocked_loop_withdraws_only_what_its_own_process_took() -> None:
    """An executor's first process began a run and died (os._exit in a worker); its next
    process's loop blocks before the reconcile saw the restart. The dead process's run is
    not "given back" (that would not count the death against it: CI saw a poison task
    run 5 times): it stays for the reconcile, which counts it as a crash."""
    pool, core, _sent = _pool()
    pool.held(1, ("poison", 1), "p1")  # taken by the process that died
    pool.held(1, ("queued", 1), "p1-new")  # taken by the process now blocked
    pool.held(1, ("in-flight", 1))  # its submit not answered yet: the fence covers it
    pool.held(1, ("begun", 1), "p1-new")
    withdrawn = pool.withdraw(1, {("begun", 1)}, "p1-new")
    assert sorted(withdrawn) == [("in-flight", 1), ("queued", 1)]
    assert sorted(core.lost) == [("in-flight", 1, False), ("queued", 1, False)]  # not counted as deaths
    assert set(pool.slots[1].inflight) == {("poison", 1), ("begun", 1)}
    pool.slots[1].dead.add("p1-new")  # a report from a process since known dead: nothing
    assert pool.withdraw(1, set(), "p1-new") == []


def test_a_blocked_loop_never_withdraws_a_chain_task_its_executor_handed_on_itself() -> None:
    """One hop per step: a step that succeeded began its successor on its executor (no
    batch: no fence stops it there). The block's report was written before that, so it
    does not list the successor as held, and the scheduler heard of the successor first
    (over the local lane). Withdrawn, it ran on another executor and again here once the
    loop ran (a CI run: a chain's upload step arrived twice); it stays, and runs here."""
    pool, core, _sent = _pool()
    pool.held(0, ("step1", 1), "p0")  # sent in a batch; ended, its result on the way
    pool.held(0, ("queued", 1), "p0")  # sent in a batch, not begun: the fence covers it
    pool.held(0, ("step2", 1), "p0", handed=True)  # step1 handed it on, after the report was written
    withdrawn = pool.withdraw(0, {("step1", 1)}, "p0")
    assert withdrawn == [("queued", 1)] and core.lost == [("queued", 1, False)]
    assert set(pool.slots[0].inflight) == {("step1", 1), ("step2", 1)}
    pool.reported(("step2", 1))  # its result: nothing of it is kept
    assert pool.slots[0].handed == set() and set(pool.slots[0].inflight) == {("step1", 1)}


def test_a_fence_from_a_restarted_scheduler_covers_the_batches_of_the_one_before() -> None:
    """The scheduler restarted (a new epoch) and adopted an executor's queued runs; the
    executor's loop blocks and the new scheduler withdraws them, answering with a fence
    of its own epoch: the old epoch's queued runs must not begin here either (they run
    elsewhere now), while its own later batches and a third scheduler's still may."""
    from kmpray.actors.fencing import Fencing

    f = Fencing()
    f.took(("old", 1), "epoch-1", 7)
    f.took(("new", 1), "epoch-2", 1)
    f.took(("new-later", 1), "epoch-2", 3)
    assert not f.withdrawn(("old", 1))  # no fence yet
    f.fence("epoch-2", 2)
    assert f.withdrawn(("old", 1)) and f.withdrawn(("new", 1))
    assert not f.withdrawn(("new-later", 1))  # sent after the fence
    f.took(("third", 1), "epoch-3", 1)
    assert not f.withdrawn(("third", 1))  # a scheduler after the fence's
    f.forget(("old", 1))
    assert not f.withdrawn(("old", 1))


def test_once_a_restarted_scheduler_asked_what_is_held_batches_of_other_epochs_are_refused() -> None:
    """A submit the dying scheduler sent may arrive after its successor asked what this
    process holds (``holding(epoch)``): taken then, it would run here while the successor,
    not seeing it held, runs it again elsewhere. Refused, however it is ordered."""
    from kmpray.actors.fencing import Fencing

    f = Fencing()  # epochs compare by value: the scheduler's start time comes first
    assert not f.refused("epoch-1")  # nobody asked yet: a fresh engine's batches
    f.took(("early", 1), "epoch-1", 4)  # arrived before the question: held, and adopted
    f.adopted_by("epoch-2")
    assert f.refused("epoch-1") and f.refused("epoch-0")  # "epoch-0": never seen here before
    assert not f.refused("epoch-2")
    assert not f.withdrawn(("early", 1))  # adopted runs still begin here
    f.took(("new", 1), "epoch-2", 1)
    f.fence("epoch-2", 1)  # the adopter's own blocked-loop fence still orders its batches
    assert f.withdrawn(("new", 1)) and f.withdrawn(("early", 1))
    # A third scheduler whose question timed out (this loop was blocked): its batches are
    # taken before its question arrives, and the question changes nothing for them.
    assert not f.refused("epoch-3")
    f.adopted_by("epoch-3")
    f.adopted_by("epoch-2")  # the second's question, arriving very late: ignored
    assert f.refused("epoch-2") and not f.refused("epoch-3")
    # A fourth whose question has not arrived yet: its first batch fences the third.
    f.took(("fourth", 1), "epoch-4", 1)
    assert f.refused("epoch-3") and not f.refused("epoch-4")


def test_an_executor_with_a_submit_in_flight_gets_no_other_until_it_answers() -> None:
    """One submit in flight per executor (SUBMITS_IN_FLIGHT): runs ready meanwhile wait for
    its answer and go together in the next, so batches grow with the load."""
    from kmpray.actors.executor_pool import SUBMITS_IN_FLIGHT

    assert SUBMITS_IN_FLIGHT == 1
    pool, _core, sent = _pool()
    assert [i for _room, i in pool.free()] == [0, 1, 2]
    pool.send(0, [("a", 1)], ["run-a"])
    assert [i for _room, i in pool.free()] == [1, 2]  # its room is not what holds it back
    assert sent == [(0, ["run-a"])]
    pool.answered(0)
    assert [i for _room, i in pool.free()] == [0, 1, 2]
    pool.answered(0)  # a second answer (a failed call's) never makes room below zero
    assert pool.slots[0].submits == 0


def test_an_executor_ending_a_process_no_ping_has_seen_yet_gets_nothing_more() -> None:
    """A process Ray restarted takes runs before this pool's next ping has seen it (its calls
    go through Ray); if it then ends itself (its memory cap), it says so (``exiting``) and
    must be sent nothing more until its successor answers a ping. The chaos run's memory hog
    was handed to such a process 80 ms after its notice: the submit failed, and that failure
    counted as the hog's own fourth death although its run never began (session 32)."""
    pool, core, sent = _pool()
    pool.send(1, [("hog", 1)], ["run-hog"])
    pool.answered(1)
    assert not pool.accepted(1, [("hog", 1)], "p1-restarted")  # the new process took it, unpinged
    assert pool.exiting(1, "p1-restarted")
    assert core.lost == [("hog", 1, True)]  # it died under the run it took
    assert 1 not in [i for _room, i in pool.free()]  # and nothing more goes to it...
    assert pool.isolate(None) != 1 and not pool._usable(pool.slots[1])
    assert not pool.exiting(1, "p1-restarted")  # (said twice: once is enough)


class _Light(StandIn):
    """A light executor: ``pending`` holds (run keys, fence, future); taken runs begin
    later, unless a fence withdrew them first."""

    def __init__(self, name: str, node: str = "A") -> None:
        super().__init__(name, node)
        self.taken: set[Any] = set()  # runs this process took and may still begin
        self.begun: set[Any] = set()  # runs it began, not reported yet
        self.fence = 0  # batches up to this number are withdrawn (never begin here)

    def submitted(self, runs: list[Any], fence: Any, future: Any) -> Any:
        return [tuple(r) for r in runs], fence, future

    def pinged(self) -> tuple[Any, ...]:
        return self.incarnation, len(self.begun), self.node, 0.0, ()

    def restart(self) -> None:
        super().restart()
        self.taken, self.begun, self.fence = set(), set(), 0


def test_light_executors_under_random_restarts_blocks_and_failures_never_lose_a_run_a_live_process_runs() -> None:
    """Seeded random schedules over three light executors with stand-in actors (no Ray):
    batches sent, answered by whichever process is alive, or failed; runs begun and
    reported; processes restarted unseen or ending themselves (memory cap); loops blocked
    (their queued runs withdrawn behind a fence) and answering again; reconciles. The
    scheduler's side is the pool's own code, driven as scheduler_dispatch.py and
    scheduler_reports.py drive it. Invariants: a run is re-queued only when no live
    process will run it (its taker died, its submit failed, or a fence withdrew it), and
    the books agree (``where`` and each slot's runs); after everything settles, every run
    the pool still holds is one the live process of its executor holds."""
    for seed in range(120):
        asyncio.run(_light_schedule(seed))


def test_suspect_runs_under_the_same_faults_always_run_alone() -> None:
    """The same schedules with two probation executors and suspect runs among the rest
    (``isolate``/``send_alone``, as scheduler_dispatch.py sends a run a process died under):
    a probation executor never holds two runs, an executor a suspect runs alone on holds
    nothing else, and no executor being emptied for a suspect is offered ordinary runs."""
    for seed in range(80):
        asyncio.run(_light_schedule(seed, suspects=True))


async def _light_schedule(seed: int, steps: int = 80, suspects: bool = False) -> None:
    from kmpray.actors.submit_lane import LaneLost

    from kmpray.protocol import Misaddressed

    rng = random.Random(seed)
    core = Core()
    pool = ExecutorPool("ns", EngineConfig(executor_window=4), core, BlockedLoops(), lambda: None)  # type: ignore[arg-type]
    procs = [_Light(name, node) for name, node in zip("abc", "ABB" if suspects else "AAA", strict=True)]
    for i, proc in enumerate(procs):
        pool.slots.append(ExecutorSlot(i, proc, proc.node, incarnation=proc.incarnation, reachable=True))
    if suspects:  # probation executors made up front (pool.home stays None: none are started)
        for name in "pq":
            procs.append(_Light(name))
            pool.slots.append(ExecutorSlot(len(procs) - 1, procs[-1], "A", incarnation=procs[-1].incarnation,
                                           reachable=True, probation=True))
            pool.probation.append(len(procs) - 1)
    failed: set[Any] = set()  # runs whose submit failed (the pool re-queues them)
    reported: set[Any] = set()
    sent: list[Any] = []  # every run handed out
    n = 0

    async def confirm(i: int, ref: Any, keys: list[Any]) -> None:  # scheduler_dispatch._confirm
        try:
            incarnation, _done = await ref
        except Exception as exc:
            pool.answered(i)
            pool.slots[i].reachable = False
            pool.lose(i, "did not take its batch", keys, crashed=isinstance(exc, LaneLost))
            await pool.reconcile({})
            return
        pool.answered(i)
        pool.accepted(i, keys, incarnation)
        if incarnation != pool.slots[i].incarnation:
            await pool.reconcile({})

    async def settle() -> None:
        for _ in range(6):
            await asyncio.sleep(0)

    def answer(proc: _Light) -> None:
        keys, fence, future = proc.pending.pop(0)
        if fence.to not in (None, proc.incarnation):  # for a process before this one (executor.py)
            failed.update(keys)
            future.set_exception(Misaddressed(fence.to))
            return
        if fence.batch > proc.fence:  # a fenced batch is refused: nothing of it begins here
            proc.taken.update(keys)
        future.set_result((proc.incarnation, []))

    def check() -> None:
        for key, i in pool.where.items():
            assert key in pool.slots[i].inflight, f"seed {seed}: {key} where {i}, not in its runs"
        for slot in pool.slots:
            for key in slot.inflight:
                assert pool.where.get(key) == slot.index, f"seed {seed}: {key} held twice or not where"
        lost = {(key, run_id) for key, run_id, _crashed in core.lost}
        for proc in procs:
            for key in (proc.taken | proc.begun) & lost:
                assert key in failed, f"seed {seed}: {key} re-queued while {proc.incarnation} runs it"
        for j in pool.probation:
            assert len(pool.slots[j].inflight) <= 1, f"seed {seed}: probation {j} holds {pool.slots[j].inflight}"
        offered = {j for _room, j in pool.free()}
        for j, key in pool.alone.items():
            assert j not in offered, f"seed {seed}: executor {j} offered runs while kept for a suspect"
            if key is not None:
                assert set(pool.slots[j].inflight) <= {key}, f"seed {seed}: {key} not alone on {j}"

    for _step in range(steps):
        # A suspect that may use any node goes to a probation executor (on node A); one that
        # may not use A runs alone on an ordinary executor on B, emptied for it first.
        if suspects and rng.random() < 0.15 and (j := pool.isolate(rng.choice([None, ("B",)]))) is not None:
            key = (f"s{n}", 1)  # a run a process died under: alone
            n += 1
            sent.append(key)
            asyncio.ensure_future(confirm(j, pool.send_alone(j, key, key), [key]))
        op, i = rng.random(), rng.randrange(len(procs) if suspects else 3)
        proc, slot = procs[i], pool.slots[i]
        if op < 0.2 and any(j == i for _room, j in pool.free()):
            keys = [(f"t{n + k}", 1) for k in range(rng.randint(1, 3))]
            n += len(keys)
            sent.extend(keys)
            ref = pool.send(i, keys, keys)
            asyncio.ensure_future(confirm(i, ref, keys))
        elif op < 0.35 and proc.pending:
            answer(proc)
        elif op < 0.4 and proc.pending:
            keys, _seq, future = proc.pending.pop(0)
            failed.update(keys)
            future.set_exception(LaneLost("gone"))
        elif op < 0.5 and proc.taken:
            key = rng.choice(sorted(proc.taken))
            proc.taken.discard(key)
            proc.begun.add(key)
        elif op < 0.6 and proc.begun:
            key = rng.choice(sorted(proc.begun))
            proc.begun.discard(key)
            reported.add(key)
            pool.reported(key)
        elif op < 0.72:  # restarted unseen, or after saying it ends (its memory cap)
            if op >= 0.68:
                pool.exiting(i, proc.incarnation)
            if rng.random() < 0.5:  # batches in flight to the old process fail...
                for keys, _seq, future in proc.pending:
                    failed.update(keys)
                    future.set_exception(LaneLost("died"))
                proc.pending.clear()
            proc.restart()  # ...or were sent after it died: the new process answers them
        elif op < 0.8 and i not in pool.blocked.light:  # scheduler_reports.loop_blocked
            if proc.incarnation not in slot.dead:
                pool.blocked.block("light", i, "W", None, 1.0)
                withdrawn = pool.withdraw(i, set(proc.begun), proc.incarnation)
                proc.fence = slot.batch_seq
                proc.taken -= set(withdrawn)
        else:
            await pool.reconcile({})
        await settle()
        check()
    for proc in procs:  # everything in flight answered by the live process, then reconciled
        while proc.pending:
            answer(proc)
    await settle()
    for _ in range(3):
        await pool.reconcile({})
        await settle()
    check()
    for slot, proc in zip(pool.slots, procs, strict=True):
        for key, took in slot.inflight.items():
            assert took == proc.incarnation and key in proc.taken | proc.begun, (
                f"seed {seed}: {key} held for {took}, the live process is {proc.incarnation}")
    lost = {(key, run_id) for key, run_id, _crashed in core.lost}
    for key in sent:  # none leaves the books unaccounted for
        assert key in reported or key in lost or key in pool.where, f"seed {seed}: {key} dropped"


def test_runs_go_beyond_an_executors_slots_only_when_none_has_a_slot_free() -> None:
    """No Ray: ``free()`` offers only executors with a free slot while any has one (runs
    sent beyond a busy executor's slots waited behind its long runs while another idled),
    and every executor with window room once none has (the window hides the round trip)."""
    core = Core()
    config = EngineConfig(executor_concurrency=2, executor_window=8)
    pool = ExecutorPool("ns", config, core, BlockedLoops(), lambda: None)  # type: ignore[arg-type]
    for i in range(2):
        pool.slots.append(ExecutorSlot(i, Handle([], i), "A", incarnation=f"p{i}", reachable=True))
    pool.slots[0].inflight = {("long", 1): "p0", ("long2", 1): "p0", ("q", 1): "p0"}
    pool.slots[1].inflight = {("s", 1): "p1"}
    assert pool.free() == [(7, 1)]  # executor 0's slots are busy: nothing more queues there
    pool.slots[1].inflight[("s2", 1)] = "p1"
    assert pool.free() == [(5, 0), (6, 1)]  # none has a slot free: both take runs to queue
