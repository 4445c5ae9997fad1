"""The README's picture of ``kmpray dashboard``: a steady trickle of tasks and a chain
held at its merge step, photographed in headless Chromium after ~20 s of plots.

    python -m bench.dashboard_shot [OUT.png]   (needs the test extra and /usr/bin/chromium)
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import kmpray
from kmpray import TaskRequest, WorkerResult

OUT = Path(__file__).resolve().parent.parent / "kmpray" / "dashboard" / "screenshot.png"


class Work(kmpray.CommonWorker):
    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        await asyncio.sleep(random.uniform(0.05, 0.3))
        ctx.report_progress(50)
        await asyncio.sleep(random.uniform(0.05, 0.3))
        return WorkerResult.Success(data={"n": random.randint(1, 100)})


class Hold(kmpray.CommonWorker):
    async def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        while not Path(input or "").exists() and not ctx.is_cancelled():
            await asyncio.sleep(0.05)
        return True


def main(out: Path = OUT, seconds: float = 20.0) -> None:
    import ray
    import uvicorn
    from playwright.sync_api import sync_playwright

    from kmpray.dashboard import create_app

    from .common import scratch_dir

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    tmp = Path(scratch_dir("kmpray-dashboard-shot-"))
    sched = kmpray.connect(namespace="dashboard-shot", state_dir=str(tmp / "state"))
    sched.register_worker(Work)
    sched.register_worker(Hold)
    gate = tmp / "gate"
    chain = (
        sched.begin_with(TaskRequest("Work", id="fetch"))
        .then([TaskRequest("Work", id=f"part-{i}") for i in range(3)])
        .then(TaskRequest("Hold", str(gate), id="merge"))
        .then(TaskRequest("Work", id="publish"))
    )
    chain.with_id("nightly-report").enqueue()
    stop = threading.Event()

    def trickle() -> None:
        i = 0
        while not stop.is_set():
            sched.enqueue_many([TaskRequest("Work", id=f"job-{i + k}") for k in range(15)])
            i += 15
            stop.wait(1.0)

    threading.Thread(target=trickle, daemon=True).start()
    server = uvicorn.Server(
        uvicorn.Config(create_app(sched, poll_s=1.0), host="127.0.0.1", port=8786, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        page.goto("http://127.0.0.1:8786/")
        time.sleep(seconds)
        page.select_option("#chain-select", "nightly-report")
        page.select_option("#worker-filter", "Hold")
        page.click('#tasks tr[data-id="merge"]')
        page.select_option("#worker-filter", "")
        time.sleep(2.5)
        page.screenshot(path=str(out))
        browser.close()
    stop.set()
    gate.touch()
    server.should_exit = True
    sched.shutdown()
    ray.shutdown()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
