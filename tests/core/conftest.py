"""A harness that drives SchedulerCore like the actor does, with a scripted executor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kmpray import timing
from kmpray.chain_coordination import ChainCoordinatorCore
from kmpray.clock import ManualClock
from kmpray.config import EngineConfig
from kmpray.driver import pump, step_through
from kmpray.engine import Dispatch, Effects, SchedulerCore
from kmpray.memory_store import MemoryTaskStore
from kmpray.platforms import profile
from kmpray.results import Failure, Retry, Success

Outcome = Success | Failure | Retry
START = 1_700_000_000_000


@pytest.fixture(autouse=True)
def _damage_read_again_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store SQLite finds damaged is read again three times 0.5 s apart before it is
    refused (kmpray/store_files.py): here without the wait (the byte-flip fuzz refuses
    hundreds of files: 26 s more otherwise)."""
    monkeypatch.setattr(timing, "STORE_READ_AGAIN_S", 0.0)


class Harness:
    def __init__(self, platform: str = "cluster", config: EngineConfig | None = None) -> None:
        self.clock = ManualClock(START)
        self.store = MemoryTaskStore()
        self.workers: dict[str, Callable[[Dispatch], Outcome]] = {
            "Ok": lambda d: Success(data={"worker": "Ok"}),
            "Fail": lambda d: Failure("boom"),
            "Flaky": lambda d: Retry("not yet"),
        }
        self.core = SchedulerCore(self.clock, profile(platform), config, self.workers.__contains__)
        self.core.tasks.loader = self._read  # finished rows go cold as in the actor (drain)
        self.coordinator = ChainCoordinatorCore()
        self.runs: list[Dispatch] = []
        self.events: list[object] = []
        self.chain_msgs: list[tuple[object, ...]] = []  # kept when the coordinator is "down"
        self.coordinator_up = True

    def flush(self) -> None:
        """Persist, then hand chain messages to the coordinator and its actions back."""
        while True:
            self.events.extend(self.drain().events)
            if not self.coordinator_up or not self.chain_msgs:
                return
            msgs, self.chain_msgs = self.chain_msgs, []
            actions = self.coordinator.apply(msgs)
            if not actions:
                return
            self.core.chain_actions(actions)

    def drain(self) -> Effects:
        """The core's effects, as a test inspects them; chain messages still get delivered."""
        fx = self.core.drain()
        self.store.write(fx.persist.values(), fx.delete, fx.chains.values(), fx.delete_chains)
        # As the actor's housekeeping, once the rows are stored: finished ones older than
        # finished_in_memory_ms leave memory (kmpray/task_table.py), read from the store.
        self.core.evict_finished(self.clock.now_ms() - self.core.config.finished_in_memory_ms)
        self.chain_msgs.extend(fx.chain_msgs)
        return fx

    def _read(self, keys: list[str]) -> dict[str, Any]:
        return self.store.read_tasks(keys)  # the store of the moment (a restart may reopen it)

    def restart_coordinator(self, lose_messages: bool = True) -> None:
        """A ChainCoordinator restart: its plans are gone (and messages in flight to it,
        when ``lose_messages``); it rebuilds from the scheduler's snapshot."""
        if lose_messages:
            self.chain_msgs.clear()
        self.coordinator = ChainCoordinatorCore()
        asked_at = self.coordinator.mark()
        self.core.chain_actions(self.coordinator.resync(self.core.chain_snapshot(0, 1), asked_at))
        self.flush()

    def step(self) -> list[Dispatch]:
        """Fire what is due and run every ready task to completion once."""
        self.flush()  # what happened since (completions driven by hand) reaches the coordinator
        ran: list[Dispatch] = []

        def hand_over(batch: list[Dispatch]) -> bool:  # the scripted executors run it at once
            ran.extend(batch)
            for d in batch:
                self.core.complete(d.key, d.run_id, self.workers[d.worker](d))
            return True

        pump(self.core, lambda: (10_000, 10_000), hand_over)  # kmpray/driver.py, as the actor does
        self.runs.extend(ran)
        self.flush()
        return ran

    def advance(self, ms: int) -> list[Dispatch]:
        """Advance virtual time the way the actor does (kmpray.driver.step_through)."""
        return [d for _instant in step_through(self.core, self.clock, ms) for d in self.step()]

    def state(self, name: str) -> str:
        rec = self.core.latest(name)
        assert rec is not None
        return rec.state.value

    def restart(self, adopt: Callable[[SchedulerCore], object] | None = None, flush: bool = True) -> None:
        """A new core over the same store: what a SchedulerActor restart does. ``adopt``
        runs where the actor adopts the runs executors still hold: after the restore,
        before the coordinators resync. ``flush=False``: killed before the turn's write
        (what the old core did since its last write is lost)."""
        if flush:
            self.flush()
        self.core = SchedulerCore(self.clock, self.core.platform, self.core.config, self.workers.__contains__)
        self.core.tasks.loader = self._read
        records, chains = self.store.load(self.core.restore_cold), self.store.load_chains()
        damaged = [(q.table, q.key, q.reason) for q in self.store.take_fresh_quarantine()]
        self.core.restore(records, chains, damaged)
        if adopt is not None:
            adopt(self.core)
        self.chain_msgs.clear()  # what the old scheduler had not sent yet is gone with it
        # The scheduler asks the coordinators to resync when it starts.
        asked_at = self.coordinator.mark()
        self.core.chain_actions(self.coordinator.resync(self.core.chain_snapshot(0, 1), asked_at))
        self.flush()


@pytest.fixture
def h() -> Harness:
    return Harness()


def task(worker: str, tid: str, *, explicit: bool = True, input: str | None = None, merger: str = "OVERWRITE",
         **constraints: object) -> dict[str, object]:
    from kmpray import Constraints

    return {"id": tid, "id_explicit": explicit, "worker": worker, "input": input,
            "constraints": Constraints(**constraints), "input_merger": merger}
