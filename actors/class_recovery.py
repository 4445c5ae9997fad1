"""Worker classes back from the processes that ran them, when a restarted scheduler finds
the registry lost them too.

The scheduler and the registry (in the oracle) each keep every class and restore each
other (actors/registry.py). Killed within a second or two of each other, both restart
empty: the registry takes back what the restarting scheduler holds (nothing yet) and the
scheduler what the registry holds (nothing). Every task of those workers then waited,
parked, until a client registered them again, and nothing said why. Found by the mixed
chaos scenario without waiting for recovery (a kill every ~0.5 s, the oracle among the
victims; session 58): 17,000 tasks on two shards parked for good.

Executors and heavy workers keep the blob of each class they loaded (worker_classes.py):
a third copy. A restarted scheduler missing classes it knew asks every one of its own
processes for them, in the background, and puts what they have back in itself and in
the registry, with the versions it gave them before. kmpray's built-in workers that none
of them holds are registered again from kmpray itself (every client's ``connect()``
registers them, and until session 59 their tasks waited for the next one). What else
none of them holds stays missing, and the log says so once, naming the workers and how
to bring them back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger("kmpray.scheduler")

Blob = tuple[int, bytes]


async def classes_held(handles: Iterable[Any], names: list[str], timeout_s: float) -> dict[str, Blob]:
    """The newest (version, blob) of each of ``names`` any of these processes loaded; one
    that is dead, restarting or slow past ``timeout_s`` counts as holding none."""

    async def asked(handle: Any) -> dict[str, Blob]:
        try:
            return dict(await asyncio.wait_for(handle.class_blobs.remote(names), timeout_s))
        except Exception:  # gone or restarting: it holds nothing for us
            return {}

    found: dict[str, Blob] = {}
    for held in await asyncio.gather(*(asked(h) for h in handles)):
        for name, (version, blob) in held.items():
            if name not in found or found[name][0] < version:
                found[name] = (version, blob)
    return found


async def take_classes_back(
    blobs: dict[str, Blob], missing: list[str], handles: list[Any], timeout_s: float,
    held: Callable[[list[tuple[str, int, bytes]]], Awaitable[None]],
    register: Callable[[list[tuple[str, bytes]]], Awaitable[list[int]]],
) -> list[str]:
    """``missing``: workers a restarted scheduler knew and got no class for. What
    ``handles`` hold goes into ``blobs`` (unless registered again meanwhile) and to
    ``held`` (the scheduler's ``_classes_held``: the registry, and their parked tasks
    run); built-in workers none of them holds go to ``register`` (the scheduler's
    ``register_workers``: new versions). Returns the names still missing."""
    found = {name: entry for name, entry in (await classes_held(handles, missing, timeout_s)).items()
             if name not in blobs}
    if found:
        blobs.update(found)
        await held([(name, version, blob) for name, (version, blob) in found.items()])
        log.warning("restarted: the registry had lost worker classes too; %s taken back from the "
                    "processes that ran them", ", ".join(sorted(found)))
    from kmpray.client.remote import ship_class
    from kmpray.workers import BUILTIN_WORKERS

    if builtin := [name for name in missing if name not in blobs and name in BUILTIN_WORKERS]:
        await register([(name, ship_class(BUILTIN_WORKERS[name])) for name in builtin])
        log.warning("restarted: the registry had lost the built-in workers too; registered again: %s",
                    ", ".join(builtin))
    still = [name for name in missing if name not in blobs]
    if still:
        log.warning("restarted: no process holds worker classes %s any more (the registry lost them with "
                    "this scheduler); their tasks wait until they are registered again (connect() with "
                    "@kmpray.worker, or register_worker)", ", ".join(still))
    return still
