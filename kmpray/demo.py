"""``kmpray demo``: the main job on an embedded local Ray, in virtual time."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

import kmpray
from kmpray import (
    FIFTEEN_MINUTES,
    ONE_MINUTE,
    Constraints,
    InputMerger,
    QualityOfService,
    TaskRequest,
    TaskTrigger,
    WorkerResult,
)

from .display import tasks_text, worker_names


@kmpray.worker("SyncWorker")
class SyncWorker(kmpray.CommonWorker):
    """Pretends to sync records in pages, reporting progress."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        pages = json.loads(input or "{}").get("pages", 4)
        for page in range(1, pages + 1):
            ctx.report_progress(page * 100 // pages, f"page {page}/{pages}")
        return WorkerResult.Success(message="synced", data={"records": pages * 50})


@kmpray.worker("FlakyUploadWorker")
class FlakyUploadWorker(kmpray.CommonWorker):
    """Fails twice with a retryable error, then uploads."""

    def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        if ctx.run_attempt_count < 2:
            return WorkerResult.Failure(f"server busy (attempt {ctx.run_attempt_count + 1})", should_retry=True)
        return WorkerResult.Success(message="uploaded", data={"bytes": 4096})


@kmpray.worker("CleanupWorker")
class CleanupWorker(kmpray.CommonWorker):
    def do_work(self, input: str | None) -> bool:  # noqa: A002
        return True


@kmpray.worker("ReportWorker")
class ReportWorker(kmpray.CommonWorker):
    """The last step of a chain: sees every prerequisite's output (ARRAY merger)."""

    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        records = ctx.upstream_data.get("records", [])
        total = sum(records) if isinstance(records, list) else records
        return WorkerResult.Success(message=f"report over {total} records from {len(records)} syncs",
                                    data={"total": total})


def _print_event(event: Any) -> None:
    if event.kind == "progress":
        bar = "#" * (event.progress // 10)
        print(f"  progress  {event.task_id:<16} [{bar:<10}] {event.progress:>3}% {event.message or ''}")
    else:
        mark = "ok  " if event.success else "fail"
        said = " ".join(str(part) for part in (event.message, event.output_data) if part)
        print(f"  {mark}      {event.task_id:<16} {event.task_name}" + (f": {said}" if said else ""))
    sys.stdout.flush()


def run(state_dir: str | None = None, hours: int = 1) -> int:
    started = time.monotonic()
    # Without --state-dir the store is a temp folder's, removed at the end (before session 52
    # every demo left one behind); with it, kept there.
    state = state_dir or tempfile.mkdtemp(prefix="kmpray-demo-")
    kept = "kept" if state_dir else "removed at the end; --state-dir keeps it"
    print(f"kmpray demo: starting an embedded Ray and the engine (state in {state}, {kept}) ...")
    # address="local": always its own embedded Ray, never a cluster some other process left behind.
    scheduler = kmpray.connect(address="local", namespace=f"kmpray-demo-{int(time.time())}", state_dir=state,
                               virtual_time=True)
    printed = threading.Lock()

    ended = threading.Event()  # the summary is printed: no event line after it

    shown = [0]  # events printed: the log of a new engine numbers them 1, 2, ... (cursors)

    def on_event(event: Any) -> None:
        with printed:
            if not ended.is_set():
                _print_event(event)
            shown[0] += 1

    events = scheduler.events.subscribe(since=0, callback=on_event)
    try:
        workers = worker_names(scheduler.status()["workers"])
        print(f"engine up in {time.monotonic() - started:.1f} s; workers: {workers}\n")
        print("enqueue: one-time sync, retrying upload, periodic cleanup, exact sync, and a chain "
              "(two parallel syncs, then a report)")
        results = {
            "sync-now": scheduler.enqueue(
                "sync-now", TaskTrigger.OneTime(), "SyncWorker", input='{"pages": 5}',
                constraints=Constraints(expedited=True, qos=QualityOfService.HIGH),
            ),
            "upload": scheduler.enqueue(
                "upload", TaskTrigger.OneTime(), "FlakyUploadWorker",
                constraints=Constraints(backoff_delay_ms=30_000, max_retries=3),
            ),
            "cleanup": scheduler.enqueue("cleanup", TaskTrigger.Periodic(FIFTEEN_MINUTES), "CleanupWorker"),
            "nightly": scheduler.enqueue(
                "nightly", TaskTrigger.Exact(scheduler.now_ms() + 40 * ONE_MINUTE), "SyncWorker"
            ),
            "daily-report (chain)": scheduler.begin_with(
                [TaskRequest("SyncWorker", '{"pages": 2}', id="sync-eu"),
                 TaskRequest("SyncWorker", '{"pages": 3}', id="sync-us")]
            ).then(TaskRequest("ReportWorker", id="report", input_merger=InputMerger.ARRAY))
            .with_id("daily-report").enqueue(),
        }
        for name, result in results.items():
            print(f"  {name:<20} -> {result.value}")
        scheduler.wait("sync-now", timeout_s=60)
        scheduler.wait("daily-report", timeout_s=60)

        def caught_up() -> None:
            """Until the printer has printed every event the broker holds (bounded)."""
            last, deadline = scheduler.events.last_cursor(), time.monotonic() + 10
            while shown[0] < last and time.monotonic() < deadline:
                time.sleep(0.02)

        # advance_time returns once its runs' events are at the broker: 0 ms delivers those of
        # the runs above (wait() answers once a result is stored, its event follows).
        scheduler.advance_time(0)
        caught_up()
        for step in range(1, hours * 4 + 1):
            with printed:
                print(f"-- virtual time +{step * 15} min")
            scheduler.advance_time(FIFTEEN_MINUTES)
            caught_up()  # this quarter's events printed under its line, before the next
        scheduler.wait("upload", timeout_s=60)
        infos = sorted(scheduler.list_tasks(), key=lambda i: i.created_at_ms)
        with printed:
            ended.set()  # an event delivered from now on (its callback waits on this lock) is not printed
            print("\nsummary")
            print(tasks_text(infos))
            print(f"\n{len(infos)} tasks, {sum(i.run_count for i in infos)} runs, "
                  f"{hours} virtual hour(s) in {time.monotonic() - started:.1f} s of real time")
        ok = all(i.state.value in ("SUCCEEDED", "ENQUEUED") for i in infos)
        return 0 if ok else 1
    finally:
        events.close()
        scheduler.shutdown()
        if state_dir is None:
            shutil.rmtree(state, ignore_errors=True)

