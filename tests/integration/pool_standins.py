"""Stand-ins for the executor and heavy pools' tests (test_executor_pool.py,
test_heavy_pool.py, test_stealing.py): actor handles, a scheduler core and worker
processes as the pools see them, with no Ray cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.standins import Answer


def runs_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-ins take keys for runs: Ray's submit gets them as they are, not as the
    lists of a Run's fields (kmpray/protocol.py; tests/core/test_wire.py)."""
    from kmpray.actors import executor_pool, heavy_pool

    def as_they_are(handle: Any, runs: list[Any], fence: Any, acks: Any) -> Any:
        return handle.submit.remote(runs, fence, acks)

    monkeypatch.setattr(executor_pool, "ray_submit", as_they_are)
    monkeypatch.setattr(heavy_pool, "ray_submit", as_they_are)


class _Submit:
    def __init__(self, sent: list[tuple[int, list[Any]]], index: int) -> None:
        self.sent, self.index = sent, index

    def remote(self, runs: list[Any], fence: Any, acks: Any = None) -> str:
        self.sent.append((self.index, runs))
        return f"ref-{len(self.sent)}"


class Handle:
    """A light executor's handle whose submits are only recorded, in ``sent``."""

    def __init__(self, sent: list[tuple[int, list[Any]]], index: int) -> None:
        self.submit = _Submit(sent, index)


class Core:
    """The scheduler's core as a pool sees it: unplaced runs released, runs said lost."""

    def __init__(self) -> None:
        self.released = 0
        self.lost: list[tuple[str, int, bool]] = []

    def release_unplaced(self) -> None:
        self.released += 1

    def run_lost(self, key: str, run_id: int, crashed: bool = False, cause: str | None = None) -> None:
        self.lost.append((key, run_id, crashed))


class HeavyHandle:
    """A heavy worker's handle: its submit and ping answered at once by process ``incarnation``."""

    def __init__(self, incarnation: str) -> None:
        self.incarnation = incarnation
        outer = self

        class _Call:
            def __init__(self, answer: Any) -> None:
                self.answer = answer

            def remote(self, *args: Any) -> Answer:
                return Answer(self.answer(*args))

        self.submit = _Call(lambda runs, fence, acks: (outer.incarnation, []))
        self.ping = _Call(lambda acks: (outer.incarnation, 1, "A", 0.0))


class StandIn:
    """An actor as a pool sees it: one process at a time (``incarnation``); a submit waits
    in ``pending`` until the test answers it (by whichever process lives then) or fails it;
    a ping is answered at once, by the process alive."""

    def __init__(self, name: str, node: str = "A") -> None:
        self.name, self.n, self.node = name, 0, node
        self.incarnation = f"{name}-0"
        self.pending: list[Any] = []
        outer = self

        class _Submit:
            def remote(self, runs: list[Any], fence: Any, acks: Any = None) -> Any:
                future = asyncio.get_running_loop().create_future()
                outer.pending.append(outer.submitted(runs, fence, future))
                return future

        class _Ping:
            def remote(self, acks: Any) -> Answer:
                return Answer(outer.pinged())

        self.submit, self.ping = _Submit(), _Ping()

    def submitted(self, runs: list[Any], fence: Any, future: Any) -> Any:
        raise NotImplementedError

    def pinged(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def restart(self) -> None:
        self.n += 1
        self.incarnation = f"{self.name}-{self.n}"
