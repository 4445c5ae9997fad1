"""The bulk paths a large chain's admission takes (kmpray/chain_intake.py) against the
per-row ones they stand for: ``TaskTable.add_new`` against ``table[key] = rec`` for each,
``ReadyQueue.push_many`` against ``push`` for each."""

from __future__ import annotations

import itertools
import random

import pytest

from kmpray import Constraints, QualityOfService, TaskState
from kmpray.queues import ReadyQueue
from kmpray.records import TaskRecord
from kmpray.task_table import TaskTable
from kmpray.triggers import OneTime


def _rows(n: int, seed: int = 1) -> list[TaskRecord]:
    rng = random.Random(seed)
    states = [TaskState.ENQUEUED, TaskState.BLOCKED, TaskState.RUNNING, TaskState.SUCCEEDED]
    rows = []
    for i in range(n):
        c = Constraints(expedited=rng.random() < 0.1, qos=rng.choice(list(QualityOfService)))
        rec = TaskRecord(key=f"k{i}", name=f"k{i}", worker=rng.choice(["A", "B"]), trigger=OneTime(),
                         constraints=c, state=rng.choice(states), created_at_ms=0, updated_at_ms=0,
                         next_run_at_ms=rng.randrange(0, 50))
        rec.started = rng.random() < 0.5
        rows.append(rec)
    return rows


def test_add_new_counts_and_orders_the_rows_as_one_insert_each_does() -> None:
    one, bulk = TaskTable(), TaskTable()
    for table in (one, bulk):
        table.loader = lambda keys: {}
        table["old"] = _rows(1, seed=9)[0]
    for rec in _rows(500):
        one[rec.key] = rec
    bulk.add_new(_rows(500))
    assert dict(bulk.shown) == dict(one.shown) and dict(bulk.by_worker) == dict(one.by_worker)
    for state in TaskState:  # the same rows in each state; "old" still first (least recently updated)
        assert set(bulk.recent[state]) == set(one.recent[state]), state
        assert list(bulk.recent[state])[:1] == list(one.recent[state])[:1]
    assert sorted(bulk.finishing) == sorted(one.finishing) and bulk.finishing
    assert sorted(bulk) == sorted(one) and all(bulk[k].table is bulk for k in bulk)
    with pytest.raises(AssertionError, match="a key was in the table already"):
        bulk.add_new(_rows(1))


@pytest.mark.parametrize("already", [0, 3, 800])
def test_push_many_takes_out_in_the_order_pushes_one_by_one_do(already: int) -> None:
    """Both ways of filling: a heap made again (more new entries than queued) and pushes."""
    rows_one, rows_bulk = _rows(already + 300, seed=2), _rows(already + 300, seed=2)
    for rec in rows_one + rows_bulk:
        rec.state = TaskState.ENQUEUED
    one, bulk = ReadyQueue(itertools.count(), 60_000), ReadyQueue(itertools.count(), 60_000)
    for rec in rows_one:
        one.push(rec)
    for rec in rows_bulk[:already]:
        bulk.push(rec)
    bulk.push_many(rows_bulk[already:])
    tasks_one, tasks_bulk = {r.key: r for r in rows_one}, {r.key: r for r in rows_bulk}
    taken_one = [one.pop(tasks_one) for _ in range(len(rows_one))]
    taken_bulk = [bulk.pop(tasks_bulk) for _ in range(len(rows_bulk))]
    assert [r.key for r in taken_bulk if r] == [r.key for r in taken_one if r]
    assert len([r for r in taken_bulk if r]) == already + 300
