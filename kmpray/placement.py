"""Placement over plain data: how many actors of a given demand a cluster can hold, and
which light executor each run goes to (``assign``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

UNBOUNDED = 1 << 30


def placeable(nodes: Iterable[Mapping[str, float]], demand: Mapping[str, float]) -> int:
    """How many actors each asking for ``demand`` (resource -> amount) fit on ``nodes``
    (each node's total resources) at once. A demand of nothing fits without bound."""
    wanted = {name: amount for name, amount in demand.items() if amount > 0}
    if not wanted:
        return UNBOUNDED
    return sum(min(int(node.get(name, 0) // amount) for name, amount in wanted.items()) for node in nodes)


def heavy_demand(num_cpus: float, resources: Mapping[str, float]) -> dict[str, float]:
    """What one heavy worker actor asks Ray for (only what it asks for: no zero entries)."""
    return {name: amount for name, amount in {"CPU": num_cpus, **resources}.items() if amount > 0}


class Pinned(Protocol):
    """A run that may have to land on given nodes (None: anywhere)."""

    @property
    def nodes(self) -> tuple[str, ...] | None: ...


R = TypeVar("R", bound=Pinned)


def assign(
    runs: Sequence[R], free: Iterable[tuple[int, int]], executor_nodes: Sequence[str | None]
) -> tuple[dict[int, list[R]], list[R], list[R]]:
    """Which executor each run goes to. ``free``: (room, executor index) of the executors
    that may take runs; ``executor_nodes``: each executor's node.

    A run pinned to nodes goes to the executor with the most room among those on its
    nodes; the others spread evenly over the room left (water-filling from the least
    room up, so over nodes too). Returns ``(plan, unplaced, over)``: executor -> its runs
    in order, pinned runs with no room on their nodes, and runs beyond all the room.
    """
    room = {i: n for n, i in free if n > 0}
    plan: dict[int, list[R]] = {}
    rest: list[R] = []
    unplaced: list[R] = []
    for run in runs:
        nodes = run.nodes
        if nodes is None:
            rest.append(run)
            continue
        options = [i for i, n in room.items() if n > 0 and executor_nodes[i] in nodes]
        if not options:
            unplaced.append(run)
            continue
        i = max(options, key=room.__getitem__)
        room[i] -= 1
        plan.setdefault(i, []).append(run)
    left = sorted((n, i) for i, n in room.items() if n > 0)
    pos = 0
    for k, (n, i) in enumerate(left):
        share = -(-(len(rest) - pos) // (len(left) - k))
        part = rest[pos : pos + min(n, share)]
        pos += len(part)
        if part:
            plan.setdefault(i, []).extend(part)
    return plan, unplaced, rest[pos:]
