"""The executor pool's own logic (actors/executor_pool.py), with stand-in actor handles
(no Ray cluster needed): isolating suspect runs when no probation executor may take them
(a suspect pinned off the scheduler's node runs alone on an ordinary executor there,
emptied for it first), and what a blocked loop's report may withdraw."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import pytest
from kmpray.actors.blocked_loops import BlockedLoops
from kmpray.actors.executor_pool import PROBATION_LANES, ExecutorPool, ExecutorSlot

from kmpray.config import EngineConfig
from tests.standins import Answer as _Answer


@pytest.fixture(autouse=True)
def _runs_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-ins here take keys for runs: Ray's submit gets them as they are, not as
    the lists of a Run's fields (kmpray/protocol.py; tests/core/test_wire.py)."""
    from kmpray.actors import executor_pool, heavy_pool

    def as_they_are(handle: Any, runs: list[Any], fence: Any, acks: Any) -> Any:
        return handle.submit.remote(runs, fence, acks)

    monkeypatch.setattr(executor_pool, "ray_submit", as_they_are)
    monkeypatch.setattr(heavy_pool, "ray_submit", as_they_are)


class _Submit:
    def __init__(self, sent: list[tuple[int, list[Any]]], index: int) -> None:
        self.sent, self.index = sent, index

    def remote(self, runs: list[Any], fence: Any, acks: Any = None) -> str:
        self.sent.append((self.index, runs))
        return f"ref-{len(self.sent)}"


class _Handle:
    def __init__(self, sent: list[tuple[int, list[Any]]], index: int) -> None:
        self.submit = _Submit(sent, index)


class _Core:
    def __init__(self) -> None:
        self.released = 0
        self.lost: list[tuple[str, int, bool]] = []

    def release_unplaced(self) -> None:
        self.released += 1

    def run_lost(self, key: str, run_id: int, crashed: bool = False, cause: str | None = None) -> None:
        self.lost.append((key, run_id, crashed))


def _pool() -> tuple[ExecutorPool, _Core, list[tuple[int, list[Any]]]]:
    """Probation lanes on the scheduler's node A; ordinary executors 0 on A, 1 and 2 on B."""
    core, sent = _Core(), []
    pool = ExecutorPool("ns", EngineConfig(), core, BlockedLoops(), lambda: None)  # type: ignore[arg-type]
    pool.home = "A"
    for i, node in enumerate(["A", "B", "B"]):
        pool.slots.append(ExecutorSlot(i, _Handle(sent, i), node, incarnation=f"p{i}", reachable=True))
    for _ in range(PROBATION_LANES):
        i = len(pool.slots)
        pool.slots.append(ExecutorSlot(i, _Handle(sent, i), "A", incarnation=f"p{i}", reachable=True,
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


def _heavy_pool(size: int) -> tuple[Any, _Core]:
    """A HeavyPool of ``size`` slots over a stand-in scheduler: its reconcile is the pool's
    own, results heard change nothing, runs go out as (key, run id)."""

    from kmpray.actors.heavy_pool import HeavyPool

    core = _Core()
    core.note = lambda *a: None  # type: ignore[attr-defined]

    async def reconcile() -> None:
        await heavy.reconcile(1.0)

    async def hear(*_a: Any) -> None:
        return None

    host = SimpleNamespace(core=core, pool=SimpleNamespace(epoch="e1"), _kick=lambda: None,
                           _flush=lambda: None, _reconcile=reconcile, _wire=lambda d: (d.key, d.run_id),
                           _hear=hear)
    heavy = HeavyPool(host, "ns", EngineConfig(heavy_pool_size=size), BlockedLoops())  # type: ignore[arg-type]
    return heavy, core


class _HeavyHandle:
    def __init__(self, incarnation: str) -> None:
        self.incarnation = incarnation
        outer = self

        class _Call:
            def __init__(self, answer: Any) -> None:
                self.answer = answer

            def remote(self, *args: Any) -> _Answer:
                return _Answer(self.answer(*args))

        self.submit = _Call(lambda runs, fence, acks: (outer.incarnation, []))
        self.ping = _Call(lambda acks: (outer.incarnation, 1, "A", 0.0))


def test_a_heavy_worker_restart_noticed_late_does_not_rerun_the_run_the_new_process_took() -> None:
    """The chaos `executors` run of session 21 ran one heavy task twice in one process: a
    heavy worker restarted unseen, the scheduler sent it a run, and the answer (from the
    new process) made it notice the restart, and re-run that very run as one the old
    process died under. Only a run another process took is lost with the restart."""

    heavy, core = _heavy_pool(1)
    handle = _HeavyHandle("B")  # restarted: the pool still knows process A
    slot = heavy.slots[0]
    slot.handle, slot.incarnation, slot.ready = handle, "A", True

    async def scenario() -> None:
        heavy.send(0, SimpleNamespace(key="h", run_id=1))  # type: ignore[arg-type]
        for _ in range(5):  # the submit's answer, then the reconcile it sets off
            await asyncio.sleep(0)
        assert (core.lost, slot.run, slot.taker, slot.incarnation) == ([], ("h", 1), "B", "B")
        handle.incarnation = "C"  # now B dies under the run it took
        await heavy.reconcile(1.0)
        assert (core.lost, slot.run) == ([("h", 1, True)], None)

    asyncio.run(scenario())


def test_a_heavy_worker_ending_itself_gives_back_the_run_it_never_began(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No Ray: a heavy worker about to end its process for a stray thread (stray_threads.py)
    says so; the run that waited there for its slot is re-queued as given back, not as a
    death of its own (which spent its task's max_system_reruns), and the slot takes nothing
    until a new process answers (the old one still answers pings until it ends)."""
    from kmpray.actors import heavy_pool
    from kmpray.protocol import Ping

    monkeypatch.setattr(heavy_pool, "HEAVY_RESTART_POLL_S", 0)
    heavy, core = _heavy_pool(1)
    handle = SimpleNamespace(process="A")
    handle.ping = SimpleNamespace(remote=lambda: _Answer(Ping(handle.process, 0, "node", 0.0)))
    slot = heavy.slots[0]
    slot.handle, slot.incarnation, slot.ready = handle, "A", True
    slot.run, slot.taker = ("next", 1), "A"
    heavy.where[("next", 1)] = 0

    async def scenario() -> None:
        assert not heavy.exiting(0, "Z", [("next", 1)])  # another process's word: nothing
        assert heavy.exiting(0, "A", [("next", 1)])
        assert (core.lost, slot.run, slot.ready, heavy.idle()) == ([("next", 1, False)], None, False, [])
        for _ in range(20):  # the ending process still answers: not taken for its successor
            await asyncio.sleep(0)
        assert not slot.ready
        handle.process = "B"
        for _ in range(20):
            await asyncio.sleep(0)
        assert (slot.ready, slot.incarnation, heavy.idle()) == (True, "B", [0])
        assert not heavy.exiting(0, "A", [])  # said again by the old process: stale

    asyncio.run(scenario())


def test_a_heavy_worker_that_dies_before_it_is_ever_ready_is_asked_for_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No Ray: a slot asked for by name while the worker it replaces is being stopped is
    handed that dying actor (``get_if_exists``). It dies, and nothing had moved the slot on:
    before session 54 the slot stayed pending for ever (a multi-node run: one heavy worker of
    two on two heavy nodes for 60 s), as reconcile leaves pending slots alone."""
    import ray

    from kmpray.actors import heavy_pool
    from kmpray.protocol import Ping

    monkeypatch.setattr(heavy_pool, "HEAVY_RESTART_POLL_S", 0)

    async def died() -> Any:
        raise ray.exceptions.RayActorError()

    dying = SimpleNamespace(ping=SimpleNamespace(remote=died))
    fresh = SimpleNamespace(ping=SimpleNamespace(remote=lambda: _Answer(Ping("B", 0, "node", 0.0))))
    handed = [dying, fresh]  # what Ray hands back for the name, in turn
    asked: list[dict[str, Any]] = []

    class Worker:
        @staticmethod
        def options(**options: Any) -> Any:
            asked.append(options)
            return SimpleNamespace(remote=lambda *args: handed.pop(0))

    monkeypatch.setattr(heavy_pool, "HeavyWorker", Worker)
    heavy, _core = _heavy_pool(1)

    async def scenario() -> None:
        heavy.grow()
        for _ in range(20):
            await asyncio.sleep(0)
        slot = heavy.slots[0]
        assert (slot.handle, slot.ready, slot.incarnation) == (fresh, True, "B")
        assert [o["name"] for o in asked] == ["kmpray.heavy.0"] * 2
        assert heavy.status()["pending"] == 0 and heavy.status()["placed"] == 1

    asyncio.run(scenario())


class _StandIn:
    """An actor as a pool sees it: one process at a time (``incarnation``); a submit waits
    in ``pending`` until the test answers it (by whichever process lives then) or fails it;
    a ping is answered at once, by the process alive."""

    def __init__(self, name: str, node: str = "A") -> None:
        self.name, self.n, self.node = name, 0, node
        self.incarnation = f"{name}-0"
        self.pending: list[Any] = []
        outer = self

        class _Submit:
            def remote(self, runs: list[Any], fence: Any, acks: Any = None) -> Any:
                future = asyncio.get_running_loop().create_future()
                outer.pending.append(outer.submitted(runs, fence, future))
                return future

        class _Ping:
            def remote(self, acks: Any) -> _Answer:
                return _Answer(outer.pinged())

        self.submit, self.ping = _Submit(), _Ping()

    def submitted(self, runs: list[Any], fence: Any, future: Any) -> Any:
        raise NotImplementedError

    def pinged(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def restart(self) -> None:
        self.n += 1
        self.incarnation = f"{self.name}-{self.n}"


class _Process(_StandIn):
    """A heavy worker: ``pending`` holds (run key, future of the submit's answer)."""

    def submitted(self, runs: list[Any], fence: Any, future: Any) -> Any:
        return tuple(runs[0]), future

    def pinged(self) -> tuple[Any, ...]:
        return self.incarnation, 1, "A", 0.0


def test_a_heavy_pool_under_random_restarts_loses_exactly_the_runs_a_dead_process_took() -> None:
    """Seeded random schedules of sends, answers, failed submits, restarts, reconciles and
    results over a two-slot heavy pool with stand-in actors (no Ray). Invariants: a run is
    taken for lost only if the process that took it is gone (or its submit failed), never
    while the live process runs it; once a reconcile has seen every restart, no run a dead
    process took is still held. Session 21's double run fails it in a few seeds."""
    for seed in range(150):
        asyncio.run(_heavy_schedule(seed))


async def _heavy_schedule(seed: int, steps: int = 60) -> None:

    from kmpray.actors.submit_lane import LaneLost

    rng = random.Random(seed)
    heavy, core = _heavy_pool(2)
    procs = [_Process("a"), _Process("b")]
    for slot, proc in zip(heavy.slots, procs, strict=True):
        slot.handle, slot.incarnation, slot.ready = proc, proc.incarnation, True
    taken_by: dict[Any, str] = {}  # run -> the process that took it
    failed: set[Any] = set()  # runs whose submit failed (the pool re-queues them)

    async def settle() -> None:
        for _ in range(4):
            await asyncio.sleep(0)

    n = 0
    for _step in range(steps):
        op, i = rng.random(), rng.randrange(2)
        slot, proc = heavy.slots[i], procs[i]
        if op < 0.25 and slot.run is None and slot.ready:
            n += 1
            heavy.send(i, SimpleNamespace(key=f"t{n}", run_id=1))  # type: ignore[arg-type]
        elif op < 0.45 and proc.pending:
            key, future = proc.pending.pop(0)
            taken_by[key] = proc.incarnation
            future.set_result((proc.incarnation, []))
        elif op < 0.5 and proc.pending:
            key, future = proc.pending.pop(0)
            failed.add(key)
            future.set_exception(LaneLost("gone"))
        elif op < 0.65:
            proc.restart()
        elif op < 0.8:
            await heavy.reconcile(1.0)
        elif slot.run is not None and taken_by.get(slot.run) == proc.incarnation:
            heavy.free(slot.run)  # its result reported
        await settle()
        alive = {p.incarnation for p in procs}
        for key, run_id, _crashed in core.lost:
            if (key, run_id) not in failed:
                who = taken_by.get((key, run_id))
                assert who not in alive, f"seed {seed}: {key} lost while its process ({who}) lives"
    for proc in procs:  # every submit answered by the live process, then reconciled
        while proc.pending:
            key, future = proc.pending.pop(0)
            taken_by[key] = proc.incarnation
            future.set_result((proc.incarnation, []))
    await settle()
    for _ in range(3):
        await heavy.reconcile(1.0)
        await settle()
    for slot, proc in zip(heavy.slots, procs, strict=True):
        if slot.run is not None:
            who = taken_by.get(slot.run)
            assert who == proc.incarnation, f"seed {seed}: {slot.run} held for a dead process ({who})"


class _Light(_StandIn):
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
    core = _Core()
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


class _Refusing:
    """HeavyWorker as grow() sees it: records the options asked for, or refuses them."""

    def __init__(self, refuse: str | None = None) -> None:
        self.asked: list[dict[str, Any]] = []
        self.refuse = refuse

    def options(self, **options: Any) -> Any:
        if self.refuse:
            raise ValueError(self.refuse)
        self.asked.append(options)
        return SimpleNamespace(remote=lambda *a: object())


def test_heavy_gpus_are_asked_for_as_num_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray refuses "GPU" among an actor's resources; EngineConfig(heavy_resources={"GPU": 1})
    (the natural way to ask) used to raise out of every dispatch turn, so light tasks
    stopped too. It is asked for as num_gpus now, the rest as resources."""
    from kmpray.actors import heavy_pool

    fake = _Refusing()
    monkeypatch.setattr(heavy_pool, "HeavyWorker", fake)
    monkeypatch.setattr(heavy_pool.HeavyPool, "_await", lambda *a: asyncio.sleep(0))
    heavy = heavy_pool.HeavyPool(SimpleNamespace(), "ns", EngineConfig(  # type: ignore[arg-type]
        heavy_pool_size=1, heavy_num_cpus=0.5, heavy_resources={"GPU": 1, "big": 2}), BlockedLoops())

    async def scenario() -> None:
        heavy.grow()

    asyncio.run(scenario())
    [asked] = fake.asked
    assert (asked["num_cpus"], asked["num_gpus"], asked["resources"]) == (0.5, 1, {"big": 2})
    assert heavy.slots[0].handle is not None and heavy.refused is None


def test_a_heavy_worker_ray_refuses_to_start_leaves_heavy_runs_waiting_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever Ray refuses in a heavy worker's options stays inside the heavy pool: grow()
    returns (the dispatch turn goes on for light runs) and the wait reason says why."""
    from kmpray.actors import heavy_pool

    monkeypatch.setattr(heavy_pool, "HeavyWorker", _Refusing("no such thing"))
    core = SimpleNamespace(heavy_ready_count=lambda exact=False: 1)
    heavy = heavy_pool.HeavyPool(SimpleNamespace(core=core), "ns",  # type: ignore[arg-type]
                                 EngineConfig(heavy_pool_size=2), BlockedLoops())
    heavy.grow()
    assert [slot.handle for slot in heavy.slots] == [None, None]
    assert heavy.reason() == "waiting for a heavy worker: Ray refused to start a heavy worker: no such thing"


def test_run_threads_count_a_call_whose_awaiting_timed_out_until_it_returns() -> None:
    """No Ray: what a heavy worker's slot waits on (actors/stray_threads.py)."""
    import threading

    from kmpray.actors.stray_threads import RunThreads

    pool, release = RunThreads(2), threading.Event()

    async def scenario() -> None:
        call = asyncio.get_running_loop().run_in_executor(pool, release.wait, 10)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call, 0.05)  # the run's timeout: its awaiting ends...
        assert pool.running == 1  # ...its thread does not
        release.set()
        for _ in range(200):
            if not pool.running:
                break
            await asyncio.sleep(0.01)
        assert pool.running == 0

    asyncio.run(scenario())
    pool.shutdown()


def test_runs_go_beyond_an_executors_slots_only_when_none_has_a_slot_free() -> None:
    """No Ray: ``free()`` offers only executors with a free slot while any has one (runs
    sent beyond a busy executor's slots waited behind its long runs while another idled),
    and every executor with window room once none has (the window hides the round trip)."""
    core = _Core()
    config = EngineConfig(executor_concurrency=2, executor_window=8)
    pool = ExecutorPool("ns", config, core, BlockedLoops(), lambda: None)  # type: ignore[arg-type]
    for i in range(2):
        pool.slots.append(ExecutorSlot(i, _Handle([], i), "A", incarnation=f"p{i}", reachable=True))
    pool.slots[0].inflight = {("long", 1): "p0", ("long2", 1): "p0", ("q", 1): "p0"}
    pool.slots[1].inflight = {("s", 1): "p1"}
    assert pool.free() == [(7, 1)]  # executor 0's slots are busy: nothing more queues there
    pool.slots[1].inflight[("s2", 1)] = "p1"
    assert pool.free() == [(5, 0), (6, 1)]  # none has a slot free: both take runs to queue


def _steal_after_waiting(
    monkeypatch: pytest.MonkeyPatch, recs: dict[str, Any], busy_node: str, keep_first_only: bool,
    eligible: Any = lambda rec: None, handed: tuple[str, ...] = (), kick: Any = lambda: None,
) -> tuple[list[list[tuple[str, int]]], Any, _Core, Any]:
    """No Ray: a busy executor (2 slots) on ``busy_node`` holding ``recs``' runs in order,
    an idle one on node A; the stealer looks once (nothing is ripe yet), then again
    STEAL_AFTER_S later. The busy executor gives back what it is asked for, or only the
    first of it (``keep_first_only``: the others began meanwhile). Returns what it was
    asked, the busy slot, the stand-in core and the stealer."""
    from kmpray.actors import stealing

    clock = {"now": 100.0}
    monkeypatch.setattr(stealing.time, "monotonic", lambda: clock["now"])
    asked: list[list[tuple[str, int]]] = []

    class _Back:
        def remote(self, keys: list[tuple[str, int]]) -> Any:
            asked.append(list(keys))
            return _Answer([keys[0]] if keep_first_only else list(keys))

    core = _Core()
    core.tasks = recs  # type: ignore[attr-defined]
    core.ready_count = lambda: 0  # type: ignore[attr-defined]
    core.heavy_ready_count = lambda: 0  # type: ignore[attr-defined]
    core.eligible_nodes = eligible  # type: ignore[attr-defined]
    config = EngineConfig(executor_concurrency=2, executor_window=8)
    pool = ExecutorPool("ns", config, core, BlockedLoops(), lambda: None)  # type: ignore[arg-type]
    busy = ExecutorSlot(0, SimpleNamespace(hand_back=_Back()), busy_node, incarnation="p0", reachable=True)
    idle = ExecutorSlot(1, _Handle([], 1), "A", incarnation="p1", reachable=True)
    pool.slots += [busy, idle]
    busy.inflight = {(k, 1): "p0" for k in recs}
    busy.handed.update((k, 1) for k in handed)
    pool.where.update({key: 0 for key in busy.inflight})
    thief = stealing.Stealer(pool, core, kick, lambda: 1_000)  # type: ignore[arg-type]

    async def scenario() -> None:
        thief.check()  # seen, not yet waited long enough
        assert asked == []
        clock["now"] += stealing.STEAL_AFTER_S + stealing.STEAL_CHECK_S
        thief.check()
        for _ in range(5):
            await asyncio.sleep(0)
        if thief._again is not None:
            thief._again.cancel()

    asyncio.run(scenario())
    return asked, busy, core, thief


def test_stealing_asks_back_only_queued_runs_that_waited_and_requeues_what_comes_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No Ray: which runs the scheduler asks a busy executor for (actors/stealing.py) — taken
    there, not begun, due, not handed on by a predecessor, from the back of its queue, after
    STEAL_AFTER_S, no more than the free slots elsewhere — and that only what the executor
    gives back is re-queued (it decides: a run that began meanwhile stays)."""
    kicked: list[int] = []
    recs = {k: SimpleNamespace(run_id=1, started=k in ("L1", "L2"), next_run_at_ms=5_000 if k == "T" else 0)
            for k in ("L1", "L2", "H", "T", "Q1", "Q2", "Q3")}
    # H: begun there by its predecessor's run; T: due later (waits there for its time)
    asked, busy, core, thief = _steal_after_waiting(
        monkeypatch, recs, "A", keep_first_only=True, handed=("H",), kick=lambda: kicked.append(1))
    assert asked == [[("Q3", 1), ("Q2", 1)]]  # the back of its queue; two free slots elsewhere
    assert ("Q3", 1) not in busy.inflight and ("Q3", 1) not in thief.pool.where
    assert ("Q2", 1) in busy.inflight  # not given: it stays
    assert core.lost == [("Q3", 1, False)] and thief.stolen == 1 and kicked == [1]


def test_stealing_leaves_queued_a_run_gated_to_the_busy_executors_node(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No Ray: the free slots are on node A; a run queued on node B's busy executor whose
    constraints allow only B (requires_charging, B charging, say) cannot use them: taken
    back, it only waited unplaced for B instead of queued on B (and cost a call). The run
    queued before it that may go anywhere is asked for instead."""
    recs = {k: SimpleNamespace(run_id=1, started=k.startswith("L"), next_run_at_ms=0, key=k)
            for k in ("L1", "L2", "any", "onB")}
    def only_b(rec: Any) -> tuple[str, ...] | None:
        return ("B",) if rec.key == "onB" else None

    asked, busy, core, _thief = _steal_after_waiting(monkeypatch, recs, "B", keep_first_only=False,
                                                     eligible=only_b)
    assert asked == [[("any", 1)]]  # not onB, though it is at the back of the queue
    assert ("onB", 1) in busy.inflight and core.lost == [("any", 1, False)]
