"""Workers the integration tests run. Defined in a test module on purpose: they must
ship to Ray workers by value, as a notebook's classes do."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import kmpray
from kmpray import WorkerResult


def _cfg(input: str | None) -> dict[str, Any]:  # noqa: A002
    if input and input.startswith("{"):
        return dict(json.loads(input))
    return {}


def count_runs(path: str) -> int:
    p = Path(path)
    return len(p.read_text().splitlines()) if p.exists() else 0


class Echo(kmpray.CommonWorker):
    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        cfg = _cfg(input)
        if "log" in cfg:
            with open(cfg["log"], "a") as f:
                f.write(f"{ctx.task_id} {ctx.run_attempt_count}\n")
        return WorkerResult.Success(message="echo", data={"input": input, "attempt": ctx.run_attempt_count})


class SyncBool(kmpray.CommonWorker):
    def do_work(self, input: str | None) -> bool:  # noqa: A002
        return input == "yes"


class Raises(kmpray.CommonWorker):
    def do_work(self, input: str | None) -> Any:  # noqa: A002
        raise RuntimeError(f"kaboom {input}")


class FailsThenSucceeds(kmpray.CommonWorker):
    """Retry until attempt ``n`` (from input), then succeed."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        if ctx.run_attempt_count < int(input or "1"):
            return WorkerResult.Retry(reason=f"attempt {ctx.run_attempt_count}")
        return WorkerResult.Success(data={"attempts": ctx.run_attempt_count + 1})


class Blocks(kmpray.CommonWorker):
    """Runs until the file ``release`` exists or it is cancelled; writes ``started`` first
    (and ``ended``, given, last)."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        cfg = _cfg(input)
        with open(cfg["started"], "a") as f:
            f.write(f"{ctx.task_id}\n")
        deadline = time.monotonic() + cfg.get("max_s", 60)
        while not Path(cfg["release"]).exists() and time.monotonic() < deadline:
            if ctx.is_cancelled():
                return WorkerResult.Failure("saw cancel")
            await asyncio.sleep(0.01)
        if "ended" in cfg:  # which process ended it
            with open(cfg["ended"], "a") as f:
                f.write(f"{ctx.task_id} {os.getpid()}\n")
        return WorkerResult.Success(data={"released": True})


class Sleeps(kmpray.CommonWorker):
    async def do_work(self, input: str | None) -> Any:  # noqa: A002
        await asyncio.sleep(float(input or "10"))
        return True


class Progress(kmpray.CommonWorker):
    """Reports 25, 50, 75, 100: awaited and plain calls in turn (both forms are the API)."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        for pct in (25, 50, 75, 100):
            if pct % 50:
                await ctx.report_progress(pct, f"step {pct}")
            else:
                ctx.report_progress(pct, f"step {pct}")
        return WorkerResult.Success(data={"done": True})


class Floods(kmpray.CommonWorker):
    """Reports progress ``input`` times in a tight loop, from its thread (a sync worker)."""

    def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> bool:  # noqa: A002
        n = int(input or "1000")
        for i in range(1, n + 1):
            ctx.report_progress(i * 100 // n, f"{i}/{n}")
        return True


class BrokenInit(kmpray.CommonWorker):
    def __init__(self) -> None:
        raise ValueError("no config")

    async def do_work(self, input: str | None) -> Any:  # noqa: A002
        return True


class Exits(kmpray.CommonWorker):
    """``sys.exit(code)`` in do_work: sync by default, async given ``async:CODE``;
    ``cancelled`` / ``generator-exit``: raises asyncio.CancelledError / GeneratorExit itself."""

    def do_work(self, input: str | None) -> Any:  # noqa: A002
        import asyncio
        import sys

        kind, _, code = (input or "sync:3").partition(":")
        if kind in ("cancelled", "generator-exit"):
            async def raises() -> None:
                raise asyncio.CancelledError if kind == "cancelled" else GeneratorExit(kind)

            return raises()
        if kind == "async":
            async def leave() -> None:
                sys.exit(int(code))

            return leave()  # awaited by the executor, on its own loop
        sys.exit(int(code))


class EnqueuesChild(kmpray.CommonWorker):
    """A task that enqueues a task: ``kmpray.connect()`` in worker code."""

    def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        sched = kmpray.connect()
        answer = sched.enqueue(f"{ctx.task_id}-child", kmpray.TaskTrigger.OneTime(), "Echo", input=input)
        return WorkerResult.Success(data={"enqueued": answer.value, "namespace": sched.namespace,
                                          "cached": sched is kmpray.connect()})


class EnqueuesChildAsync(kmpray.CommonWorker):
    """The same from an ``async def do_work``, as the README tells such workers to write it."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        import ray

        looked_up, get_actor = [], ray.get_actor  # the blocking look-ups connect() makes here
        ray.get_actor = lambda *a, **kw: looked_up.append(a) or get_actor(*a, **kw)
        try:
            sched = kmpray.connect()
        finally:
            ray.get_actor = get_actor
        answer = await sched.enqueue_async(f"{ctx.task_id}-child", kmpray.TaskTrigger.OneTime(), "Echo")
        return WorkerResult.Success(data={"enqueued": answer.value, "lookups": len(looked_up)})


class ExitsInInit(BrokenInit):
    def __init__(self) -> None:  # sys.exit() where BrokenInit raises
        raise SystemExit("no config")


class CancelsInInit(BrokenInit):
    def __init__(self) -> None:  # a CancelledError of its own where BrokenInit raises
        import asyncio

        raise asyncio.CancelledError


class Nests(kmpray.CommonWorker):
    """Success.data with dicts nested ``input`` levels deep (``emit:N``: emits an event
    with such output_data instead)."""

    def do_work(self, input: str | None) -> Any:  # noqa: A002
        emit, _, levels = (input or "1").rpartition(":")
        data: dict[str, Any] = {}
        inner = data
        for _ in range(int(levels) - 1):
            inner["n"] = {}
            inner = inner["n"]
        if emit:
            kmpray.TaskEventBus.emit(kmpray.TaskCompletionEvent("Nests", True, output_data=data))
        return kmpray.WorkerResult.Success(data=data)


class HugeOutput(kmpray.CommonWorker):
    async def do_work(self, input: str | None) -> Any:  # noqa: A002
        return WorkerResult.Success(data={"n": 2**80})


class EmitsMany(kmpray.CommonWorker):
    """Emits ``n`` events numbered 0..n-1 (message), one every ``gap_ms``, without waiting."""

    def do_work(self, input: str | None) -> Any:  # noqa: A002
        import time

        n, gap_ms = (int(x) for x in (input or "100:1").split(":"))
        for i in range(n):
            kmpray.TaskEventBus.emit(kmpray.TaskCompletionEvent("emitted", True, str(i)))
            time.sleep(gap_ms / 1000)
        return WorkerResult.Success()


class EmitsEvent(kmpray.CommonWorker):
    async def do_work(self, input: str | None) -> Any:  # noqa: A002
        kmpray.TaskEventBus.emit(kmpray.TaskCompletionEvent("custom", True, f"from worker {input}"))
        return True


class Step(kmpray.CommonWorker):
    """A chain step: logs its run, counts the hops so far, optionally blocks or fails."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        cfg = _cfg(input)
        log = cfg.get("log") or ctx.upstream_data.get("log")
        if log:
            with open(log, "a") as f:
                f.write(f"{ctx.task_id}\n")
        gate = cfg.get("gate") or ctx.upstream_data.get("gate")
        if gate and ctx.task_id in cfg.get("block", ctx.upstream_data.get("block", [])):
            while not Path(gate).exists():
                await asyncio.sleep(0.01)
        if ctx.task_id in cfg.get("fail", ctx.upstream_data.get("fail", [])):
            return WorkerResult.Failure(f"{ctx.task_id} failed on purpose")
        hops = ctx.upstream_data.get("hops", 0)
        hops = max(hops) if isinstance(hops, list) else hops
        out = {k: v for k, v in {**ctx.upstream_data, **cfg}.items() if k in ("log", "gate", "block", "fail")}
        return WorkerResult.Success(data={**out, "hops": hops + 1, "by": ctx.task_id})


class Noop(kmpray.CommonWorker):
    async def do_work(self, input: str | None) -> bool:  # noqa: A002
        return True


class Stamp(kmpray.CommonWorker):
    async def do_work(self, input: str | None) -> Any:  # noqa: A002
        return WorkerResult.Success(data={"began_ms": time.time() * 1000})


ALL = {
    "Noop": Noop,
    "Stamp": Stamp,
    "Step": Step,
    "Echo": Echo,
    "SyncBool": SyncBool,
    "Raises": Raises,
    "FailsThenSucceeds": FailsThenSucceeds,
    "Blocks": Blocks,
    "Sleeps": Sleeps,
    "Progress": Progress,
    "Floods": Floods,
    "BrokenInit": BrokenInit,
    "Exits": Exits,
    "ExitsInInit": ExitsInInit,
    "EnqueuesChild": EnqueuesChild,
    "EnqueuesChildAsync": EnqueuesChildAsync,
    "CancelsInInit": CancelsInInit,
    "Nests": Nests,
    "HugeOutput": HugeOutput,
    "EmitsEvent": EmitsEvent,
}


def register_all(sched: Any) -> None:
    """Every class above, in one message per shard (``register_worker`` once each: ~0.15 s
    of each test engine's start)."""
    sched._register_many(ALL)


class WarmModel(kmpray.CommonWorker):
    """A heavy worker whose expensive state survives between tasks of the same actor."""

    def __init__(self) -> None:
        import os

        self.loaded_by = os.getpid()
        self.calls = 0

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        self.calls += 1
        ctx.report_progress(50, "inferring")
        return WorkerResult.Success(data={"pid": self.loaded_by, "calls": self.calls})


class WarmModelV2(WarmModel):
    """WarmModel registered again under the same name (a notebook's next edit)."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        self.calls += 1
        return WorkerResult.Success(data={"pid": self.loaded_by, "calls": self.calls, "v": 2})


class CooperativeHeavy(kmpray.CommonWorker):
    """Polls ctx.is_cancelled(); writes a marker when it notices."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        cfg = _cfg(input)
        Path(cfg["started"]).write_text("1")
        while not ctx.is_cancelled():
            await asyncio.sleep(0.01)
        Path(cfg["noticed"]).write_text("1")
        return WorkerResult.Failure("stopped on request")


class StubbornHeavy(kmpray.CommonWorker):
    """A sync worker stuck in a blocking call: only a forced stop ends it."""

    def do_work(self, input: str | None) -> Any:  # noqa: A002
        cfg = _cfg(input)
        Path(cfg["started"]).write_text("1")
        time.sleep(120)
        return True


class SleepsInThread(kmpray.CommonWorker):
    """A sync worker sleeping ``s`` seconds; writes "start|end task pid time" lines to ``ledger``."""

    def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        cfg = _cfg(input)

        def line(what: str) -> None:
            with open(cfg["ledger"], "a") as f:
                f.write(f"{what} {ctx.task_id} {os.getpid()} {time.time():.3f}\n")

        line("start")
        time.sleep(cfg["s"])
        line("end")
        return True


ALL.update({"WarmModel": WarmModel, "CooperativeHeavy": CooperativeHeavy, "StubbornHeavy": StubbornHeavy,
            "SleepsInThread": SleepsInThread})


class Blocker(kmpray.CommonWorker):
    """An async worker that calls blocking code: the mistake issue #20 is about. It blocks
    its executor's event loop for ``s`` seconds, or, given ``release``, until that file
    exists (``max_s`` at most)."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        cfg = _cfg(input)
        with open(cfg["ledger"], "a") as f:
            f.write(f"start {ctx.task_id}\n")
        if "release" in cfg:
            deadline = time.monotonic() + cfg.get("max_s", 60)
            while not Path(cfg["release"]).exists() and time.monotonic() < deadline:
                time.sleep(0.05)  # blocks the executor's event loop
        else:
            time.sleep(cfg.get("s", 5))  # blocks the executor's event loop
        with open(cfg["ledger"], "a") as f:
            f.write(f"end {ctx.task_id}\n")
        return True


class MarkedBlocker(Blocker):
    """The same code, declared honestly: its async do_work runs in a thread."""

    blocking = True


class LoadsInInit(kmpray.CommonWorker):
    """A sync worker whose constructor takes 2 s, as loading a model does."""

    def __init__(self) -> None:
        time.sleep(2)

    def do_work(self, input: str | None) -> Any:  # noqa: A002
        return True


class Ledgered(kmpray.CommonWorker):
    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        with open(_cfg(input)["ledger"], "a") as f:
            f.write(f"start {ctx.task_id}\n")
        return True


class SyncGather(kmpray.CommonWorker):
    """A sync worker (blocking I/O, say) that waits, in its thread, until ``n`` runs have
    started (a ledger line each; ``max_s`` at most): it meets them only if that many sync
    runs can run at once."""

    def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        cfg = _cfg(input)
        with open(cfg["ledger"], "a") as f:
            f.write(f"start {ctx.task_id}\n")
        deadline = time.monotonic() + cfg.get("max_s", 20)
        while count_runs(cfg["ledger"]) < cfg["n"] and time.monotonic() < deadline:
            time.sleep(0.02)
        return WorkerResult.Success(data={"met": count_runs(cfg["ledger"]) >= cfg["n"]})


def _load_slowly() -> str:
    time.sleep(0.5)  # as a module importing torch would, when its class is unpickled
    return "loaded"


class _SlowToLoad:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _load_slowly, ()


class SlowToLoad(kmpray.CommonWorker):
    """Quick to run, slow to unpickle (0.5 s) in the process that runs it."""

    table = _SlowToLoad()

    async def do_work(self, input: str | None) -> Any:  # noqa: A002
        return WorkerResult.Success(data={"table": self.table})


ALL.update({"Blocker": Blocker, "MarkedBlocker": MarkedBlocker, "Ledgered": Ledgered, "SyncGather": SyncGather,
            "LoadsInInit": LoadsInInit,
            "SlowToLoad": SlowToLoad})


class DiesAfterFinishing(kmpray.CommonWorker):
    """Logs its start, runs past the "began" notice (so its result goes by report, not in
    a submit's answer), says its progress, and has its process SIGKILLed the moment it
    returns: once (a marker file), right after the result left."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        cfg = _cfg(input)
        with open(cfg["ledger"], "a") as f:
            f.write(f"start {ctx.task_id}\n")
        await asyncio.sleep(0.1)
        ctx.report_progress(90, "almost")  # through Ray: its call in flight, the result waits behind it
        if not os.path.exists(cfg["marker"]):
            Path(cfg["marker"]).touch()
            asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGKILL)
        return WorkerResult.Success(data={"pid": os.getpid()})


class DiesAtOnceFirstTime(kmpray.CommonWorker):
    """Logs its start; the first time (a marker file) its process is SIGKILLed at once,
    before its submit is answered; then it succeeds."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        cfg = _cfg(input)
        with open(cfg["ledger"], "a") as f:
            f.write(f"start {ctx.task_id} {os.getpid()}\n")
        if not os.path.exists(cfg["marker"]):
            Path(cfg["marker"]).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return WorkerResult.Success(data={"pid": os.getpid()})


ALL.update({"DiesAfterFinishing": DiesAfterFinishing, "DiesAtOnceFirstTime": DiesAtOnceFirstTime})


class ArrayMaker(kmpray.CommonWorker):
    """Returns numpy arrays (and bytes) made from its JSON config; logs each run."""

    def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        import numpy as np

        cfg = _cfg(input)
        if "log" in cfg:
            with open(cfg["log"], "a") as f:
                f.write(f"{ctx.task_id}\n")
        n, dtype, seed = cfg.get("n", 10), cfg.get("dtype", "float64"), cfg.get("seed", 0)
        arr = (np.arange(n, dtype=np.float64) + seed).astype(dtype).reshape(cfg.get("shape", [n]))
        data: dict[str, Any] = {"arr": arr, "meta": {"n": n, "dtype": dtype}, "raw": bytes([seed % 256]) * 300_000}
        if "bad" in cfg:
            data["bad"] = {"object": np.array([object()], dtype=object), "set": {1}}[cfg["bad"]]
        return WorkerResult.Success(data=data)


class ArraySum(kmpray.CommonWorker):
    """Sums the array(s) it gets in ctx.upstream_data, and says what it saw."""

    def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        import numpy as np

        up = ctx.upstream_data
        arrs = up["arr"] if isinstance(up["arr"], list) else [up["arr"]]
        raws = up["raw"] if isinstance(up["raw"], list) else [up["raw"]]
        return WorkerResult.Success(data={
            "sum": float(sum(float(np.asarray(a).real.astype(np.float64).sum()) for a in arrs)),
            "dtypes": [str(a.dtype) for a in arrs],
            "shapes": [list(a.shape) for a in arrs],
            "read_only": all(not a.flags.writeable for a in arrs),
            "raw": [len(r) for r in raws] if all(isinstance(r, bytes) for r in raws) else None,
            "input_chars": len(input or ""),
        })


ALL.update({"ArrayMaker": ArrayMaker, "ArraySum": ArraySum})
