"""Placement arithmetic over plain data: how many actors of a given demand a cluster can hold."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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
