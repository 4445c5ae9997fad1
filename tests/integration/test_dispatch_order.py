"""The scheduler's pump writes before it hands runs out (actors/scheduler_dispatch.py), with
a stand-in actor around a real SchedulerCore (no Ray cluster needed): a run never reaches
an executor before what made it due is stored, so a kill between the two cannot leave an
executor running a task the restarted scheduler does not know, or finds BLOCKED."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from kmpray.actors.scheduler_dispatch import SchedulerDispatch, Turn

from kmpray import ExistingPolicy, TaskTrigger
from kmpray.chain_coordination import ChainCoordinatorCore
from kmpray.clock import ManualClock
from kmpray.engine import SchedulerCore
from kmpray.memory_store import MemoryTaskStore
from kmpray.platforms import profile
from kmpray.results import Success


class _Actor(SchedulerDispatch):
    def __init__(self) -> None:
        self.core = SchedulerCore(ManualClock(1_000_000), profile("cluster"), None, lambda worker: True)
        self.store = MemoryTaskStore()
        self._lead_ms = 0
        self.chain_msgs: list[Any] = []
        self.handed: list[tuple[str, str | None]] = []  # (key, its state in the store then)
        self.stealer = SimpleNamespace(check=lambda: None)  # no executors here to steal from

    def _flush(self) -> None:
        fx = self.core.drain()
        self.store.write(fx.persist.values(), fx.delete, fx.chains.values(), fx.delete_chains)
        self.chain_msgs.extend(fx.chain_msgs)

    def _room(self, turn: Turn) -> tuple[int, int]:
        return 100, 0

    def _hand_over(self, turn: Turn, batch: list[Any]) -> bool:
        stored = self.store.read_tasks([d.key for d in batch])
        self.handed += [(d.key, stored[d.key].state.value if d.key in stored else None) for d in batch]
        return True


def test_a_new_row_is_stored_before_its_run_is_handed_out() -> None:
    actor = _Actor()
    actor.core.submit("x", TaskTrigger.OneTime(), "Ok")  # applied; the intake's write is later in the turn
    actor._pump()
    assert actor.handed == [("x", "ENQUEUED")]


def test_a_promoted_chain_step_is_stored_promoted_before_its_run_is_handed_out() -> None:
    from tests.core.conftest import task

    actor = _Actor()
    coordinator = ChainCoordinatorCore()
    actor.core.submit_chain("ch", ExistingPolicy.REPLACE, [[task("Ok", "a")], [task("Ok", "b")]])
    actor._pump()
    assert actor.handed == [("a", "ENQUEUED")]
    actor.core.complete("a", actor.core.tasks["a"].run_id, Success())
    actor._flush()  # "a" SUCCEEDED is stored, "b" BLOCKED
    msgs, actor.chain_msgs = actor.chain_msgs, []
    actor.core.chain_actions(coordinator.apply(msgs))  # "b" promoted in memory, as a report's turn does
    actor._pump()
    assert actor.handed[1:] == [("b", "ENQUEUED")]  # not BLOCKED: its promotion went first
