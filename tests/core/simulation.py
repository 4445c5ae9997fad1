"""The simulator behind ``test_simulation.py`` (#13): the real SchedulerCore,
ChainCoordinatorCore and a store in virtual time, a seeded fault schedule acting on them,
and the invariants checked after every step (``Sim.step``, ``Sim.final_check``)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from kmpray import Constraints, ExistingPolicy, ExistingWorkPolicy, ScheduleResult, TaskState, TaskTrigger
from kmpray.config import EngineConfig
from kmpray.device import DeviceState, in_trigger_state, is_gated, satisfies
from kmpray.driver import pump
from kmpray.engine import Dispatch
from kmpray.memory_store import MemoryTaskStore
from kmpray.restore import RUN_IDS_PER_START
from kmpray.results import Failure, Retry, Success
from kmpray.triggers import DEVICE_TRIGGER_KINDS, uri_matches

from .conftest import Harness

SEEDS = 200
STEPS = 120
LONG_SEEDS, LONG_STEPS = 40, 1_000
LONG_REGRESSIONS = (137, 348)  # long seeds that found the APPEND restore order (of 600 swept)
EXECUTORS = 3
NODES = ("A", "B")  # executor i runs on NODES[i % 2]
GATES = ("requires_charging", "requires_battery_not_low", "requires_storage_not_low", "requires_device_idle",
         "requires_network")
DEVICE_TRIGGERS = (TaskTrigger.BatteryLow, TaskTrigger.BatteryOkay, TaskTrigger.StorageLow,
                   TaskTrigger.DeviceIdle)
WATCHED = ("content://media/photos", "content://media/video")  # ContentUri patterns
CHANGED = ("content://media/photos", "content://media/photos/1", "content://media/video/2",
           "content://media/photosynthesis")  # notify_content_change(uri)
RETAIN_MS = 2 * 3_600_000  # finished rows are pruned after the clock jumps past this
DROPPED, ANSWER_LOST = 0.08, 0.05  # of the reports delivered during the fault schedule
RunKey = tuple[str, int]


class Sim(Harness):
    """The core test harness (the actor's drive loop: persist, chain messages to the
    coordinator and its actions back) plus executors, a network and a fault schedule."""

    def __init__(self, seed: int) -> None:
        super().__init__(config=EngineConfig(retain_finished_ms=RETAIN_MS))
        self.seed = seed
        self.rng = random.Random(seed)
        self.held: list[dict[RunKey, Dispatch]] = [{} for _ in range(EXECUTORS)]  # runs each executor has
        self.where: dict[RunKey, int] = {}  # the scheduler's view: run -> executor
        self.net: list[tuple[int, int, RunKey, Any]] = []  # (deliver at step, from executor, run, result)
        self.accepted: set[str] = set()  # task names and chain ids accepted
        self.counted: Counter[RunKey] = Counter()
        self.runs_seen: dict[str, int] = {}
        self.step_no = 0
        self.trace: list[str] = []
        self.periodic: set[str] = set()  # periodic names: they never finish on their own
        self.quiet_mark = self.coordinator.mark()  # the coordinator's last periodic check
        # Device states as the ConstraintOracle would push them (every change, every node),
        # and how often each device trigger kind has fired (a transition into its state).
        self.devices = {node: DeviceState() for node in NODES}
        self.core.set_devices(dict(self.devices))
        self.pushed = dict(self.devices)  # the states the scheduler saw last (its store keeps them)
        self.fires: Counter[str] = Counter()
        self.armed_at: dict[str, int] = {}  # device-trigger name -> its kind's fires when submitted
        self.changes: list[str] = []  # content changes notified, in order
        self.watching: dict[str, tuple[Any, int]] = {}  # ContentUri name -> (trigger, changes then)
        self.starts = 1  # schedulers started (the store's count: kmpray/restore.py RUN_IDS_PER_START)
        self.core.run_floor = RUN_IDS_PER_START

    def result(self, d: Dispatch) -> Success | Failure | Retry:
        roll = self.rng.random()
        if d.worker == "Fail":
            return Failure("boom", should_retry=roll < 0.5)
        if d.worker == "Flaky" and roll < 0.6:
            return Retry("not yet", delay_ms=self.rng.choice([None, 0, 500]))
        return Success(data={"by": d.key, "n": self.rng.randrange(100)})

    # -------------------------------------------------------------- actions
    def submit(self) -> None:
        name = f"n{self.rng.randrange(8)}"
        policy = self.rng.choice(list(ExistingWorkPolicy))
        gates = {g: True for g in GATES if self.rng.random() < 0.12}  # device-state constraints
        heavy = self.rng.random() < 0.1  # the heavy queue: its own room (heavy workers)
        c = Constraints(existing_work_policy=policy, max_retries=self.rng.randrange(4),
                        backoff_delay_ms=1_000, is_heavy_task=heavy, **gates)
        trig = TaskTrigger.OneTime(self.rng.choice([0, 0, 1_000, 30_000]))
        out = self.core.submit(name, trig, self.rng.choice(["Ok", "Ok", "Fail", "Flaky"]), None, c)
        self.trace.append(f"submit {name} {policy.value} -> {out.result.value}")
        if out.result is ScheduleResult.SUCCESS:
            self.accepted.add(name)
            if out.reason is None and policy is not ExistingWorkPolicy.APPEND:
                self._forget_counts(name)  # new work under the name (KEEP over finished work too)
        self.flush()

    def submit_periodic(self) -> None:
        name = f"p{self.rng.randrange(3)}"
        policy = self.rng.choice([ExistingWorkPolicy.KEEP, ExistingWorkPolicy.REPLACE])
        trig = TaskTrigger.Periodic(self.rng.choice([60_000, 300_000]))
        out = self.core.submit(name, trig, self.rng.choice(["Ok", "Flaky", "Fail"]), None,
                               Constraints(existing_work_policy=policy, max_retries=1, backoff_delay_ms=1_000))
        self.trace.append(f"periodic {name} {policy.value} -> {out.result.value}")
        if out.result is ScheduleResult.SUCCESS:
            self.accepted.add(name)
            self.periodic.add(name)
            if out.reason is None:
                self._forget_counts(name)  # new work under the name (KEEP over finished work too)
        self.flush()

    def submit_device_trigger(self) -> None:
        """Work set off by a device state being entered on any node: it re-arms until
        cancelled (so, like periodic work, it never finishes on its own)."""
        name = f"d{self.rng.randrange(3)}"
        policy = self.rng.choice([ExistingWorkPolicy.KEEP, ExistingWorkPolicy.REPLACE])
        trig = self.rng.choice(DEVICE_TRIGGERS)
        out = self.core.submit(name, trig, self.rng.choice(["Ok", "Flaky", "Fail"]), None,
                               Constraints(existing_work_policy=policy, max_retries=1,
                                           backoff_delay_ms=1_000))
        self.trace.append(f"device trigger {name} {trig.kind} {policy.value} -> {out.result.value}")
        if out.result is ScheduleResult.SUCCESS:
            self.accepted.add(name)
            if out.reason is None:
                self.armed_at[name] = self.fires[trig.kind]
                self._forget_counts(name)
        self.flush()

    def submit_content_trigger(self) -> None:
        name = f"u{self.rng.randrange(2)}"
        policy = self.rng.choice([ExistingWorkPolicy.KEEP, ExistingWorkPolicy.REPLACE])
        trig = TaskTrigger.ContentUri(self.rng.choice(WATCHED), self.rng.random() < 0.5)
        out = self.core.submit(name, trig, self.rng.choice(["Ok", "Flaky", "Fail"]), None,
                               Constraints(existing_work_policy=policy, max_retries=1,
                                           backoff_delay_ms=1_000))
        self.trace.append(f"content trigger {name} {trig.uri_string} {trig.trigger_for_descendants} "
                          f"{policy.value} -> {out.result.value}")
        if out.result is ScheduleResult.SUCCESS:
            self.accepted.add(name)
            if out.reason is None:
                self.watching[name] = (trig, len(self.changes))
                self._forget_counts(name)
        self.flush()

    def notify_change(self) -> None:
        uri = self.rng.choice(CHANGED)
        self.changes.append(uri)
        self.trace.append(f"content change {uri} -> fired {self.core.fire('content_uri', uri)}")
        self.flush()

    def change_device(self, push: bool = True) -> None:
        """One node's state changes; the oracle pushes every node's state to the scheduler
        (``push=False``: it is down; its next start gets them, with those its store kept)."""
        node = self.rng.choice(NODES)
        old = self.devices[node]
        field, value = self.rng.choice([
            ("charging", not old.charging), ("battery_level", self.rng.choice([5, 50, 100])),
            ("storage_low", not old.storage_low), ("idle", not old.idle),
            ("network_connected", not old.network_connected),
        ])
        new = old.model_copy(update={field: value})
        self.devices[node] = new
        for trig in DEVICE_TRIGGERS:  # entered (not a first sighting: the sim starts with every node)
            if in_trigger_state(trig.kind, new) and not in_trigger_state(trig.kind, old):
                self.fires[trig.kind] += 1
        if not push:
            self.trace.append(f"device {node} {field}={value} while the scheduler is down")
            return
        fired = self.core.set_devices(dict(self.devices))
        self.pushed = dict(self.devices)
        self.trace.append(f"device {node} {field}={value} -> fired {fired}")
        self.flush()

    def submit_chain(self) -> None:
        cid = f"c{self.rng.randrange(4)}"
        steps = [
            [{"id": f"{cid}.{self.step_no}.{k}.{j}", "id_explicit": False, "worker": self.rng.choice(["Ok", "Ok", "Flaky", "Fail"]),
              "input": None, "constraints": Constraints(max_retries=2, backoff_delay_ms=500),
              "input_merger": self.rng.choice(["OVERWRITE", "ARRAY"])}
             for j in range(self.rng.randint(1, 3))]
            for k in range(self.rng.randint(1, 3))
        ]
        policy = self.rng.choice(list(ExistingPolicy))
        out = self.core.submit_chain(cid, policy, steps)
        self.trace.append(f"chain {cid} {policy.value} {[len(s) for s in steps]} -> {out.result.value}")
        if out.result is ScheduleResult.SUCCESS:
            self.accepted.add(cid)
        self.flush()

    def cancel(self) -> None:
        name = self.rng.choice(sorted(self.accepted)) if self.accepted else "n0"
        self.trace.append(f"cancel {name} -> {self.core.cancel(name)}")
        self.flush()

    def advance(self, ms: int) -> None:
        self.clock.set(self.clock.now_ms() + ms)
        sent: list[Dispatch] = []

        def hand_over(batch: list[Dispatch]) -> bool:  # one batch per turn, to random executors
            for d in batch:
                self._check_barrier(d)
                # An executor on a node the run may use (kmpray.placement's part, done here).
                i = self.rng.choice([j for j in range(EXECUTORS)
                                     if d.nodes is None or NODES[j % 2] in d.nodes])
                self._check_gate(d, NODES[i % 2])
                self.held[i][(d.key, d.run_id)] = d
                self.where[(d.key, d.run_id)] = i
            sent.extend(batch)
            return False

        room = lambda: (self.rng.randint(1, 20), self.rng.randint(0, 2))  # noqa: E731 (light, heavy)
        pump(self.core, room, hand_over)  # as the actor does
        self.trace.append(f"advance {ms} -> dispatched {[(d.key, d.run_id) for d in sent]}")
        self.flush()

    def work(self, i: int, n: int) -> None:
        """Executor ``i`` finishes up to ``n`` runs; reports travel with delay, maybe twice."""
        for key in list(self.held[i])[:n]:
            d = self.held[i].pop(key)
            result = self.result(d)
            copies = 2 if self.rng.random() < 0.1 else 1
            for _ in range(copies):
                self.net.append((self.step_no + self.rng.randint(0, 3), i, key, result))
        self.trace.append(f"executor {i} finished up to {n}")

    def deliver(self, everything: bool = False) -> None:
        due = [m for m in self.net if everything or m[0] <= self.step_no]
        self.rng.shuffle(due)  # reordered
        for msg in due:
            self.net.remove(msg)
            _at, i, key, result = msg
            fate = 1.0 if everything else self.rng.random()
            if fate < DROPPED:  # the call failed on the way: the outbox keeps it and tries again
                self.net.append((self.step_no + self.rng.randint(1, 6), i, key, result))
                self.trace.append(f"report {key} dropped, resent later")
                continue
            self.where.pop(key, None)
            if self.core.complete(key[0], key[1], result):
                self.counted[key] += 1
                assert self.counted[key] == 1, f"run {key} counted twice"
            if fate < DROPPED + ANSWER_LOST:  # it arrived, its answer did not: sent again
                self.net.append((self.step_no + self.rng.randint(1, 6), i, key, result))
                self.trace.append(f"report {key} answer lost, resent later")
        self.core.release_unplaced()
        self.flush()

    def lose_executor(self) -> None:
        i = self.rng.randrange(EXECUTORS)
        self.held[i].clear()
        self.net = [m for m in self.net if m[1] != i]  # its outbox died with it
        lost = [k for k, j in self.where.items() if j == i]
        for key in lost:
            del self.where[key]
            self.core.run_lost(*key, crashed=True)  # its process died under them
        self.trace.append(f"executor {i} lost ({len(lost)} runs re-queued)")
        self.flush()

    def give_back(self, i: int, n: int) -> None:
        """Executor ``i`` hands back up to ``n`` runs it took and has not begun (work
        stealing, actors/stealing.py: from the back of its queue); they run again, elsewhere
        or there, not counted as attempts (ExecutorPool.requeue)."""
        back = list(self.held[i])[-n:] if n else []
        for key in back:
            del self.held[i][key]
            self.where.pop(key, None)
            self.core.run_lost(*key)
        self.trace.append(f"executor {i} gave back {back}")
        self.flush()

    def restart_scheduler(self, reopen_store: bool = False, device_change: bool = False) -> None:
        if reopen_store:  # a new store over the same encoded rows (a file reopened)
            self.flush()
            fresh = MemoryTaskStore()
            fresh._rows, fresh._chains = dict(self.store._rows), dict(self.store._chains)
            self.store = fresh
        # Executors keep every run until its report is delivered: the new scheduler adopts them.
        holders = {key: i for i, runs in enumerate(self.held) for key in runs}
        holders.update({key: i for _at, i, key, _r in self.net})
        adopted: list[RunKey] = []

        self.starts += 1
        if device_change:
            self.change_device(push=False)
        seen = self.pushed
        entered = {t.kind for t in DEVICE_TRIGGERS for n, new in self.devices.items()
                   if in_trigger_state(t.kind, new) and not in_trigger_state(t.kind, seen[n])}

        def start(core: Any) -> None:  # as SchedulerActor._start: the oracle's states, then adoption
            core.run_floor = self.starts * RUN_IDS_PER_START  # as SchedulerActor.__init__
            fired = core.set_devices(dict(self.devices), seen_before=seen)
            # Entered while it was down: fired once now (scheduler_devices.py), and nothing else.
            assert set(fired) == entered, f"a restart fired {fired}, entered while down: {sorted(entered)}"
            self.pushed = dict(self.devices)
            adopted.extend(core.adopt(holders, set()))

        self.restart(adopt=start)
        self.where = {key: holders[key] for key in adopted}
        self.trace.append(f"scheduler restarted (reopen={reopen_store}), adopted {len(adopted)}")

    def prune(self) -> None:
        """The actor's housekeeping prunes: exactly the names and chains a scan of every
        row finds old (the reference; the core looks only at rows finished before the
        horizon, off the table's index)."""
        horizon = self.clock.now_ms() - RETAIN_MS
        tasks = self.rows()

        def old(key: str) -> bool:
            rec = tasks.get(key)
            return rec is None or (rec.state.is_finished and rec.updated_at_ms < horizon)

        every_name = {**{k: [k] for k in self.core.tasks.cold}, **self.core.names}  # cold rows: name = key
        names = {n for n, keys in every_name.items() if all(old(k) and tasks[k].chain_id is None for k in keys)}
        chains = {c for c, chain in self.core.chains.items() if all(old(k) for s in chain.steps for k in s)}
        gone = {k for n in names for k in every_name[n]}
        # Appended keys (``n#2``) a KEEP or REPLACE over finished work deleted earlier are
        # numbered afresh too once their name is pruned: their old runs' counts go as well.
        gone |= {k for k, _run in self.counted if k.split("#")[0] in names}
        gone |= {k for c in chains for s in self.core.chains[c].steps for k in s}
        assert self.core.prune() == len(names) + len(chains), "pruned another number than the scan finds"
        assert not names & set(self.core.names) and not chains & set(self.core.chains), "old rows kept"
        self.trace.append(f"prune -> {sorted(names)} {sorted(chains)}")
        self.accepted -= names | chains
        self.periodic -= names
        for name in names:
            self.armed_at.pop(name, None)
            self.watching.pop(name, None)
        for name in names:
            self._forget_counts(name)
        # A name may be enqueued again and its runs numbered from 1 again: the old runs'
        # counts go, and so do their copies still on the way (a report delayed past
        # retain_finished_ms, a day by default, outlives any executor's outbox; only
        # this schedule's clock jumps make one possible).
        self.counted = Counter({k: n for k, n in self.counted.items() if k[0] not in gone})
        self.net = [m for m in self.net if m[2][0] not in gone]
        self.flush()

    def restart_coordinator_keeping_messages(self) -> None:
        self.restart_coordinator(lose_messages=self.rng.random() < 0.5)
        self.quiet_mark = self.coordinator.mark()

    def check_quiet_chains(self) -> None:
        """The coordinator's every-RESYNC_S check: plans quiet since the last one are
        asked about by id (actors/chain_coordinator.py check_quiet)."""
        if not self.coordinator_up:
            return
        mark = self.coordinator.mark()
        quiet = self.coordinator.quiet_since(self.quiet_mark)
        self.quiet_mark = mark
        if quiet:
            asked_at = self.coordinator.mark()
            snapshot = self.core.chain_snapshot(0, 1, quiet)
            self.core.chain_actions(self.coordinator.resync(snapshot, asked_at, quiet))
            self.flush()
        self.trace.append(f"quiet check -> asked {sorted(quiet)}")

    # ----------------------------------------------------------- invariants
    def _check_barrier(self, d: Dispatch) -> None:
        rec = self.core.tasks[d.key]
        for pre in self.core.prerequisites(rec):
            assert pre.state is TaskState.SUCCEEDED, f"{d.key} dispatched while prerequisite {pre.key} is {pre.state}"

    def _check_gate(self, d: Dispatch, node: str) -> None:
        """A run goes only to a node whose state (as the oracle last pushed it) meets the
        task's constraints, and for a device trigger is in its state, which must have been
        entered since the work was submitted; content work runs only after a change its
        URI matches was notified since it was submitted."""
        rec = self.core.tasks[d.key]
        kind = rec.trigger.kind
        if kind == "content_uri":  # after a change it matches, notified since it was submitted
            trig, since = self.watching[d.key.split("#")[0]]
            assert any(uri_matches(trig.uri_string, uri, trig.trigger_for_descendants)
                       for uri in self.changes[since:]), f"{d.key}: content work ran, no matching change"
        trigger = kind in DEVICE_TRIGGER_KINDS
        if not (trigger or is_gated(rec.constraints)):
            return
        state = self.devices[node]
        assert d.nodes is not None and node in d.nodes, f"{d.key}: gated, dispatched for nodes {d.nodes}"
        assert satisfies(rec.constraints, state), f"{d.key}: sent to {node}, whose state does not meet it"
        if trigger:
            assert in_trigger_state(kind, state), f"{d.key}: {kind} work sent to {node}, not in that state"
            name = d.key.split("#")[0]
            assert self.fires[kind] > self.armed_at.get(name, 0), f"{d.key}: {kind} work ran, never set off"

    def _forget_counts(self, name: str) -> None:
        for key in [k for k in self.runs_seen if k == name or k.startswith(f"{name}#")]:
            del self.runs_seen[key]

    def check(self) -> None:
        # The counts status() shows, kept as rows change, equal a count of every row.
        table = self.core.tasks
        # Finished rows kept in the store only (cold) are rows as much as those in memory.
        assert not table.cold.keys() & table.keys(), "a row both in memory and cold"
        every = self.rows()
        assert len(every) == len(table) + len(table.cold), "a cold row the store does not have"
        for key in table.cold:
            rec, c = every[key], table.cold_info(key)
            assert rec.state.is_finished and c.state is rec.shown_state
            assert c.updated_at_ms == rec.updated_at_ms
            assert rec.chain_id is None and not rec.prereqs and not self.core.dependents.get(key), key
            assert rec.name == key and self.core.names.get(key, [key]) == [key], key  # entry let go, or [key]
        shown = {key: rec.shown_state for key, rec in every.items()}  # once per row: checked five ways
        scanned = Counter(s.value for s in shown.values())
        assert {k: n for k, n in self.core.counts().items() if n} == dict(scanned), "state counts drifted"
        by_worker = Counter((rec.worker, shown[key]) for key, rec in every.items())
        assert {k: n for k, n in table.by_worker.items() if n} == dict(by_worker), "worker counts drifted"
        by_state: dict[TaskState, set[str]] = {}
        for key, s in shown.items():
            by_state.setdefault(s, set()).add(key)
        assert {s: set(keys) for s, keys in table.recent.items() if keys} == by_state, "recency index drifted"
        # The dashboard's newest rows, off the indexes, as a scan of every row finds them.
        for state, worker in ((None, None), (TaskState.SUCCEEDED, None), (None, "Ok"), (TaskState.ENQUEUED, "Ok")):
            rows = [every[k] for k in (every if state is None else by_state.get(state, ()))
                    if worker is None or every[k].worker == worker]
            total, newest = table.newest(state, worker, 5)
            assert total == len(rows)
            assert [r.updated_at_ms for r in newest] == sorted((r.updated_at_ms for r in rows), reverse=True)[:5]
        for name, keys in self.core.names.items():
            live = [k for k in keys if not every[k].state.is_finished
                    and every[k].state is not TaskState.BLOCKED]
            assert len(live) <= 1, f"name {name!r} has {len(live)} live works: {live}"
        for key, rec in every.items():
            seen = self.runs_seen.get(key, 0)
            if rec.chain_id is None:
                assert rec.run_count >= seen, f"{key}: run_count went back {seen} -> {rec.run_count}"
            self.runs_seen[key] = rec.run_count
        assert self.core.pending == sum(1 for r in every.values() if not r.state.is_finished)

    def rows(self) -> dict[str, Any]:
        """Every row: those in memory and the cold ones, read from the store."""
        table = self.core.tasks
        return {**table, **table.load(list(table.cold))}

    def step(self) -> None:
        self.step_no += 1
        actions = [
            (3, self.submit), (1, self.submit_chain), (0.5, self.submit_periodic), (0.4, self.cancel),
            (3, lambda: self.advance(self.rng.randrange(0, 20_000))),
            (4, lambda: self.work(self.rng.randrange(EXECUTORS), self.rng.randint(1, 8))),
            (4, self.deliver), (0.3, self.lose_executor), (0.3, self.restart_scheduler),
            (0.4, lambda: self.give_back(self.rng.randrange(EXECUTORS), self.rng.randint(1, 4))),
            (0.1, lambda: self.restart_scheduler(reopen_store=True)),
            (0.2, lambda: self.restart_scheduler(device_change=True)),
            (0.2, self.restart_coordinator_keeping_messages), (0.3, self.check_quiet_chains),
            (0.1, lambda: self.advance(self.rng.randrange(3_600_000, 6 * 3_600_000))),  # clock jump
            (0.3, self.prune), (0.8, self.change_device), (0.3, self.submit_device_trigger),
            (0.2, self.submit_content_trigger), (0.4, self.notify_change),
        ]
        weights = [w for w, _ in actions]
        self.rng.choices([a for _, a in actions], weights)[0]()
        self.check()

    def run_to_end(self) -> None:
        """No more faults: run everything to its end (bounded). Periodic work never ends on
        its own: it gets one more period, then is cancelled, as a user would."""
        periods = {name: self.core.latest(name).run_count for name in self.periodic}  # type: ignore[union-attr]
        for name in sorted({*self.armed_at, *self.watching}):  # event work: cancelled, as a user would
            if name in self.core.names:
                self.core.cancel(name)
        # Every node in a state every gate accepts (idle too: requires_device_idle).
        for node in NODES:
            self.devices[node] = DeviceState(idle=True)
        self.core.set_devices(dict(self.devices))
        self.flush()
        for _ in range(400):
            for name, before in periods.items():
                rec = self.core.latest(name)
                if rec is not None and not rec.state.is_finished and rec.run_count > before:
                    self.core.cancel(name)
                    self.flush()
            for i in range(EXECUTORS):
                self.work(i, 10_000)
            self.deliver(everything=True)
            if self.core.pending == 0:
                return
            due = self.core.next_due_ms()
            self.advance(max(0, (due or self.clock.now_ms()) - self.clock.now_ms()) + 1)
            self.check()
        raise AssertionError(f"{self.core.pending} tasks still unfinished after the drain")

    def final_check(self) -> None:
        unfinished = [k for k, r in self.core.tasks.items() if not r.state.is_finished]
        assert unfinished == [], f"unfinished after the drain: {unfinished}"
        for name in self.accepted:
            assert self.core.latest(name) is not None or name in self.core.chains, f"accepted {name!r} lost"
        for cid, chain in self.core.chains.items():
            states = [self.core.tasks[k].state for step in chain.steps for k in step if k in self.core.tasks]
            assert len(states) == sum(len(s) for s in chain.steps), f"chain {cid} lost tasks"
