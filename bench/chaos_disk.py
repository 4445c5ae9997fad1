"""chaos scenario ``disk``: storage faults under a steady load. The engine's state dir is on a
small tmpfs this scenario mounts (root only: anywhere else its result says ``skipped``),
and the nemesis fills that disk to its last byte (a filler file) for ``hold_s`` seconds,
then frees it, ``fills`` times, each after the engine serves again (its scheduler
``ready()``) and ~``every_s`` more (0.5-1.5x, seeded). Ray's own files and the workers'
ledger are elsewhere: only the engine's store, event log, spool and artifacts meet the
full disk.

What the engine promises (README *A full disk*): a store write that fails stores nothing
and acknowledges nothing (those enqueue calls answer FAILED_UNKNOWN, or the call fails:
``refused``), the scheduler restarts from its store and serves again within ~10 s of
room coming back, and results and completion events wait (in the executors, the outbox)
until they can be written. Reported (pass figures):

- ``lost``: acknowledged, never SUCCEEDED (0);
- ``counted_twice``, ``events_missing``: completions per acknowledged task replayed from
  cursor 0 of the event log (0 and 0);
- ``executed_twice``: acknowledged tasks begun twice (the goal is 0: no process is killed
  by the nemesis; a scheduler ending itself after a failed write adopts what its
  executors hold);
- ``chains_not_succeeded``, ``chains_wrong_array``: of the chains enqueued beside the load
  (a ChaosArray step returning a 128 KiB array, an artifact on that disk, then a step
  checking its sum), those not SUCCEEDED and those handed other bytes (none and 0);
  ``array_steps_retried``: first steps whose artifact write the full disk refused (each
  retried, as any refused write of a large value is);
- ``refused`` (> 0: the fills struck writes), ``scheduler_starts`` per shard (each restart
  after a failed write counts), ``integrity``: SQLite's ``integrity_check`` of every store file
  after the run ("ok");
- ``serving_after_free_s`` {p50, max}: from each free to the scheduler serving again (no
  pass figure; a scheduler restarted onto the full disk ends once there is room again:
  actors/store_room.py), and per fill its ``outage_s`` (the fill, its hold, the recovery).
"""

from __future__ import annotations

import errno
import json
import os
import random
import sqlite3
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kmpray

from .chaos_common import ChaosLedger, SteadyLoad, answers_after, ledger_starts, terminal_events
from .common import drain, ray_up, scratch_dir

ARRAY_N = 16_384  # int64s: 128 KiB, past the inline threshold (64 KiB), so an artifact on the disk


class ChaosArray(kmpray.CommonWorker):
    """A chain's first step: ``arange(ARRAY_N) + j`` (each chain's own bytes: content-addressed
    artifacts would otherwise be one file), after 0.5 s, so that a run is often in flight
    (its artifact being written) when the disk fills."""

    def do_work(self, input: str | None) -> Any:  # noqa: A002
        import numpy as np

        time.sleep(0.5)
        return kmpray.WorkerResult.Success(data={"arr": np.arange(ARRAY_N, dtype=np.int64) + int(input or 0)})


class ChaosArraySum(kmpray.CommonWorker):
    """The second step: the array it was handed must be the one made (its sum)."""

    def do_work(self, input: str | None, ctx: kmpray.WorkerContext) -> Any:  # noqa: A002
        j, arr = int(json.loads(input or "{}")["j"]), ctx.upstream_data.get("arr")
        want = ARRAY_N * (ARRAY_N - 1) // 2 + j * ARRAY_N
        got = int(arr.sum()) if arr is not None else None
        if got != want:
            return kmpray.WorkerResult.Failure(f"wrong array: sum {got}, made {want}")
        return kmpray.WorkerResult.Success(data={"sum": got})


class ArrayChains(threading.Thread):
    """A chain of ChaosArray then ChaosArraySum every ``every_s`` until ``stop``; its
    producer retries quickly (a refused artifact write fails the run to be retried)."""

    def __init__(self, sched: Any, every_s: float, stop: threading.Event) -> None:
        super().__init__(daemon=True, name="chaos-disk-chains")
        self.sched, self.every_s, self.stop = sched, every_s, stop
        self.acknowledged: list[str] = []
        self.submitted = 0

    def run(self) -> None:
        retry = kmpray.Constraints(backoff_policy=kmpray.BackoffPolicy.LINEAR, backoff_delay_ms=1_000,
                                   max_retries=30)
        j = 0
        while not self.stop.wait(self.every_s):
            j += 1
            make = kmpray.TaskRequest("ChaosArray", id=f"a{j}-make", input=str(j), constraints=retry)
            check = kmpray.TaskRequest("ChaosArraySum", id=f"a{j}-sum", input=json.dumps({"j": j}))
            self.submitted += 1
            try:
                said = self.sched.begin_with(make).then(check).with_id(f"a{j}").enqueue()
                if said is kmpray.ScheduleResult.SUCCESS:
                    self.acknowledged.append(f"a{j}")
            except Exception:
                continue  # not acknowledged


NOT_BACK_S = 60.0  # a scheduler not serving this long after a fault ended: the run stops there

FULL = {"fills": 12, "rate": 200.0, "every_s": 4.0, "hold_s": (0.5, 8.0), "disk_mb": 64,
        "chain_every_s": 0.5}
QUICK = {"fills": 2, "rate": 100.0, "every_s": 2.0, "hold_s": (0.5, 1.5), "disk_mb": 32,
         "chain_every_s": 0.25}


def _mount(size_mb: int) -> Path | str:
    """A tmpfs of ``size_mb`` mounted on a new folder, or why there is none."""
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root"
    mnt = Path(scratch_dir("kmpray-chaos-disk-"))  # (a folder: its tmpfs is unmounted at the end)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode:
        return f"cannot mount a tmpfs here: {done.stderr.strip()}"
    return mnt


def fill_disk(path: Path) -> int:
    """Write ``path`` until the disk is full; the bytes written."""
    written, chunk = 0, 1 << 20
    with open(path, "wb", buffering=0) as f:
        while chunk >= 512:
            try:
                written += f.write(b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    return written


def _integrity(state: Path) -> dict[str, str]:
    out = {}
    for db in sorted(state.rglob("*.db")):
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                out[str(db.relative_to(state))] = str(conn.execute("PRAGMA integrity_check").fetchone()[0])
            finally:
                conn.close()
        except sqlite3.Error as exc:
            out[str(db.relative_to(state))] = f"{type(exc).__name__}: {exc}"
    return out


def _starts(state: Path) -> int | None:
    try:
        conn = sqlite3.connect(f"file:{state / 'tasks.db'}?mode=ro", uri=True, timeout=10)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'scheduler_starts'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    import msgpack

    return int(msgpack.unpackb(row[0])) if row else None


def _chain_state(sched: Any, chain: str) -> str:
    """A chain's state; a FAILED one with its failed step's message."""
    info = sched.get_chain_info(chain)
    if info is None:
        return "missing"
    failed = [t.result.message for step in info.steps for t in step if t.state is kmpray.TaskState.FAILED]
    return str(info.state.value) + (f": {failed[0]}" if failed else "")


def _attempts(sched: Any, chain: str) -> int:
    """The attempts of a chain's first step (a refused artifact write is one that failed)."""
    info = sched.get_task_info(f"{chain}-make")
    return int(info.run_attempt_count) if info is not None else 0


def scenario(quick: bool = False, seed: int = 7, shards: int = 1, **sizes: Any) -> dict[str, Any]:
    """``shards``: the engine's ``scheduler_shards``, every shard's store on the one disk
    (each fill waits for every shard to serve again: the slowest is reported)."""
    size = {**(QUICK if quick else FULL), **sizes}
    mnt = _mount(int(size["disk_mb"]))
    if isinstance(mnt, str):
        return {"scenario": "disk", "skipped": mnt}
    filler = mnt / "filler"

    def fill(rng: random.Random, _namespace: str) -> dict[str, Any]:
        written = fill_disk(filler)
        held = rng.uniform(*size["hold_s"])
        time.sleep(held)
        filler.unlink()
        return {"filled_mb": round(written / 2**20, 2), "held_s": round(held, 2)}

    nemesis = (f"the state dir's {size['disk_mb']} MB tmpfs filled to its last byte for "
               f"{size['hold_s'][0]:g}-{size['hold_s'][1]:g} s, {size['fills']} times")
    try:
        return storage_run("disk", mnt / "state", fill, nemesis, size, seed, shards)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def storage_run(name: str, state: Path, strike: Callable[[random.Random, str], dict[str, Any]], nemesis: str,
                size: dict[str, Any], seed: int, shards: int, key: str = "fills") -> dict[str, Any]:
    """The steady load and the array chains on an engine whose state dir is ``state``, while
    ``strike(rng, namespace)`` (a storage fault, over when it returns: its record) strikes
    ``size[key]`` times, each ~``every_s`` after every shard serves again; the report, the
    strikes' records under ``key``."""
    from kmpray.actors.names import shard_namespace

    ray = ray_up()
    ledger = Path(scratch_dir(f"kmpray-chaos-{name}-ledger-")) / "ledger"
    namespace = f"chaos-{name}-{seed}-{os.getpid()}"
    rng = random.Random(seed)
    fills: list[dict[str, Any]] = []
    config = kmpray.EngineConfig(scheduler_shards=shards)
    sched = kmpray.connect(namespace=namespace, state_dir=str(state), config=config)
    try:
        for worker, cls in (("ChaosLedger", ChaosLedger), ("ChaosArray", ChaosArray),
                            ("ChaosArraySum", ChaosArraySum)):
            sched.register_worker(worker, cls)
        payload = json.dumps({"ledger": str(ledger), "sleep_ms": 20})
        stop = threading.Event()
        load = SteadyLoad(sched, float(size["rate"]), payload, stop)
        chains = ArrayChains(sched, float(size["chain_every_s"]), stop)
        load.start()
        chains.start()
        for _ in range(int(size[key])):
            time.sleep(size["every_s"] * rng.uniform(0.5, 1.5))
            at = time.monotonic() - load.started
            record = strike(rng, namespace)
            freed = time.monotonic()
            for k in range(shards):  # every shard serving again (ready())
                answers_after(ray, "kmpray.scheduler", shard_namespace(namespace, k), NOT_BACK_S)
            back = time.monotonic() - freed
            fills.append({"at_s": round(at, 2), **record, "serving_after_free_s": round(back, 2),
                          "outage_s": round(time.monotonic() - load.started - at, 2)})
            if max(back, record.get("killed_back_s", 0)) >= NOT_BACK_S:
                break  # not serving again: reported, the run ended (a drain would wait for it)
        else:
            time.sleep(size["every_s"])  # the last strike's aftermath under load too
        stop.set()
        load.join(timeout=120)
        chains.join(timeout=120)
        if max(fills[-1]["serving_after_free_s"], fills[-1].get("killed_back_s", 0)) >= NOT_BACK_S:
            return {"scenario": name, "nemesis": nemesis, "seed": seed, "shards": shards, key: fills,
                    "not_serving_again": f"a scheduler (or the killed actor) not serving {NOT_BACK_S:g} s "
                                         f"after the fault's end: {fills[-1]}"}
        drained = drain(sched)
        chain_states = {c: _chain_state(sched, c) for c in chains.acknowledged}
        acknowledged = set(load.acknowledged)
        states = {t.id: t.state for t in sched.list_tasks()}
        lost = sorted(t for t in acknowledged if states.get(t) is not kmpray.TaskState.SUCCEEDED)
        starts = ledger_starts(ledger)
        terminal = terminal_events(sched, acknowledged, timeout_s=120)
        result = {
            "scenario": name,
            "nemesis": nemesis,
            "rate_per_s": size["rate"],
            "submitted": load.submitted,
            "acknowledged": len(acknowledged),
            "refused": load.submitted - len(acknowledged),
            "drained": drained,
            "lost": len(lost),
            "lost_examples": lost[:10],
            "never_started": sum(1 for t in acknowledged if starts[t] == 0),
            "executed_twice": sum(1 for t in acknowledged if starts[t] > 1),
            "counted_twice": sum(1 for t in acknowledged if terminal[t] > 1),
            "events_missing": sum(1 for t in acknowledged if terminal[t] == 0),
            # Chains whose first step returns a 128 KiB array (an artifact on the faulty disk),
            # the second checking it: each acknowledged one SUCCEEDED with the right bytes.
            "chains_submitted": chains.submitted,
            "chains_acknowledged": len(chains.acknowledged),
            "chains_not_succeeded": sorted(c for c, st in chain_states.items() if st != "SUCCEEDED")[:10],
            "chains_wrong_array": sum(1 for st in chain_states.values() if "wrong array" in st),
            "array_steps_retried": sum(1 for c in chains.acknowledged if _attempts(sched, c) > 1),
            "serving_after_free_s": {"p50": round(statistics.median(back_s), 2), "max": max(back_s)}
            if (back_s := [f["serving_after_free_s"] for f in fills]) else None,
            key: fills,
            "seed": seed,
        }
    finally:
        sched.shutdown()
    result["shards"] = shards
    result["scheduler_starts"] = [_starts(state / f"shard-{k}" if k else state) for k in range(shards)]
    result["integrity"] = _integrity(state)
    return result
