"""The scheduler core's chain rules: a chain admitted whole or rejected whole, its
replacement (REPLACE/KEEP by chain id), the coordinator's promotions and cascades
applied to the chain generation they name, and what a restarted coordinator rebuilds
from. The builder and stored record are ``chain.py``; step data merging and the
decisions are the ChainCoordinator's (actors/chain_coordinator.py). A mixin of
``SchedulerCore`` (engine.py)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from . import lifecycle
from .chain_coordination import Message, coordinator_index
from .chain_intake import ChainIntake
from .chain_record import ChainRecord, chain_state
from .device import is_gated
from .effects import Outcome
from .enums import ExistingPolicy, InputMerger, TaskState
from .errors import InvalidParameters
from .merging import merge
from .models import ChainInfo
from .protocol import Cascade, Promote
from .records import TaskRecord
from .results import Failure, Success
from .triggers import OneTime

if TYPE_CHECKING:
    from .core_protocol import Core

_ONE_TIME = OneTime()


class ChainRules:
    def submit_chain(
        self: Core, chain_id: str, policy: ExistingPolicy, steps: list[list[dict[str, Any]]]
    ) -> Outcome:
        """Validate a whole chain and insert it, or reject it whole with nothing stored
        (``ChainIntake``'s two phases at once; the actor takes a large chain's first in slices).

        Each task dict carries: id, id_explicit, worker, input, constraints (a
        Constraints), input_merger. An auto-generated id that is already taken (a reused
        TaskRequest) gets a fresh one; an explicit id that is taken is an error.
        """
        intake = ChainIntake(self, chain_id, policy, steps)
        intake.check(intake.remaining)
        return intake.admit()

    def _chain_finished(self: Core, chain: ChainRecord) -> bool:
        return chain.unfinished == 0

    def _remove_chain(self: Core, chain_id: str, now: int) -> dict[str, int]:
        """Cancel and forget a chain; returns the run ids its tasks used (keys may be reused)."""
        chain = self.chains.pop(chain_id, None)
        if chain is None:
            return {}
        self.fx.chains.pop(chain_id, None)
        self.fx.delete_chains.add(chain_id)
        keys = [k for step in chain.steps for k in step if k in self.tasks]
        self.cancel_rows([self.tasks[k] for k in keys])
        run_ids = {}
        for key in keys:
            run_ids[key] = self.tasks[key].run_id
            self.names.pop(key, None)
            self._drop(key)
        return run_ids

    def chain_actions(self: Core, actions: Iterable[Message]) -> None:
        """Apply a coordinator's decisions to the tasks of the chain generation they name;
        only BLOCKED tasks are promoted and only unfinished ones cascaded (idempotent)."""
        now = self.clock.now_ms()
        for action in actions:
            chain = self.chains.get(action.chain_id)
            if chain is None or chain.gen != action.gen:
                continue  # replaced or pruned meanwhile
            if isinstance(action, Promote):
                for key in chain.steps[action.step]:
                    rec = self.tasks.get(key)
                    if rec is None or rec.state is not TaskState.BLOCKED:
                        if rec is not None and not rec.state.is_finished and rec.upstream is None \
                                and action.upstream.get(key):
                            # adopted after a restart before its promotion was stored (restore.py):
                            # its upstream data, should it run again
                            rec.upstream = action.upstream[key]
                            self._touch(rec, now)
                        continue
                    if key in action.errors:
                        self._finish(rec, TaskState.FAILED, Failure(action.errors[key]), now)
                        continue
                    rec.upstream = action.upstream.get(key) or None
                    lifecycle.promote(rec)
                    self._schedule_first(rec, now)
            elif isinstance(action, Cascade):
                final = TaskState(action.state)
                cause = Failure(action.reason) if final is TaskState.FAILED else None
                for later in chain.steps[action.from_step:]:
                    for key in later:
                        rec = self.tasks.get(key)
                        if rec is not None and not rec.state.is_finished:
                            self._finish(rec, final, cause, now)

    # ------------------------------------------------------- one hop per step
    def successor(self: Core, rec: TaskRecord) -> TaskRecord | None:
        """The task handed to an executor together with ``rec`` (being dispatched), to begin
        there the moment ``rec`` succeeds, with no round trip through this scheduler or a
        coordinator. Only where nothing else could decide otherwise: ``rec`` is the whole
        of its step (so its success is the barrier), the next step is one task, still
        BLOCKED, light, registered, with no device constraints and no delay."""
        chain = self.chains.get(rec.chain_id) if rec.chain_id is not None else None
        if chain is None or rec.step + 1 >= len(chain.steps) or chain.steps[rec.step] != [rec.key]:
            return None
        after = chain.steps[rec.step + 1]
        nxt = self.tasks.get(after[0]) if len(after) == 1 else None
        if (
            nxt is None
            or nxt.state is not TaskState.BLOCKED
            or nxt.constraints.is_heavy_task
            or is_gated(nxt.constraints)
            or not isinstance(nxt.trigger, OneTime)
            or nxt.trigger.initial_delay_ms
            or not self.is_registered(nxt.worker)
        ):
            return None
        return nxt

    def follow(self: Core, key: str, run_id: int, then: str, then_run: int) -> bool:
        """``key``'s run ``run_id`` just SUCCEEDED and its executor began the successor
        handed with it as run ``then_run``: promote it (its input merged as a coordinator
        would) and take that run as dispatched and begun. False when anything changed
        meanwhile (cancelled, replaced, failed): the executor is told to drop the run."""
        rec, nxt = self.tasks.get(key), self.tasks.get(then)
        if rec is None or nxt is None or rec.state is not TaskState.SUCCEEDED or rec.run_id != run_id:
            return False
        # The handed run's id is the one after the successor's at hand-off; a restore since
        # then has skipped that id (restore.py), as it does for any unstored dispatch, or an
        # earlier scheduler handed it (below this one's run_floor).
        handed = (self._run_base(nxt) + 1, nxt.run_id)
        earlier = nxt.run_id < then_run < self.run_floor
        if self.successor(rec) is not nxt or not (then_run in handed or earlier):
            return False
        try:
            upstream = merge(nxt.input_merger, [rec.result.data if isinstance(rec.result, Success) else None])
        except InvalidParameters:
            return False  # the coordinator's promotion fails it, naming the key
        now = self.clock.now_ms()
        nxt.upstream = upstream or None
        lifecycle.promote(nxt)
        self._touch(nxt, now)  # stored ENQUEUED: a restarted scheduler adopts the run
        nxt.run_id = then_run - 1
        lifecycle.dispatch(nxt, None, now)
        lifecycle.began(nxt, then_run)
        self.stats.handed_over(now, None)
        if self.decisions.maxlen:
            self.decisions.append((now, then, ("handed", then_run, f"with {key}, begun when it succeeded", None)))
        return True

    def chain_snapshot(
        self: Core, index: int, pool: int, ids: Sequence[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Unfinished chains owned by coordinator ``index``: what a restarted coordinator
        (or one facing a restarted scheduler) rebuilds its plans from. ``ids``: only these
        chains (a coordinator's periodic check of the plans it has not heard of lately),
        looked up, not found by a pass over every chain held."""
        if ids is not None:
            found = (self.chains.get(chain_id) for chain_id in ids)
            return {c.id: _chain_view(self.tasks, c) for c in found if c is not None and c.unfinished}
        return {chain.id: _chain_view(self.tasks, chain) for chain in self.chains.values()
                if chain.unfinished and coordinator_index(chain.id, pool) == index}

    def chain_info(self: Core, chain_id: str) -> ChainInfo | None:
        chain = self.chains.get(chain_id)
        if chain is None:
            return None
        steps = [[self.tasks[k].info() for k in step if k in self.tasks] for step in chain.steps]
        state = chain_state([i.state for step in steps for i in step])
        return ChainInfo.model_construct(id=chain_id, state=state, steps=steps)


def _chain_view(records: dict[str, TaskRecord], chain: ChainRecord) -> dict[str, Any]:
    """One chain as a coordinator rebuilds its plan from it: each task's state, and the
    data of those that succeeded."""
    # [state, data]: a list, not a tuple, which Ray would pickle apart (kmpray/protocol.py).
    tasks: dict[str, list[Any]] = {}
    mergers: dict[str, str] = {}
    for step in chain.steps:
        for key in step:
            rec = records.get(key)
            if rec is None:
                continue
            data = rec.result.data if isinstance(rec.result, Success) else None
            tasks[key] = [rec.state.value, data if rec.state is TaskState.SUCCEEDED else None]
            if rec.input_merger is not InputMerger.OVERWRITE:
                mergers[key] = rec.input_merger.value
    return {"gen": chain.gen, "steps": chain.steps, "mergers": mergers, "tasks": tasks}
