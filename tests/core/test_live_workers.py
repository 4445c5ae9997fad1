"""``@kmpray.worker`` after ``connect()``: the class reaches every engine connected in this
process at once (kmpray/client/live.py), not only at the next connect."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import kmpray
from kmpray.client import live
from kmpray.worker import LOCAL_WORKERS


class FakeEngine:
    def __init__(self, namespace: str, fail: bool = False) -> None:
        self.namespace = namespace
        self.fail = fail
        self.got: list[dict[str, type]] = []

    def _register_many(self, classes: dict[str, type]) -> None:
        if self.fail:
            raise ConnectionError("engine gone")
        self.got.append(classes)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(live, "_LIVE", type(live._LIVE)())
    engines = [FakeEngine("a"), FakeEngine("b", fail=True), FakeEngine("c"), FakeEngine("gone")]
    for engine in engines:
        live.attached(engine)
    live.detached(engines[3])  # shut down: never told again
    yield engines
    for name in ("Late", "Later"):
        LOCAL_WORKERS.pop(name, None)


def test_a_decorated_class_goes_to_every_connected_engine(fakes: list[FakeEngine], caplog: Any) -> None:
    a, _broken, c, gone = fakes
    with caplog.at_level(logging.WARNING, logger="kmpray"):
        @kmpray.worker("Late")
        class Late(kmpray.CommonWorker):
            def do_work(self, input: str | None) -> bool:  # noqa: A002
                return True

    assert a.got == [{"Late": Late}] and c.got == [{"Late": Late}]  # the broken one did not stop c
    assert gone.got == [] and LOCAL_WORKERS["Late"] is Late  # ...and the next connect() sends it too
    (record,) = [r for r in caplog.records if "not registered with engine 'b'" in r.getMessage()]
    assert "engine gone" in record.getMessage() and "register_worker('Late', cls)" in record.getMessage()


def test_a_refused_class_reaches_no_engine(fakes: list[FakeEngine]) -> None:
    with pytest.raises(kmpray.InvalidParameters, match="does not implement do_work"):
        @kmpray.worker("Later")
        class Later(kmpray.CommonWorker):
            pass

    assert [e.got for e in fakes] == [[], [], [], []] and "Later" not in LOCAL_WORKERS
