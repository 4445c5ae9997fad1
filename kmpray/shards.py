"""Which scheduler shard a task or chain lives on (EngineConfig.scheduler_shards).

A stable hash of the unique name the user gives (a task's id, a chain's id), modulo
the shard count: the same name always lands on the same shard, from any client and
across restarts, so unique-work policies (KEEP, REPLACE, APPEND) see every enqueue of a
name in one place. Appended work (``X#2``) is enqueued under ``X``, so it lives with
``X``; a chain's tasks live with the chain (the client is told their ids when it sends
the chain). CRC-32, not Python's ``hash()``, which is salted per process.
"""

from __future__ import annotations

import zlib
from typing import Any

# Scheduler shard k > 0 runs in the Ray namespace "<namespace>~shard<k>" (actors/names.py);
# a user's namespace may not contain it.
SHARD_SEP = "~shard"


def shard_of(name: str, shards: int) -> int:
    """The shard of ``name``. A bad id (not a string) still maps somewhere: the shard
    that gets it rejects it, naming the field, as one scheduler would."""
    if shards <= 1:
        return 0
    return zlib.crc32(str(name).encode("utf-8", "surrogatepass")) % shards


def share(total: int, shards: int, index: int, at_least: int = 0) -> int:
    """Shard ``index``'s share of an engine-wide limit: ``total`` split evenly, the first
    shards taking the remainder, and no share under ``at_least`` (a pool of 0 would never
    run its shard's work). One shard: the whole."""
    if shards <= 1:
        return total
    return max(at_least, total // shards + (1 if index < total % shards else 0))


def split(ids: list[str], shards: int) -> dict[int, list[int]]:
    """Positions of ``ids`` by the shard each hashes to, each shard's in their order."""
    out: dict[int, list[int]] = {}
    for i, name in enumerate(ids):
        out.setdefault(shard_of(name, shards), []).append(i)
    return out


def reassemble(n: int, parts: dict[int, list[int]], answers: list[list[Any]]) -> list[Any]:
    """The shards' answers (one list per part, in ``parts``' order) back in item order."""
    out: list[Any] = [None] * n
    for positions, got in zip(parts.values(), answers, strict=True):
        for i, answer in zip(positions, got, strict=True):
            out[i] = answer
    return out


# How status() adds the shards' answers up (merge_status): everything else numeric is a
# sum, lists are joined, nested dicts merged the same way.
_FIRST = {"namespace", "state_dir", "virtual_time", "platform", "node", "nodes", "waiting_for",
          "scheduler_shards"}
_LATEST = {"now_ms", "restored_in_s", "serving_in_s", "capacity", "p50", "p99", "max"}  # the worst shard's
_UNION = {"workers", "waiting_for_registration"}
_PER_SHARD = ("pending", "ready", "inflight", "executors", "counts", "messages", "lane", "serving_in_s")


def merge_status(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One engine's status from its shards' (``describe()`` of each SchedulerActor):
    counts and totals summed, latencies and times the worst shard's, device states and
    names shard 0's; ``shards`` lists each shard's own figures. One part: itself."""
    if len(parts) == 1:
        return parts[0]
    out: dict[str, Any] = _merge(parts)
    out["shards"] = [{"shard": k, **{key: p.get(key) for key in _PER_SHARD}} for k, p in enumerate(parts)]
    return out


def _merge(parts: list[Any], key: str | None = None) -> Any:
    first = parts[0]
    if key in _FIRST:
        return first
    if isinstance(first, dict):
        keys = list(dict.fromkeys(k for p in parts if isinstance(p, dict) for k in p))
        return {k: _merge([p[k] for p in parts if isinstance(p, dict) and k in p], k) for k in keys}
    if isinstance(first, list):
        joined = [x for p in parts if isinstance(p, list) for x in p]
        return sorted(set(joined), key=str) if key in _UNION else joined
    numbers = [p for p in parts if isinstance(p, (int, float)) and not isinstance(p, bool)]
    if numbers and len(numbers) == len(parts):
        return max(numbers) if key in _LATEST else sum(numbers)
    return next((p for p in parts if p is not None), None)
