"""Cancels and REPLACEs under the chaos nemesis (bench/chaos.py): long work ended by an
acknowledged call, then checked against the ledger the workers wrote (chaos_common.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import kmpray

from .chaos_common import EngineStops, ledger_lines, ledger_times, times_in
from .common import percentiles, process_gone


def _late(name: str, at: float, replaced: bool, starts: dict[str, list[float]],
          finishes: dict[str, list[float]], lines: list[list[str]]) -> dict[str, Any]:
    """How ``name``'s call ended (at ``at``) and its old work's starts and finishes after
    it, and the ledger lines of its runs (with each one's process)."""
    return {"id": name, "how": "replace" if replaced else "cancel", "ended_at": round(at, 3),
            "starts_after_s": [round(t - at, 3) for t in starts.get(name, []) if t > at],
            "finishes_after_s": [round(t - at, 3) for t in finishes.get(name, []) if t > at],
            "ledger": [" ".join(parts) for parts in lines if len(parts) >= 2 and parts[1] == name]}


class Cancels:
    """Cancels and REPLACEs under the nemesis (Jepsen's acknowledged operations): after each
    enqueue call, long ChaosLedger work (runs of ``LONG_MS``), and the work enqueued ``LAG``
    calls before it, by then running or queued, ended in one of three ways, in turn: a
    task ``k{j}`` cancelled; a task ``k{j}`` replaced by a short task under its name
    (``ExistingWorkPolicy.REPLACE``, the replacement writing a ledger of its own); a chain
    ``q{j}`` of two long steps cancelled by its id (the second step, handed on with the
    first on its executor, must never begin). With ``heavy``, the tasks of every other
    three calls are heavy (``is_heavy_task``; half the cancelled and replaced tasks): a
    heavy cancel only asks, and the engine answers once the heavy worker has been told.
    Half of those runs are cooperative (ChaosLedger), half *stubborn*: they ignore the
    cancel and sleep ``STUBBORN_MS``, so the engine must stop their worker after
    ``heavy_cancel_grace_s`` (``stubborn``). The instant each call returned is kept. Acknowledged,
    each holds if no run of the old work begins or finishes after that instant
    (``SLACK_S``: the ledger's rounding): ``ran_after_cancel``; a cancel that said it
    cancelled something (``cancel()`` > 0) leaves its task CANCELLED: ``cancel_lost`` (a
    cancel retried across a scheduler restart may say 0 although its first try took; only
    the first rule covers those); and a replacement acknowledged ends SUCCEEDED, having
    run: ``replacement_lost``. A run that finishes after the answer in a process the
    nemesis paused (``check(paused_pids)``) had begun before and was stopped still while
    its cancel waited: it could not be told, as a killed one could not; it is counted
    apart (``finished_after_cancel_when_paused``). A run *beginning* after it never is."""

    LONG_MS = 3_000
    STUBBORN_MS = 30_000  # far past the grace: a stubborn run that finishes was never stopped
    LAG = 2
    SLACK_S = 0.01  # the ledger's times are rounded to the millisecond

    def __init__(self, sched: Any, ledger: Path, heavy: bool = False) -> None:
        self.sched = sched
        self.ledger = ledger
        self.heavy = heavy
        self.replacements = ledger.with_name(ledger.name + "-replacements")
        self.payload = json.dumps({"ledger": str(ledger), "sleep_ms": self.LONG_MS})
        self.heavy_payload = json.dumps({"ledger": str(ledger), "sleep_ms": self.LONG_MS,
                                         "cooperative": True})
        self.stubborn_payload = json.dumps({"ledger": str(ledger), "sleep_ms": self.STUBBORN_MS})
        self.heavy_ids: set[str] = set()
        self.stubborn_ids: set[str] = set()
        self.short = json.dumps({"ledger": str(self.replacements), "sleep_ms": 10})
        self.enqueued: list[str] = []
        self.steps: dict[str, list[str]] = {}  # a chain's id -> its tasks' ids
        self.acked: dict[str, tuple[float, int]] = {}  # cancelled id -> (when cancel() returned, its answer)
        self.called: dict[str, float] = {}  # cancelled id -> when cancel() was called
        self.replaced: dict[str, float] = {}  # replaced id -> when the REPLACE was answered SUCCESS

    def step(self, j: int) -> None:
        try:
            if j % 3 == 2:
                a, b = (kmpray.TaskRequest("ChaosLedger", id=f"q{j}-{s}", input=self.payload) for s in "ab")
                chain = self.sched.begin_with(a).then(b).with_id(f"q{j}")
                if chain.enqueue() is kmpray.ScheduleResult.SUCCESS:
                    self.steps[f"q{j}"] = [a.id, b.id]
                    self.enqueued.append(f"q{j}")
            else:
                heavy = self.heavy and (j // 3) % 2 == 1  # half the cancels and half the REPLACEs
                stubborn = heavy and (j // 3) % 4 == 3  # half of those
                payload = self.stubborn_payload if stubborn else self.heavy_payload if heavy else self.payload
                # (stubborn: expedited, ahead of queued heavy runs, so that more have begun by their cancel)
                constraints = kmpray.Constraints(is_heavy_task=True, expedited=stubborn) if heavy else None
                self.sched.enqueue(f"k{j}", kmpray.TaskTrigger.OneTime(), "ChaosLedger", input=payload,
                                   constraints=constraints)
                self.enqueued.append(f"k{j}")
                if heavy:
                    self.heavy_ids.add(f"k{j}")
                if stubborn:
                    self.stubborn_ids.add(f"k{j}")
        except Exception:
            pass  # not acknowledged: nothing to cancel
        if len(self.enqueued) > self.LAG:
            name = self.enqueued[-1 - self.LAG]
            if name.startswith("q") or int(name[1:]) % 3 == 0:
                self._cancel(name)
            else:
                self._replace(name)

    def finish(self) -> None:
        """Cancel the last ``LAG`` too (none runs its whole length into the drain)."""
        for name in self.enqueued[-self.LAG:]:
            if name not in self.acked and name not in self.replaced:
                self._cancel(name)

    def _cancel(self, name: str) -> None:
        called = time.time()
        try:
            n = self.sched.cancel(name)
        except Exception:
            return  # not acknowledged
        self.acked[name] = (time.time(), n)
        self.called[name] = called

    def _replace(self, name: str) -> None:
        policy = kmpray.Constraints(existing_work_policy=kmpray.ExistingWorkPolicy.REPLACE)
        try:
            result = self.sched.enqueue(name, kmpray.TaskTrigger.OneTime(), "ChaosLedger", input=self.short,
                                        constraints=policy)
        except Exception:
            return  # not acknowledged
        if result is kmpray.ScheduleResult.SUCCESS:
            self.replaced[name] = time.time()

    def stubborn(self, stops: EngineStops, wait_s: float = 30.0) -> dict[str, Any]:
        """The stubborn heavy runs (they ignore their cancel) of acknowledged cancels and
        REPLACEs. Each that had begun must be stopped by the engine killing its worker's
        process once ``heavy_cancel_grace_s`` is over: waits up to ``wait_s`` for every
        such process to be gone (a kill by the nemesis ends one as well). ``stubborn_ran_out``: one that
        finished after its answer (it ran its whole ``STUBBORN_MS``: never stopped);
        ``stubborn_still_running``: one whose process still lives after the wait.
        ``stubborn_stop_s``: from each answer to the engine's stop of that run (as ``stops``
        saw it), which the grace sets (a paused or restarted scheduler,
        whose successor stops it again, makes it longer)."""
        ended = {name: at for name, at in self._ended().items() if name in self.stubborn_ids}
        started = {parts[1]: int(parts[3]) for parts in ledger_lines(self.ledger) if parts[1] in ended}
        ran_out = sorted(name for name, times in ledger_times(self.ledger, "finish").items()
                         if name in ended and any(t > ended[name] + self.SLACK_S for t in times))
        deadline = time.monotonic() + wait_s
        def running() -> list[str]:
            return sorted(n for n, pid in started.items() if n not in ran_out and not process_gone(pid))

        while (alive := running()) and time.monotonic() < deadline:
            time.sleep(0.2)
        stops.look()
        stopped_at: dict[str, float] = {}  # task id -> when the engine stopped its worker (cancel ignored)
        for e in stops.seen.values():
            words = str(e.get("reason", "")).split()
            if len(words) > 2 and words[0] == "run" and words[2] == "ignored":
                stopped_at.setdefault(words[1], e["at_ms"] / 1000)
        waits = [(stopped_at[name] - ended[name]) * 1000 for name in started if name in stopped_at]
        stop_s = {k: round(ms / 1000, 3) for k, ms in percentiles(waits).items()} if waits else None
        return {
            "stubborn_cancels_acknowledged": len(ended),
            "stubborn_begun": len(started),
            "stubborn_stopped_by_engine": sum(1 for name in started if name in stopped_at),
            "stubborn_stop_s": stop_s,
            "stubborn_ran_out": len(ran_out),
            "stubborn_still_running": len(alive),
            "stubborn_examples": (ran_out + alive)[:10],
        }

    def _ended(self) -> dict[str, float]:
        """Each acknowledged cancel's or REPLACE's name -> the instant its call returned."""
        return {**{name: at for name, (at, _n) in self.acked.items()}, **self.replaced}

    def check(self, paused_pids: set[int] | frozenset[int] = frozenset()) -> dict[str, Any]:
        ended = self._ended()
        for chain, tasks in self.steps.items():  # a chain's tasks: by its cancel's instant
            if chain in ended:
                ended.update(dict.fromkeys(tasks, ended.pop(chain)))
        states = {t.id: t.state for t in self.sched.list_tasks() if t.id in ended}
        # The old work's runs (the replacements write a ledger of their own).
        start_lines, finish_lines = ledger_lines(self.ledger), ledger_lines(self.ledger, "finish")
        starts, all_finishes = times_in(start_lines), times_in(finish_lines)
        finishes = times_in(finish_lines, paused_pids)
        times = {name: starts.get(name, []) + finishes.get(name, []) for name in ended}
        when_paused = sorted(name for name, at in ended.items()
                             if any(t > at + self.SLACK_S for t in all_finishes.get(name, []))
                             and not any(t > at + self.SLACK_S for t in finishes.get(name, [])))
        after = sorted(name for name, at in ended.items()
                       if any(t > at + self.SLACK_S for t in times.get(name, [])))
        done = (kmpray.TaskState.CANCELLED, kmpray.TaskState.SUCCEEDED)  # a chain's first step may have ended
        lost = sorted(name for name, (_at, n) in self.acked.items() if n > 0 and (
            any(states.get(task) not in done for task in self.steps[name]) if name in self.steps
            else states.get(name) is not kmpray.TaskState.CANCELLED))
        ran = {parts[1] for parts in ledger_lines(self.replacements, "finish")}
        replacement_lost = sorted(name for name in self.replaced
                                  if states.get(name) is not kmpray.TaskState.SUCCEEDED or name not in ran)
        return {
            "cancels_acknowledged": len(self.acked),
            "chain_cancels_acknowledged": sum(1 for name in self.acked if name in self.steps),
            "second_steps_begun": sum(1 for tasks in self.steps.values() if times.get(tasks[1])),
            # A second step may begin before its chain's cancel is answered: the first step
            # had ended before the cancel was called (with calls held up by restarts, "two
            # calls before" can be seconds), or while the call waited for a restarting
            # scheduler. Each such step's first start against the call (negative: before it
            # was made) and how long the call took: only one begun after the answer is wrong
            # (``ran_after_cancel``).
            "second_steps_begun_detail": [
                {"id": chain, "began_after_call_s": round(min(starts[tasks[1]]) - self.called[chain], 3),
                 "call_s": round(self.acked[chain][0] - self.called[chain], 3)}
                for chain, tasks in self.steps.items() if starts.get(tasks[1]) and chain in self.called][:10],
            "replaces_acknowledged": len(self.replaced),
            "heavy_cancels_acknowledged": len(self.heavy_ids & self.acked.keys()),
            "heavy_replaces_acknowledged": len(self.heavy_ids & self.replaced.keys()),
            "heavy_ran_after_cancel": len(self.heavy_ids.intersection(after)),
            "cancelled_running": sum(1 for name in ended if times.get(name)),  # had begun
            "ran_after_cancel": len(after),
            "finished_after_cancel_when_paused": len(when_paused),
            "ran_after_cancel_examples": after[:10],
            # What a failure needs to be read (session 53: one in a CI run, none in 35 runs
            # after it): how each call ended, and its old work's starts and finishes after it.
            "ran_after_cancel_detail": [_late(name, ended[name], name in self.replaced, starts, finishes,
                                              start_lines + finish_lines)
                                        for name in after[:10]],
            "cancel_lost": len(lost),
            "replacement_lost": len(replacement_lost),
            "replacement_lost_examples": replacement_lost[:10],
        }
