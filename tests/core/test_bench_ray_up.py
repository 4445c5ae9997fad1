"""How the benchmarks join Ray (bench/common.py ``ray_up``), with a stand-in for ``ray``:
a cluster's address is joined with the cluster's own authentication, and only a local
instance of the benchmark's own is started with it off.

Until session 57 ``ray_up`` set ``RAY_AUTH_MODE=disabled`` before either, so every
benchmark pointed at a token cluster (Ray >= 2.59's default for ``ray start --head``) was
refused: ``kmpray bench load --address auto``, the README's way to load-test a deployment,
among them. With the mode unset Ray finds such a cluster's token itself."""

from __future__ import annotations

import os
import sys
import types
from typing import Any

import pytest
from kmpray.bench.common import ray_up


class FakeRay(types.ModuleType):
    def __init__(self, refuse: bool = False) -> None:
        super().__init__("ray")
        self.refuse = refuse
        self.calls: list[tuple[dict[str, Any], str | None]] = []

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs: Any) -> None:
        self.calls.append((kwargs, os.environ.get("RAY_AUTH_MODE")))
        if self.refuse:
            raise ConnectionError(f"Failed to connect to Ray cluster at {kwargs['address']}")


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> FakeRay:
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    return fake


def test_a_clusters_address_is_joined_with_its_own_authentication(fake_ray: FakeRay) -> None:
    ray_up("auto")
    assert fake_ray.calls == [({"address": "auto", "log_to_driver": False}, None)]
    assert "RAY_AUTH_MODE" not in os.environ


def test_a_local_instance_of_its_own_starts_without_authentication(fake_ray: FakeRay) -> None:
    ray_up()
    (kwargs, mode), = fake_ray.calls
    assert "address" not in kwargs and mode == "disabled"


def test_an_explicit_mode_is_kept(fake_ray: FakeRay, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    ray_up()
    assert fake_ray.calls[0][1] == "token"


def test_a_refused_connection_says_what_a_token_cluster_needs(fake_ray: FakeRay) -> None:
    fake_ray.refuse = True
    with pytest.raises(ConnectionError, match=r"could not connect to the Ray cluster at 10\.0\.0\.1:6379 .*"
                                              r"needs RAY_AUTH_MODE=token \(here: unset\)"):
        ray_up("10.0.0.1:6379")
