"""chaos scenario ``io``: storage faults a full disk is not, under the ``disk`` scenario's
load (``chaos_disk.storage_run``: a steady 200 tasks/s and array chains whose artifacts
are on the faulty disk). The engine's state dir is on a FaultFS (``faultfs.py``: a FUSE
passthrough; root, ``/dev/fuse``, libfuse 3 and mfusepy, else the result says ``skipped``),
and the nemesis, ``strikes`` times, each after the engine serves again and ~``every_s``
more, turns one fault on for ``hold_s`` seconds (seeded), then off:

- ``eio``: a share (``rate`` 5-100 %) of the write-side calls fail with EIO, in half of
  these strikes reads too (a failing disk, a lost network volume);
- ``ro``: the disk turned read-only (EROFS: ext4's ``errors=remount-ro`` after an error);
- ``slow``: each write and fsync waits 50-1,500 ms (a disk saturated by a neighbour, a
  throttled cloud volume).

Halfway through every second strike the event broker or the oracle (in turn) is SIGKILLed,
so it starts again on the faulty disk (``killed``, and ``killed_back_s``: from the fault's
end to its ``ready()``); the scheduler restarts by itself after each failed write.

Pass figures as ``disk``: 0 lost, 0 counted twice, 0 events missing, every chain SUCCEEDED
with its bytes, ``integrity_check`` ok; ``executed_twice`` is reported (the goal 0: no
process is killed by this nemesis); ``faults_made`` counts the calls the FaultFS failed, by
call. ``serving_after_free_s`` is from the fault's end to every shard serving again.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from .chaos_common import actor_pid, answers_after
from .chaos_disk import NOT_BACK_S, storage_run
from .common import ray_up, scratch_dir
from .faultfs import FaultyDisk, unavailable

# Killed (SIGKILL) halfway through every second strike, in turn: a restart on the faulty disk
# (the broker opens its event log; the oracle holds no file, but takes its state back).
KILLED = ("kmpray.broker", "kmpray.oracle")

FULL = {"strikes": 12, "rate": 200.0, "every_s": 4.0, "hold_s": (0.5, 8.0), "chain_every_s": 0.5,
        "kinds": ("eio", "ro", "slow")}
# Each quick strike holds past a scheduler's restart (it ends 0.5 s after a failed write, and
# Ray starts it again in ~1 s): a start meets the fault, as in the full run.
QUICK = {"strikes": 3, "rate": 100.0, "every_s": 2.0, "hold_s": (2.5, 3.5), "chain_every_s": 0.25,
         "kinds": ("eio", "ro", "slow")}


def draw(rng: random.Random, kinds: tuple[str, ...], k: int) -> dict[str, Any]:
    """The k-th strike's fault: the kinds in turn (each met in a short run), its size drawn."""
    kind = kinds[k % len(kinds)]
    if kind == "eio":
        return {"mode": "eio", "rate": round(rng.choice((0.05, 0.25, 1.0)), 2), "reads": rng.random() < 0.5,
                "seed": rng.randrange(2**31)}
    if kind == "slow":
        return {"mode": "slow", "delay_ms": rng.choice((50, 300, 1500))}
    return {"mode": "ro"}


def scenario(quick: bool = False, seed: int = 7, shards: int = 1, **sizes: Any) -> dict[str, Any]:
    size = {**(QUICK if quick else FULL), **sizes}
    why = unavailable()
    if why:
        return {"scenario": "io", "skipped": why}
    top = Path(scratch_dir("kmpray-chaos-io-"))
    backing, mnt = top / "backing", top / "mnt"
    backing.mkdir()
    mnt.mkdir()
    disk = FaultyDisk(backing, mnt)
    struck = 0

    def strike(rng: random.Random, namespace: str) -> dict[str, Any]:
        nonlocal struck
        fault = draw(rng, tuple(size["kinds"]), struck)
        kill = KILLED[struck // 2 % len(KILLED)] if struck % 2 else None  # every second strike
        struck += 1
        held = rng.uniform(*size["hold_s"])
        disk.ask(**fault)
        record: dict[str, Any] = {"fault": {k: v for k, v in fault.items() if k != "seed"},
                                  "held_s": round(held, 2)}
        if kill is None:
            time.sleep(held)
        else:  # halfway through the fault: its restart meets the faulty disk
            time.sleep(held / 2)
            pid = actor_pid(ray_up(), kill, namespace)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                record["killed"] = kill
            time.sleep(held / 2)
        disk.ask(mode="ok")
        if "killed" in record:
            back = answers_after(ray_up(), str(kill), namespace, NOT_BACK_S, ready=True)
            record["killed_back_s"] = round(back, 2)
        return record

    kinds = "/".join(size["kinds"])
    nemesis = (f"the state dir on a FUSE passthrough failing or slowing I/O ({kinds} in turn) for "
               f"{size['hold_s'][0]:g}-{size['hold_s'][1]:g} s, {size['strikes']} times; the broker or "
               "the oracle killed halfway through every second one")
    try:
        disk.mount()
    except RuntimeError as exc:  # (no FUSE mounts allowed here: a container without the capability)
        return {"scenario": "io", "skipped": str(exc)}
    try:
        result = storage_run("io", mnt / "state", strike, nemesis, size, seed, shards, key="strikes")
        result["faults_made"] = disk.ask(counts=True)
    finally:
        disk.close()
    return result
