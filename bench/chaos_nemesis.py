"""The chaos driver's nemesis (bench/chaos.py): a thread that kills, or pauses, an engine
process every so often while the load runs.

A kill is a SIGKILL. A pause (the ``pauses`` scenario) is a SIGSTOP and, a drawn
0.5-15 s later, a SIGCONT: the process stands still with its sockets open, as under a
long GC pause, a stalled VM or a swap storm, and then goes on as if nothing happened,
with whatever it held (runs, answers, reports, events) now late. Ray does not notice a
stopped process (a worker's death is its socket closing), so only the engine's own
timeouts see it: ``ping_timeout_s`` (10 s by default) for executors and heavy workers,
about a third of the pauses' length range lies past it. The ``storm`` scenario draws each
strike's kind, half kills and half pauses, and may kill a process that stands still (a
frozen machine's watchdog, an OOM killer): its resume never comes.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from typing import Any

from kmpray.actors.names import BROKER, CHAIN, ORACLE, shard_namespace

from .chaos_common import actor_pid, answers_after, scheduler_status

# The mixed nemesis's kinds of victim. The oracle since session 49: it holds the worker
# classes, the device overrides' and the actor subscriptions' copies (actors/registry.py).
MIXED = ("scheduler", "executors", "coordinators", "broker", "oracle")
COMPOSED = ("mixed", "pauses", "storm")  # the scenarios whose victim is any of MIXED
PAUSE_S = (0.5, 15.0)  # how long a pause lasts: uniform in this range (seeded)


class Nemesis(threading.Thread):
    """Kills or pauses a process every ``every_s`` on average until stopped; records each
    recovery. ``pauses`` is the share of strikes that pause (0: kills only, 1: pauses
    only; in between each strike's kind is drawn, seeded).

    Each wait is drawn from ``every_s`` x uniform(0.5, 1.5) (seeded): on a fixed cadence
    the kills locked onto the load's (ten enqueue calls a second, the nemesis's period
    plus a ~2 s recovery a multiple of 100 ms) and struck the same moment of every
    batch's runs each time, a worst case measured as if it were the typical one.

    A paused process is resumed when its pause is over, or at ``resume_all()`` (the driver
    calls it when the load has drained, and on the way out whatever happened). While it
    stands still it is never paused again; a kill may strike it (then it is not resumed)."""

    def __init__(self, ray: Any, scenario: str, namespace: str, every_s: float, seed: int,
                 shards: int = 1, coordinators: int = 0, wait_recovery: bool = True,
                 pauses: float = 0.0) -> None:
        super().__init__(name=f"nemesis-{scenario}", daemon=True)
        self.ray, self.scenario, self.namespace, self.every_s = ray, scenario, namespace, every_s
        self.shards, self.coordinators = shards, coordinators
        # False: the next kill may come while the last victim (or another) is still coming
        # back: a scheduler killed again mid-restore, an executor while its scheduler adopts.
        self.wait_recovery = wait_recovery
        self.pause_share = pauses
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.kills = 0
        self.kills_by_shard = [0] * shards
        self.kills_by_kind: Counter[str] = Counter()  # scheduler, executors, coordinators, broker, oracle
        self.recovery_s: list[float] = []
        self.killed_at: list[float] = []  # wall-clock time of each kill (the timeline)
        self.killed_pids: set[int] = set()  # whose runs may legitimately run again
        self.pauses: list[tuple[int, str, str, float, float]] = []  # (pid, actor, namespace, at, length)
        self.killed_standing = 0  # kills of a process standing still (storm)
        self.failure: str | None = None  # what ended the nemesis early, if anything did
        self._lock = threading.Lock()
        self._standing: dict[tuple[str, str], tuple[int, threading.Timer]] = {}  # paused now, by actor

    @property
    def paused_pids(self) -> set[int]:
        """Every process paused once (its runs may not run again)."""
        return {pid for pid, *_rest in self.pauses}

    @property
    def pauses_s(self) -> list[float]:
        """Each pause's length."""
        return [length for *_rest, length in self.pauses]

    def _victim(self) -> tuple[int, str, str, str] | None:
        """(shard, kind, actor name, its namespace): a shard drawn at random, then its scheduler,
        one of its chain coordinators, or one of its own light executors or heavy workers
        (each shard has a pool)."""
        shard = self.rng.randrange(self.shards)
        namespace = shard_namespace(self.namespace, shard)
        kind = self.rng.choice(MIXED) if self.scenario in COMPOSED else self.scenario
        if kind == "scheduler":
            return shard, kind, "kmpray.scheduler", namespace
        if kind == "coordinators":
            return shard, kind, CHAIN.format(self.rng.randrange(self.coordinators)), namespace
        if kind in ("broker", "oracle"):  # one each for the whole engine, in its namespace (shard 0's)
            return 0, kind, BROKER if kind == "broker" else ORACLE, self.namespace
        if self._paused_now("kmpray.scheduler", namespace):
            return None  # its executors are listed by a scheduler standing still
        status = scheduler_status(self.ray, namespace)
        light = [f"kmpray.executor.{i}" for i in range(status.get("executors", 0))]
        light += [f"kmpray.executor.probation.{k}" for k in range(status.get("probation_executors", 0))]
        heavy = [f"kmpray.heavy.{i}" for i in status.get("heavy_workers", [])]
        if not light + heavy:  # its scheduler is not serving (killed a moment ago): none known
            return None
        return shard, "executors", self.rng.choice(light + heavy), namespace

    def _paused_now(self, name: str, namespace: str) -> bool:
        with self._lock:
            return (name, namespace) in self._standing

    def _pauses_next(self) -> bool:
        """Whether the next strike is a pause (drawn only when both kinds are in play, so a
        kills-only or pauses-only seed draws what it always drew)."""
        if self.pause_share in (0.0, 1.0):
            return self.pause_share == 1.0
        return self.rng.random() < self.pause_share

    def _pid_of(self, name: str, namespace: str, pause: bool) -> tuple[int | None, bool]:
        """The victim's pid, and whether it stands still: one standing still is asked
        nothing (it would not answer), is never paused again, and is killed from its
        recorded pid, its resume dropped."""
        with self._lock:
            standing = self._standing.get((name, namespace))
            if standing is not None:
                if pause:
                    return None, True
                del self._standing[(name, namespace)]
                standing[1].cancel()
                return standing[0], True
        return actor_pid(self.ray, name, namespace), False

    def run(self) -> None:
        try:
            self._strike_until_stopped()
        except BaseException as exc:  # a run whose nemesis died would report its zeros as a pass
            self.failure = f"{type(exc).__name__}: {exc}"
            raise

    def _strike_until_stopped(self) -> None:
        while not self.stop.wait(self.every_s * self.rng.uniform(0.5, 1.5)):
            victim = self._victim()
            if victim is None:
                continue
            shard, kind, name, namespace = victim
            pause = self._pauses_next()
            pid, was_standing = self._pid_of(name, namespace, pause)
            if pid is None:
                continue
            pause_s = self.rng.uniform(*PAUSE_S) if pause else 0.0
            try:
                os.kill(pid, signal.SIGSTOP if pause else signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills += 1
            self.kills_by_shard[shard] += 1
            self.kills_by_kind[kind] += 1
            self.killed_at.append(time.time())
            if pause:
                self._stand(pid, name, namespace, pause_s)
            else:
                self.killed_pids.add(pid)
                self.killed_standing += was_standing
            if self.wait_recovery:
                if pause and self.stop.wait(pause_s):
                    return  # stopped meanwhile: resume_all() resumes it
                self.recovery_s.append(answers_after(self.ray, name, namespace))

    def _stand(self, pid: int, name: str, namespace: str, pause_s: float) -> None:
        """``pid`` stopped: resumed after ``pause_s``."""
        timer = threading.Timer(pause_s, self._resume, (name, namespace))
        timer.daemon = True
        with self._lock:
            self._standing[(name, namespace)] = (pid, timer)
        self.pauses.append((pid, name, namespace, round(time.time(), 3), round(pause_s, 3)))
        timer.start()

    def _resume(self, name: str, namespace: str) -> None:
        with self._lock:
            pid, _timer = self._standing.pop((name, namespace), (None, None))
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def resume_all(self) -> None:
        """Every process still paused goes on now."""
        with self._lock:
            standing = list(self._standing.values())
            self._standing.clear()
        for pid, timer in standing:
            timer.cancel()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
