"""Which shard holds what, and how the shards' status adds up (kmpray/shards.py)."""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Any

from kmpray.shards import merge_status, reassemble, shard_of, share, split


def test_a_name_always_lands_on_the_same_shard_and_names_spread() -> None:
    names = [f"task-{i}" for i in range(2_000)]
    assert [shard_of(n, 4) for n in names] == [zlib.crc32(n.encode()) % 4 for n in names]  # not salted
    spread = Counter(shard_of(n, 4) for n in names)
    assert set(spread) == {0, 1, 2, 3} and min(spread.values()) > 400
    assert {shard_of(n, 1) for n in names} == {0}
    assert shard_of("naïve ✓", 3) == shard_of("naïve ✓", 3)
    assert shard_of(None, 2) == shard_of("None", 2) and shard_of(7, 2) == shard_of("7", 2)  # type: ignore[arg-type]


def test_items_split_by_shard_and_their_answers_come_back_in_item_order() -> None:
    ids = [f"t{i}" for i in range(50)]
    parts = split(ids, 3)
    assert sorted(i for pos in parts.values() for i in pos) == list(range(50))
    assert all(shard_of(ids[i], 3) == k for k, pos in parts.items() for i in pos)
    assert all(pos == sorted(pos) for pos in parts.values())  # each shard's in their order
    answers = [[f"{ids[i]}@{k}" for i in pos] for k, pos in parts.items()]  # what each shard said
    assert reassemble(50, parts, answers) == [f"{n}@{shard_of(n, 3)}" for n in ids]
    assert split(ids, 1) == {0: list(range(50))}


def test_status_adds_counts_keeps_the_worst_latency_and_shard_zeros_names() -> None:
    a = {"namespace": "ns", "scheduler_shards": 2, "pending": 3, "ready": 1, "counts": {"ENQUEUED": 1, "SUCCEEDED": 4},
         "workers": ["A", "B"], "nodes": {"n1": {"battery_level": 50}}, "now_ms": 10, "virtual_time": False,
         "executor_nodes": ["n1"], "heavy": {"pool": 2, "capacity": 3, "busy": 1},
         "runs": {"dispatched": 5, "wait_ms": {"n": 2, "p50": 1, "p99": 4, "max": 6}}}
    b = {"namespace": "ns~shard1", "scheduler_shards": 2, "pending": 4, "ready": 0, "counts": {"ENQUEUED": 2, "SUCCEEDED": 1},
         "workers": ["B", "A"], "nodes": {"n1": {"battery_level": 50}}, "now_ms": 12, "virtual_time": False,
         "executor_nodes": ["n1"], "heavy": {"pool": 2, "capacity": 3, "busy": 0},
         "runs": {"dispatched": 1, "wait_ms": {"n": 1, "p50": 3, "p99": 3, "max": 3}}}
    got = merge_status([a, b])
    assert got["namespace"] == "ns" and got["virtual_time"] is False and got["scheduler_shards"] == 2
    assert (got["pending"], got["ready"]) == (7, 1)
    assert got["counts"] == {"ENQUEUED": 3, "SUCCEEDED": 5}
    assert got["workers"] == ["A", "B"] and got["nodes"] == {"n1": {"battery_level": 50}}
    assert got["executor_nodes"] == ["n1", "n1"] and got["now_ms"] == 12
    assert got["heavy"] == {"pool": 4, "capacity": 3, "busy": 1}
    assert got["runs"] == {"dispatched": 6, "wait_ms": {"n": 3, "p50": 3, "p99": 4, "max": 6}}
    assert [(s["shard"], s["pending"], s["counts"]) for s in got["shards"]] == [
        (0, 3, a["counts"]), (1, 4, b["counts"])]
    assert merge_status([a]) is a  # one shard: its own answer, untouched


def test_a_limit_is_shared_evenly_the_first_shards_taking_the_remainder() -> None:
    assert [share(5, 2, k) for k in range(2)] == [3, 2]
    assert [share(2, 2, k) for k in range(2)] == [1, 1]
    assert share(7, 1, 0) == 7
    # A heavy pool never shrinks to nothing on a shard while the engine has one.
    assert [share(1, 3, k, at_least=1) for k in range(3)] == [1, 1, 1]
    assert [share(0, 3, k, at_least=0) for k in range(3)] == [0, 0, 0]


def test_a_client_remembers_only_the_latest_chain_task_homes_and_finds_a_forgotten_one_again(
    monkeypatch: Any,
) -> None:
    from kmpray.client import routing

    monkeypatch.setattr(routing, "HOMES_KEPT", 3)
    asked: list[tuple[str, int]] = []

    class Client(routing.Routing):
        shards = 2

        def __init__(self) -> None:
            self._homes = {}

        def _call(self, method: str, id: str, shard: int) -> Any:  # noqa: A002
            asked.append((id, shard))
            return {"id": id} if shard == home else None

    client = Client()
    # Chain tasks whose own hash shard is not the chain's: only those need remembering.
    ids = [f"step{i}" for i in range(40) if shard_of(f"step{i}", 2) != shard_of("chain", 2)][:5]
    home = client._chain_home({"id": "chain", "steps": [[{"id": i} for i in ids]]})
    assert list(client._homes) == ids[-3:] and set(client._homes.values()) == {home}  # the latest three
    assert client._find("get_info", ids[-1]) == {"id": ids[-1]} and asked == [(ids[-1], home)]  # straight
    asked.clear()
    assert client._find("get_info", ids[0]) == {"id": ids[0]}  # forgotten: its hash shard, then the rest
    assert [k for _i, k in asked][-1] == home and client._homes[ids[0]] == home and len(client._homes) == 3


def test_a_huge_enqueue_many_goes_as_calls_of_at_most_enqueue_call_items_in_order(monkeypatch: Any) -> None:
    """One message of a million items went through Ray (over the lane's frame cap), whose
    decoding held the scheduler's loop for seconds: the client sends such a batch as calls
    of ``ENQUEUE_CALL_ITEMS``, one after another, each shard's part within each, and the
    answers come back in the items' order, sync and async alike."""
    import asyncio

    from kmpray.client import routing

    monkeypatch.setattr(routing, "ENQUEUE_CALL_ITEMS", 4)
    sent: list[tuple[int, list[str]]] = []

    class Client(routing.Routing):
        shards = 2

        def __init__(self) -> None:
            self._homes = {}

        def _fan(self, method: str, calls: list[Any], token: bool = False) -> list[Any]:
            return [self._one(k, args) for k, args in calls]

        async def _fan_async(self, method: str, calls: list[Any], token: bool = False) -> list[Any]:
            return [self._one(k, args) for k, args in calls]

        def _one(self, shard: int, args: tuple[Any, ...]) -> list[tuple[str, None]]:
            ids = [item["id"] for item in args[0]]
            sent.append((shard, ids))
            return [(f"ok {i}", None) for i in ids]

    items = [{"id": f"t{i}"} for i in range(10)]
    for answers in (Client()._enqueue_items(items), asyncio.run(Client()._enqueue_items_async(items))):
        assert [a for a, _why in answers] == [f"ok t{i}" for i in range(10)]
    calls = sent[: len(sent) // 2]  # the sync client's
    round_of = [{int(i[1:]) // 4 for i in ids} for _k, ids in calls]  # items 0-3, 4-7, 8-9
    assert all(len(r) == 1 for r in round_of)  # a call carries one round's items only
    assert [r.pop() for r in round_of] == sorted(int(ids[0][1:]) // 4 for _k, ids in calls)  # in turn
    assert sorted(int(i[1:]) for _k, ids in calls for i in ids) == list(range(10))  # each once
    assert all(shard_of(i, 2) == k for k, ids in sent for i in ids)
