"""Which executor each run goes to (kmpray.placement.assign), without Ray."""

from __future__ import annotations

from dataclasses import dataclass

from kmpray.placement import assign, heavy_demand, placeable


@dataclass(frozen=True)
class Run:
    name: str
    nodes: tuple[str, ...] | None = None


def _names(plan: dict[int, list[Run]]) -> dict[int, list[str]]:
    return {i: [r.name for r in runs] for i, runs in sorted(plan.items())}


def test_unpinned_runs_spread_evenly_from_the_least_room_up() -> None:
    runs = [Run(f"r{i}") for i in range(7)]
    plan, unplaced, over = assign(runs, [(10, 0), (2, 1), (10, 2)], ["a", "a", "b"])
    # Executor 1 has room for 2 (its even share would be 3); the rest split 3 and 2, in order.
    assert _names(plan) == {0: ["r2", "r3", "r4"], 1: ["r0", "r1"], 2: ["r5", "r6"]}
    assert unplaced == [] and over == []


def test_pinned_runs_go_to_the_roomiest_executor_on_their_nodes_first() -> None:
    runs = [Run("x", ("b",)), Run("y"), Run("z", ("c",)), Run("w", ("a", "b"))]
    plan, unplaced, over = assign(runs, [(1, 0), (3, 1), (2, 2)], ["a", "b", "b"])
    assert [r.name for r in unplaced] == ["z"]  # no executor on node c
    # x: 1 has the most room on b; w: 1 and 2 tie on room (2 each), the first wins; y then
    # goes to the least room left (executor 0's one slot).
    assert _names(plan) == {0: ["y"], 1: ["x", "w"]}
    assert over == []


def test_no_executor_takes_more_than_its_room_and_the_excess_is_returned() -> None:
    runs = [Run(f"r{i}") for i in range(5)]
    plan, unplaced, over = assign(runs, [(1, 0), (2, 1), (0, 2)], ["a", "b", "c"])
    assert {i: len(p) for i, p in plan.items()} == {0: 1, 1: 2}
    assert [r.name for r in over] == ["r3", "r4"] and unplaced == []


def test_a_pinned_run_uses_room_the_spread_then_does_not_count() -> None:
    runs = [Run("p", ("a",)), Run("q"), Run("s")]
    plan, _unplaced, over = assign(runs, [(1, 0), (2, 1)], ["a", "b"])
    assert _names(plan) == {0: ["p"], 1: ["q", "s"]} and over == []


def test_placeable_counts_whole_actors_per_node() -> None:
    nodes = [{"CPU": 3.0, "GPU": 1.0}, {"CPU": 8.0}]
    assert placeable(nodes, heavy_demand(2.0, {})) == 1 + 4
    assert placeable(nodes, heavy_demand(1.0, {"GPU": 1.0})) == 1
    assert placeable(nodes, heavy_demand(0.0, {})) > 10**6
