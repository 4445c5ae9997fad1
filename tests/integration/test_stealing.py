"""Work stealing's own logic (actors/stealing.py), with stand-in actor handles (no Ray
cluster needed): which queued runs the scheduler asks a busy executor to give back, and
what it re-queues."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from kmpray.actors.blocked_loops import BlockedLoops
from kmpray.actors.executor_pool import ExecutorPool, ExecutorSlot

from kmpray.config import EngineConfig
from tests.standins import Answer as _Answer

from .pool_standins import Core, Handle


def _steal_after_waiting(
    monkeypatch: pytest.MonkeyPatch, recs: dict[str, Any], busy_node: str, keep_first_only: bool,
    eligible: Any = lambda rec: None, handed: tuple[str, ...] = (), kick: Any = lambda: None,
) -> tuple[list[list[tuple[str, int]]], Any, Core, Any]:
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

    core = Core()
    core.tasks = recs  # type: ignore[attr-defined]
    core.ready_count = lambda: 0  # type: ignore[attr-defined]
    core.heavy_ready_count = lambda: 0  # type: ignore[attr-defined]
    core.eligible_nodes = eligible  # type: ignore[attr-defined]
    config = EngineConfig(executor_concurrency=2, executor_window=8)
    pool = ExecutorPool("ns", config, core, BlockedLoops(), lambda: None)  # type: ignore[arg-type]
    busy = ExecutorSlot(0, SimpleNamespace(hand_back=_Back()), busy_node, incarnation="p0", reachable=True)
    idle = ExecutorSlot(1, Handle([], 1), "A", incarnation="p1", reachable=True)
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
