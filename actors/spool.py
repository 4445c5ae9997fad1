"""The result spool: results a worker process could not hand to its scheduler at once,
kept in a file on the scheduler's node so that they outlive the process.

A finished run's result normally leaves the process the moment the run ends (the local
lane, actors/report_lane.py). While the scheduler is down (killed, restarting, restoring)
there is nobody to take it: the result waits in the process, in the Outbox that retries
Ray's report call, and a process that dies meanwhile takes it along, so a run that had
finished ran again. Chaos runs that kill a scheduler and an executor within seconds of
each other found up to 256 such re-runs in one run (``rerun_after_finish``).

So an executor or heavy worker on the scheduler's node appends each result bound for
Ray's report call (the lane's fallback, which is where results go during an outage) to
``<home>/spool/<incarnation>``: one ``write`` of a msgpack'd batch, no fsync (like the
store's default ``synchronous=NORMAL``, it outlives the process, not the machine). The
scheduler reads a process's file when it learns that process died, before it re-queues
the runs it held, and every file when it restarts, before it adopts what executors hold;
each result is applied as a late report (``SchedulerCore.complete`` takes it only for a
run still current, so one that also arrived another way counts once). A file is renamed
before it is read, so a process still writing starts a new one. A process removes its own
file once everything it spooled was answered.

Not spooled: results holding object-store references (the objects die with their
owner; the artifact, written first, is what a successor reads), values msgpack refuses
(Ray's call carries them), anything on another node (no shared disk: the scheduler asks
such a process what it holds), and the chain step a result had begun (its ``followed``:
dropped, so the successor runs again from the scheduler, as any run of a dead process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import msgpack

from kmpray.protocol import Done, done_from_wire

log = logging.getLogger("kmpray.spool")

SPOOL_DIR = "spool"


def spool_dir(home: str | Path) -> Path:
    return Path(home) / SPOOL_DIR


def beside(artifacts: tuple[str, str] | None) -> Path | None:
    """The spool folder of the shard whose artifact folder is ``artifacts[0]`` (both in its
    home), None without one."""
    return spool_dir(Path(artifacts[0]).parent) if artifacts else None


class Spool:
    """One process's spool file (``folder`` None: not on the scheduler's node, no spool)."""

    def __init__(self, folder: Path | None, incarnation: str) -> None:
        self.path = folder / incarnation if folder is not None else None
        self.waiting: set[tuple[str, int]] = set()  # spooled, not answered yet

    def write(self, items: Iterable[object]) -> None:
        """Append the plain results among ``items`` (reports of any kind)."""
        if self.path is None:
            return
        done = [d for d in items if isinstance(d, Done) and not d.stored]
        if not done:
            return
        try:
            data = msgpack.packb([[d.key, d.run_id, d.result, None, None] for d in done], use_bin_type=True)
        except Exception:
            return  # a value msgpack refuses: Ray's call alone carries it
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("result spool %s: %s (the results stay in this process only)", self.path, exc)
            return
        self.waiting.update((d.key, d.run_id) for d in done)

    def answered(self, keys: Iterable[tuple[str, int]]) -> None:
        """These results reached the scheduler: once none spooled waits, the file goes."""
        if not self.waiting:
            return
        self.waiting.difference_update(keys)
        if not self.waiting and self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()


def take(folder: Path, incarnations: Iterable[str] | None = None) -> list[Done]:
    """The results spooled by these processes (None: by every process), their files removed."""
    if incarnations is None:
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    else:
        names = [name for name in incarnations if name and "/" not in name and not name.startswith(".")]
    out: list[Done] = []
    for name in names:
        if name.endswith(".reading"):  # left by a reader that died while reading: read again
            out.extend(_read(folder / name))
            continue
        reading = folder / f"{name}.{uuid.uuid4().hex[:8]}.reading"
        try:
            os.rename(folder / name, reading)  # a writer still alive starts a new file
        except OSError:
            continue  # none: nothing spooled
        out.extend(_read(reading))
    return out


Heard = Callable[[list[Done]], Awaitable[None]]


async def recover(folder: Path | None, incarnations: Iterable[str | None], heard: Heard | None) -> int:
    """Apply (``heard``: the scheduler's report handling) what these dead processes had
    spooled, before their runs are re-queued. Returns how many results were read."""
    names = [name for name in incarnations if name]
    if folder is None or heard is None or not names:
        return 0
    done = await asyncio.to_thread(take, folder, names)
    if done:
        log.warning("%d results spooled by a process that died are applied, not run again", len(done))
        await heard(done)
    return len(done)


def _read(path: Path) -> list[Done]:
    out: list[Done] = []
    try:
        data = path.read_bytes()
    except OSError:
        return out
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    try:
        for batch in unpacker:
            out.extend(done_from_wire(d) for d in batch)
    except Exception as exc:  # a damaged tail: what came before it counts
        log.warning("result spool %s: unreadable after %d results (%s)", path, len(out), exc)
    with contextlib.suppress(OSError):
        path.unlink()
    return out
