"""The heavy pool's own logic (actors/heavy_pool.py), with stand-in actor handles (no Ray
cluster needed): restarts noticed late, a worker ending itself or dying before it is
ready, seeded random restart schedules, what Ray may refuse in a heavy worker's options,
the threads a heavy worker's runs wait on (actors/stray_threads.py), and a restarted
scheduler's stop of a heavy run it does not adopt (actors/adoption.py)."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import pytest
from kmpray.actors.blocked_loops import BlockedLoops

from kmpray.config import EngineConfig
from tests.standins import Answer as _Answer

from .pool_standins import Core, HeavyHandle, StandIn, runs_as_they_are


@pytest.fixture(autouse=True)
def _runs_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    runs_as_they_are(monkeypatch)


def _heavy_pool(size: int) -> tuple[Any, Core]:
    """A HeavyPool of ``size`` slots over a stand-in scheduler: its reconcile is the pool's
    own, results heard change nothing, runs go out as (key, run id)."""

    from kmpray.actors.heavy_pool import HeavyPool

    core = Core()
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


def test_a_heavy_worker_restart_noticed_late_does_not_rerun_the_run_the_new_process_took() -> None:
    """The chaos `executors` run of session 21 ran one heavy task twice in one process: a
    heavy worker restarted unseen, the scheduler sent it a run, and the answer (from the
    new process) made it notice the restart, and re-run that very run as one the old
    process died under. Only a run another process took is lost with the restart."""

    heavy, core = _heavy_pool(1)
    handle = HeavyHandle("B")  # restarted: the pool still knows process A
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


class _Process(StandIn):
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


def test_a_restarted_scheduler_waits_until_a_heavy_worker_has_the_stop_of_a_run_it_does_not_adopt() -> None:
    """A heavy worker's held run whose task ended before the crash (a cancel stored, its word
    lost with the process) is stopped by the restarted scheduler (adoption.py
    ``_stop_stale``). As for light executors, the start waits (bounded) until the worker has
    that stop, so a ``cancel()`` retried across the restart is answered only after it: before,
    the heavy stop was sent and not waited for."""
    from kmpray.actors.adoption import _stop_stale

    heavy, _ = _heavy_pool(1)
    slot = heavy.slots[0]

    async def scenario() -> None:
        answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        told: list[Any] = []

        def cancel_cooperative(keys: list[Any]) -> asyncio.Future[None]:
            told.append(keys)
            return answered

        slot.handle = SimpleNamespace(cancel_cooperative=SimpleNamespace(remote=cancel_cooperative),
                                      busy=SimpleNamespace(remote=lambda key: _Answer(False)))
        slot.incarnation, slot.ready = "A", True
        pool = SimpleNamespace(slots=[])
        stopping = asyncio.ensure_future(_stop_stale(pool, heavy, {("h", 1): (None, 0)}))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        assert told == [[("h", 1)]] and slot.run == ("h", 1)
        assert not stopping.done(), "the start went on before the heavy worker had the stop"
        answered.set_result(None)
        await asyncio.wait_for(stopping, 2.0)
        for _ in range(5):  # the cooperative stop's own follow-up: not busy, so the slot is free
            await asyncio.sleep(0)
        assert slot.run is None and heavy.where == {}

    asyncio.run(scenario())
